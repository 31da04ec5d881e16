package oci

import (
	"fmt"
	"os/exec"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/husk-runtime/husk/internal/state"
)

// The process that holds a container's host-side network namespace while
// its create hooks run and as long as its sandbox lives: the hooks read its
// pid in the state on their stdin (the container's own process is inside
// the VM, and at create not even there yet), and the sandbox joins the
// interfaces they put in its namespace.

// StartNetNSHolder starts the process that holds the container's host-side
// network namespace while the create hooks run and as long as the sandbox
// lives. It sleeps in the namespace the spec names, in a new one if the
// spec asks for one, or in the host's if the spec has none.
func StartNetNSHolder(spec *specs.Spec) (state.Process, error) {
	sleep := []string{"sleep", "infinity"}
	var cmd *exec.Cmd
	// inPlace says whether the holder has entered its namespace: unshare
	// and nsenter exec sleep in the same process once it is in place, and
	// until then /proc/PID/ns/net is this process's.
	var inPlace func(pid int) bool
	switch path, ok := NetworkNamespace(spec); {
	case ok && path == "":
		cmd = exec.Command("unshare", append([]string{"--net", "--"}, sleep...)...)
		own, err := NamespaceOf("/proc/self/ns/net")
		if err != nil {
			return state.Process{}, err
		}
		inPlace = func(pid int) bool {
			ns, err := NamespaceOf(NetNSOf(pid))
			return err == nil && ns != own
		}
	case ok:
		cmd = exec.Command("nsenter", append([]string{"--net=" + path, "--"}, sleep...)...)
		target, err := NamespaceOf(path)
		if err != nil {
			return state.Process{}, fmt.Errorf("the spec's network namespace %s: %w", path, err)
		}
		inPlace = func(pid int) bool {
			ns, err := NamespaceOf(NetNSOf(pid))
			return err == nil && ns == target
		}
	default:
		cmd = exec.Command(sleep[0], sleep[1:]...)
		inPlace = func(int) bool { return true }
	}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return state.Process{}, fmt.Errorf("starting the network namespace holder for the hooks: %w", err)
	}
	go func() { _ = cmd.Wait() }()
	holder := state.ProcessOf(cmd.Process.Pid)
	for deadline := time.Now().Add(5 * time.Second); !inPlace(holder.PID); time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) || !holder.Alive() {
			StopNetNSHolder(holder)
			return state.Process{}, fmt.Errorf("the network namespace holder for the hooks did not start (%v)", cmd.Args)
		}
	}
	return holder, nil
}

// NetNSOf is the path of a process's network namespace: the holder's names
// the container's host-side one.
func NetNSOf(pid int) string { return fmt.Sprintf("/proc/%d/ns/net", pid) }

// NamespaceOf identifies the namespace a /proc/PID/ns file or a bind mount
// of one names.
func NamespaceOf(path string) (NamespaceID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return NamespaceID{}, err
	}
	return NamespaceID{st.Dev, st.Ino}, nil
}

// NamespaceID is a namespace's identity: the device and inode of its file.
type NamespaceID struct{ dev, ino uint64 }

// NetworkNamespace reports whether the spec has a network namespace and
// the path it names ("" for a new one).
func NetworkNamespace(spec *specs.Spec) (path string, ok bool) {
	if spec.Linux == nil {
		return "", false
	}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			return ns.Path, true
		}
	}
	return "", false
}

// StopNetNSHolder ends a holder and waits, briefly, for it to go.
func StopNetNSHolder(p state.Process) {
	if !p.Alive() {
		return
	}
	_ = unix.Kill(p.PID, unix.SIGKILL)
	for deadline := time.Now().Add(5 * time.Second); p.Alive() && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
}

// AsksNewNetNS says whether the spec asks for a new network namespace.
func AsksNewNetNS(spec *specs.Spec) bool {
	path, ok := NetworkNamespace(spec)
	return ok && path == ""
}
