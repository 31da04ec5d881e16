package qemu

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Config describes one microvm. Args turns it into QEMU's argv.
type Config struct {
	// Binary is the QEMU executable; it is not part of Args.
	Binary string
	// Name identifies the VM as sandbox-<Name> in QEMU's argv, its error
	// messages and query-name, so a process list maps back to the sandbox.
	Name string

	Kernel     string
	Initrd     string // optional
	KernelArgs string // optional

	CPUs      int
	MemoryMiB int
	Accel     Accel
	// TBSizeMiB sizes TCG's translation cache; 0 keeps QEMU's default. It is
	// ignored under KVM so one configuration serves either accelerator.
	TBSizeMiB int

	Devices []Device

	// MemoryFile, when set, backs the guest's RAM with that file. Shared,
	// the guest's writes reach the file (a template being made); private,
	// the file is mapped copy-on-write, so that the unchanged pages of every
	// sandbox restored from one template are the same host pages.
	MemoryFile   string
	MemoryShared bool
	// Restore starts QEMU waiting for a saved guest (-incoming defer)
	// instead of booting one: the kernel, initrd and command line are then
	// in the saved RAM, and QEMU is given none.
	Restore bool
}

// memoryBackendID names the guest RAM's backend object when MemoryFile is set.
const memoryBackendID = "ram"

// machineOptions are the microvm properties every VM gets, checked against
// `qemu-system-x86_64 -machine microvm,help` for QEMU 7.2 and by booting the
// guest kernel under TCG:
//   - x-option-roms=off: qboot enters the PVH kernel itself; the option ROMs
//     only cost start-up time.
//   - isa-serial=on: the one legacy port kept, the guest kernel's console.
//   - acpi=off: the guest kernel has no ACPI. With ACPI on, QEMU announces
//     the virtio-mmio devices only in ACPI tables (and wires them to a second
//     IO-APIC), so the guest finds no devices and cannot mount its root.
//     Off, QEMU lists them on the kernel command line on the first IO-APIC,
//     which limits a VM to eight virtio-mmio devices.
//
// The legacy PIT, PIC and RTC stay at their defaults (on), because under TCG
// there is no kvmclock and the guest needs them: with pit=off the kernel
// panics ("IO-APIC + timer doesn't work!"); with pic=off it cannot register
// its timer interrupt and hangs; with rtc=off it spends a second polling the
// missing CMOS clock at boot and starts with the time at 1970. QEMU's docs
// turn them off only under KVM, which cannot be tested on TCG-only hosts, so
// both accelerators get the same, tested machine.
const machineOptions = "microvm,x-option-roms=off,isa-serial=on,acpi=off"

// Validate reports every field of c and of its devices that QEMU would
// reject or misparse.
func (c *Config) Validate() error {
	errs := []error{
		checkPath("Config.Binary", c.Binary),
		checkName("Config.Name", c.Name),
	}
	if !c.Restore {
		errs = append(errs, checkPath("Config.Kernel", c.Kernel))
	}
	if c.Restore && c.MemoryFile == "" {
		errs = append(errs, errors.New("Config.Restore: needs Config.MemoryFile, the saved guest's RAM"))
	}
	if c.MemoryFile != "" {
		errs = append(errs, checkPath("Config.MemoryFile", c.MemoryFile))
	}
	if c.Initrd != "" && !c.Restore {
		errs = append(errs, checkPath("Config.Initrd", c.Initrd))
	}
	if strings.ContainsAny(c.KernelArgs, "\n\r\x00") {
		errs = append(errs, fmt.Errorf("Config.KernelArgs %q: contains a newline or NUL", c.KernelArgs))
	}
	if c.CPUs < 1 {
		errs = append(errs, fmt.Errorf("Config.CPUs: must be at least 1, got %d", c.CPUs))
	}
	if c.MemoryMiB < 1 {
		errs = append(errs, fmt.Errorf("Config.MemoryMiB: must be at least 1, got %d", c.MemoryMiB))
	}
	if c.Accel != AccelKVM && c.Accel != AccelTCG {
		errs = append(errs, fmt.Errorf("Config.Accel %q: must be %q or %q", c.Accel, AccelKVM, AccelTCG))
	}
	if c.TBSizeMiB < 0 {
		errs = append(errs, fmt.Errorf("Config.TBSizeMiB: must not be negative, got %d", c.TBSizeMiB))
	}
	for i, device := range c.Devices {
		if device == nil {
			errs = append(errs, fmt.Errorf("Config.Devices[%d]: nil device", i))
			continue
		}
		if err := device.Valid(); err != nil {
			errs = append(errs, fmt.Errorf("Config.Devices[%d]: %w", i, err))
		}
	}
	return errors.Join(errs...)
}

// Args validates c and returns QEMU's arguments, without the binary.
func (c *Config) Args() ([]string, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("invalid qemu config: %w", err)
	}
	machine := machineOptions
	if c.MemoryFile != "" {
		machine += ",memory-backend=" + memoryBackendID
	}
	args := []string{
		"-name", "sandbox-" + c.Name,
		"-machine", machine,
	}
	switch c.Accel {
	case AccelKVM:
		args = append(args, "-accel", "kvm", "-cpu", "host")
	case AccelTCG:
		accel := "tcg"
		if c.TBSizeMiB > 0 {
			accel += ",tb-size=" + strconv.Itoa(c.TBSizeMiB)
		}
		// max gives the guest every feature TCG can emulate, so the guest
		// kernel and workloads see a modern x86-64 rather than qemu64.
		args = append(args, "-accel", accel, "-cpu", "max")
	}
	args = append(args,
		"-smp", strconv.Itoa(c.CPUs),
		"-m", strconv.Itoa(c.MemoryMiB)+"M",
		// Only the devices listed below exist: no default NIC, VGA, monitor
		// or config file from the host.
		"-nodefaults", "-no-user-config", "-nographic",
		// A guest reboot or triple fault then makes QEMU exit, which is how
		// the guest powers off; restarting a sandbox is the runtime's call.
		"-no-reboot",
		// QEMU's seccomp filter: a guest that escapes into QEMU through a
		// device-emulation bug still cannot exec, gain privileges or change
		// resource limits.
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
	)
	if c.MemoryFile != "" {
		share := "off"
		if c.MemoryShared {
			share = "on"
		}
		args = append(args, "-object", fmt.Sprintf("memory-backend-file,id=%s,size=%dM,mem-path=%s,share=%s",
			memoryBackendID, c.MemoryMiB, escapeOptionValue(c.MemoryFile), share))
	}
	if c.Restore {
		// The saved state comes later, through the monitor's migrate-incoming.
		args = append(args, "-incoming", "defer")
	} else {
		// -kernel, -initrd and -append are plain strings to QEMU, not option
		// lists, so their commas must not be doubled.
		args = append(args, "-kernel", c.Kernel)
		if c.Initrd != "" {
			args = append(args, "-initrd", c.Initrd)
		}
		if c.KernelArgs != "" {
			args = append(args, "-append", c.KernelArgs)
		}
	}
	for _, device := range c.Devices {
		args = append(args, device.Args()...)
	}
	return args, nil
}
