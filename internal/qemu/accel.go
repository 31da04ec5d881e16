package qemu

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Accel is the QEMU accelerator a microvm runs under.
type Accel string

const (
	// AccelKVM runs guest code on the CPU through the kernel's KVM module.
	AccelKVM Accel = "kvm"
	// AccelTCG emulates the CPU in QEMU; slow, but works without KVM.
	AccelTCG Accel = "tcg"
)

// Reasons ChooseAccel gives for its choice, for logs and `husk check`.
const (
	reasonRequested  = "requested in configuration"
	reasonAvailable  = "hardware virtualization available"
	reasonNoCPUFlags = "cpu has no vmx/svm flag"
)

// hostProbe names the host files ChooseAccel reads, so tests can point it at
// fixtures instead of the real /proc and /dev.
type hostProbe struct {
	cpuinfoPath string
	kvmPath     string
}

var realHost = hostProbe{cpuinfoPath: "/proc/cpuinfo", kvmPath: "/dev/kvm"}

// ChooseAccel resolves the configured accelerator ("auto", "kvm" or "tcg")
// for this host. It returns the accelerator and a short human reason for the
// choice. "auto" falls back to TCG with the reason KVM is unusable; an
// explicit "kvm" that is unusable is an error.
func ChooseAccel(requested string) (Accel, string, error) {
	return realHost.chooseAccel(requested)
}

func (h hostProbe) chooseAccel(requested string) (Accel, string, error) {
	switch requested {
	case string(AccelTCG):
		return AccelTCG, reasonRequested, nil
	case string(AccelKVM):
		if reason, ok := h.kvmUsable(); !ok {
			return "", reason, fmt.Errorf("accelerator kvm requested but unavailable: %s", reason)
		}
		return AccelKVM, reasonRequested, nil
	case "auto":
		reason, ok := h.kvmUsable()
		if ok {
			return AccelKVM, reason, nil
		}
		return AccelTCG, reason, nil
	default:
		return "", "", fmt.Errorf("unknown accelerator %q (want auto, kvm or tcg)", requested)
	}
}

// kvmUsable reports whether KVM can run a guest here, and why or why not.
// The CPU flags are checked before the device because /dev/kvm can exist and
// open inside a container on a host whose CPU (or hypervisor) exposes no
// virtualization extensions; QEMU would then fail only at start-up.
func (h hostProbe) kvmUsable() (string, bool) {
	hasFlag, err := cpuHasVirtFlag(h.cpuinfoPath)
	if err != nil {
		return err.Error(), false
	}
	if !hasFlag {
		return reasonNoCPUFlags, false
	}
	kvm, err := os.OpenFile(h.kvmPath, os.O_RDWR, 0)
	if err != nil {
		return h.kvmPath + ": " + openFailure(err), false
	}
	kvm.Close()
	return reasonAvailable, true
}

// openFailure is the cause of an open error without the repeated path, so
// the reason reads "/dev/kvm: permission denied".
func openFailure(err error) string {
	var pathErr *os.PathError
	if errors.As(err, &pathErr) {
		return pathErr.Err.Error()
	}
	return err.Error()
}

// cpuHasVirtFlag reports whether any "flags" line of a /proc/cpuinfo-format
// file lists vmx (Intel VT-x) or svm (AMD-V).
func cpuHasVirtFlag(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("reading cpu flags: %w", err)
	}
	defer f.Close()
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		key, value, found := strings.Cut(scanner.Text(), ":")
		if !found || strings.TrimSpace(key) != "flags" {
			continue
		}
		for _, flag := range strings.Fields(value) {
			if flag == "vmx" || flag == "svm" {
				return true, nil
			}
		}
	}
	if err := scanner.Err(); err != nil {
		return false, fmt.Errorf("reading cpu flags: %w", err)
	}
	return false, nil
}
