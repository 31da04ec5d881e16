package qemu

import (
	"bufio"
	"bytes"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current Args")

const realQEMU = "/usr/bin/qemu-system-x86_64"

// sandboxConfig is a VM as the sandbox package would describe it, with a
// comma in one path to show the escaping.
func sandboxConfig(accel Accel) *Config {
	return &Config{
		Binary:     realQEMU,
		Name:       "4f2a9c",
		Kernel:     "/usr/lib/husk/vmlinux",
		Initrd:     "/usr/lib/husk/initrd.img",
		KernelArgs: "console=ttyS0 reboot=t panic=-1 quiet",
		CPUs:       2,
		MemoryMiB:  512,
		Accel:      accel,
		TBSizeMiB:  64,
		Devices: []Device{
			SerialConsoleToFile{Path: "/run/husk/4f2a9c/console.log"},
			QMPClient{SocketPath: "/run/husk/4f2a9c/qmp.sock"},
			VirtioSerialPort{ID: "agent", SocketPath: "/run/husk/4f2a9c/agent.sock", Name: "org.husk.agent.0"},
			Virtio9P{ID: "shared", Path: "/run/husk/4f2a9c/shared,dir", Tag: "husk-shared"},
			Virtio9P{ID: "image", Path: "/var/lib/husk/image", Tag: "husk-image", ReadOnly: true},
			VirtioRNG{ID: "rng0"},
			VirtioNetTap{ID: "net0", FD: 3, MAC: "02:42:0a:e7:00:01"},
		},
	}
}

func TestConfigArgsGolden(t *testing.T) {
	tests := []struct {
		golden string
		config *Config
	}{
		{golden: "tcg.golden", config: sandboxConfig(AccelTCG)},
		{golden: "kvm.golden", config: sandboxConfig(AccelKVM)},
		{golden: "template.golden", config: func() *Config {
			c := sandboxConfig(AccelTCG)
			c.MemoryFile, c.MemoryShared = "/run/husk-templates/0f1e,2d/memory", true
			return c
		}()},
		{golden: "template-net.golden", config: func() *Config {
			c := sandboxConfig(AccelTCG)
			c.MemoryFile, c.MemoryShared = "/run/husk-templates/0f1e,2d/memory", true
			c.Devices[len(c.Devices)-1] = VirtioNetTap{ID: "net0", IfName: "tap6", MAC: "02:68:75:73:6b:00"}
			return c
		}()},
		{golden: "restore.golden", config: func() *Config {
			c := sandboxConfig(AccelTCG)
			c.MemoryFile, c.Restore = "/run/husk-templates/0f1e,2d/memory", true
			return c
		}()},
		{golden: "minimal.golden", config: &Config{
			Binary: "qemu-system-x86_64", Name: "min", Kernel: "/vmlinux",
			CPUs: 1, MemoryMiB: 128, Accel: AccelTCG,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.golden, func(t *testing.T) {
			args, err := tt.config.Args()
			if err != nil {
				t.Fatalf("Args: %v", err)
			}
			got := strings.Join(args, "\n") + "\n"
			path := filepath.Join("testdata", tt.golden)
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("Args differ from %s (run go test -update if the change is intended)\ngot:\n%s\nwant:\n%s", path, got, want)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(c *Config)
		wantErr string // empty: valid
	}{
		{name: "valid", mutate: func(c *Config) {}},
		{name: "no initrd or append", mutate: func(c *Config) { c.Initrd, c.KernelArgs = "", "" }},
		{name: "tb size zero", mutate: func(c *Config) { c.TBSizeMiB = 0 }},
		{name: "no devices", mutate: func(c *Config) { c.Devices = nil }},
		{name: "missing binary", mutate: func(c *Config) { c.Binary = "" }, wantErr: "Config.Binary"},
		{name: "missing name", mutate: func(c *Config) { c.Name = "" }, wantErr: "Config.Name"},
		{name: "name with comma", mutate: func(c *Config) { c.Name = "a,debug-threads=on" }, wantErr: "Config.Name"},
		{name: "missing kernel", mutate: func(c *Config) { c.Kernel = "" }, wantErr: "Config.Kernel"},
		{name: "kernel with newline", mutate: func(c *Config) { c.Kernel = "/vmlinux\n-S" }, wantErr: "Config.Kernel"},
		{name: "initrd with NUL", mutate: func(c *Config) { c.Initrd = "/initrd\x00" }, wantErr: "Config.Initrd"},
		{name: "kernel args with newline", mutate: func(c *Config) { c.KernelArgs = "quiet\ninit=/bin/sh" }, wantErr: "Config.KernelArgs"},
		{name: "zero cpus", mutate: func(c *Config) { c.CPUs = 0 }, wantErr: "Config.CPUs"},
		{name: "negative cpus", mutate: func(c *Config) { c.CPUs = -1 }, wantErr: "Config.CPUs"},
		{name: "zero memory", mutate: func(c *Config) { c.MemoryMiB = 0 }, wantErr: "Config.MemoryMiB"},
		{name: "empty accel", mutate: func(c *Config) { c.Accel = "" }, wantErr: "Config.Accel"},
		{name: "auto is not an accel", mutate: func(c *Config) { c.Accel = "auto" }, wantErr: "Config.Accel"},
		{name: "negative tb size", mutate: func(c *Config) { c.TBSizeMiB = -1 }, wantErr: "Config.TBSizeMiB"},
		{name: "nil device", mutate: func(c *Config) { c.Devices = append(c.Devices, nil) }, wantErr: "Config.Devices[7]: nil device"},
		{name: "restore needs no kernel", mutate: func(c *Config) { c.Kernel, c.Restore, c.MemoryFile = "", true, "/t/memory" }},
		{name: "restore without memory file", mutate: func(c *Config) { c.Restore = true }, wantErr: "Config.Restore"},
		{name: "memory file with newline", mutate: func(c *Config) { c.MemoryFile = "/t/memory\n" }, wantErr: "Config.MemoryFile"},
		{name: "bad device", mutate: func(c *Config) { c.Devices[3] = Virtio9P{ID: "shared", Path: "/x"} }, wantErr: "Config.Devices[3]: Virtio9P.Tag"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			config := sandboxConfig(AccelTCG)
			tt.mutate(config)
			err := config.Validate()
			_, argsErr := config.Args()
			if tt.wantErr == "" {
				if err != nil || argsErr != nil {
					t.Fatalf("Validate() = %v, Args() error = %v; want both nil", err, argsErr)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Validate() = %v, want an error naming %q", err, tt.wantErr)
			}
			if argsErr == nil {
				t.Error("Args() built a command line for an invalid config")
			}
		})
	}
}

func TestConfigValidateReportsEveryField(t *testing.T) {
	err := (&Config{}).Validate()
	if err == nil {
		t.Fatal("empty Config is valid")
	}
	for _, field := range []string{"Config.Binary", "Config.Name", "Config.Kernel", "Config.CPUs", "Config.MemoryMiB", "Config.Accel"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("Validate() of an empty Config does not name %s: %v", field, err)
		}
	}
}

func TestDeviceValid(t *testing.T) {
	long := strings.Repeat("t", maxMountTagLen+1)
	tests := []struct {
		name    string
		device  Device
		wantErr string // empty: valid
	}{
		{name: "console", device: SerialConsoleToFile{Path: "console.log"}},
		{name: "console empty path", device: SerialConsoleToFile{}, wantErr: "SerialConsoleToFile.Path"},
		{name: "console newline", device: SerialConsoleToFile{Path: "/a\nb"}, wantErr: "SerialConsoleToFile.Path"},
		{name: "qmp", device: QMPClient{SocketPath: "/run/qmp.sock"}},
		{name: "qmp empty path", device: QMPClient{}, wantErr: "QMPClient.SocketPath"},
		{name: "port", device: VirtioSerialPort{ID: "agent", SocketPath: "/a.sock", Name: "org.husk.agent.0"}},
		{name: "port empty id", device: VirtioSerialPort{SocketPath: "/a.sock", Name: "n"}, wantErr: "VirtioSerialPort.ID"},
		{name: "port id starts with digit", device: VirtioSerialPort{ID: "0agent", SocketPath: "/a.sock", Name: "n"}, wantErr: "VirtioSerialPort.ID"},
		{name: "port id with comma", device: VirtioSerialPort{ID: "a,b", SocketPath: "/a.sock", Name: "n"}, wantErr: "VirtioSerialPort.ID"},
		{name: "port empty path", device: VirtioSerialPort{ID: "agent", Name: "n"}, wantErr: "VirtioSerialPort.SocketPath"},
		{name: "port empty name", device: VirtioSerialPort{ID: "agent", SocketPath: "/a.sock"}, wantErr: "VirtioSerialPort.Name"},
		{name: "port name with slash", device: VirtioSerialPort{ID: "agent", SocketPath: "/a.sock", Name: "../x"}, wantErr: "VirtioSerialPort.Name"},
		{name: "9p", device: Virtio9P{ID: "fs0", Path: "/srv", Tag: strings.Repeat("t", maxMountTagLen)}},
		{name: "9p empty tag", device: Virtio9P{ID: "fs0", Path: "/srv"}, wantErr: "Virtio9P.Tag"},
		{name: "9p long tag", device: Virtio9P{ID: "fs0", Path: "/srv", Tag: long}, wantErr: "Virtio9P.Tag"},
		{name: "9p tag with comma", device: Virtio9P{ID: "fs0", Path: "/srv", Tag: "a,b"}, wantErr: "Virtio9P.Tag"},
		{name: "9p empty path", device: Virtio9P{ID: "fs0", Tag: "t"}, wantErr: "Virtio9P.Path"},
		{name: "9p path with newline", device: Virtio9P{ID: "fs0", Path: "/srv\n", Tag: "t"}, wantErr: "Virtio9P.Path"},
		{name: "9p empty id", device: Virtio9P{Path: "/srv", Tag: "t"}, wantErr: "Virtio9P.ID"},
		{name: "rng", device: VirtioRNG{ID: "rng0"}},
		{name: "rng empty id", device: VirtioRNG{}, wantErr: "VirtioRNG.ID"},
		{name: "net", device: VirtioNetTap{ID: "net0", FD: 3, MAC: "02:42:ac:11:00:02"}},
		{name: "net bad mac", device: VirtioNetTap{ID: "net0", FD: 3, MAC: "02:42"}, wantErr: "VirtioNetTap.MAC"},
		{name: "net stdio fd", device: VirtioNetTap{ID: "net0", FD: 1, MAC: "02:42:ac:11:00:02"}, wantErr: "VirtioNetTap.FD"},
		{name: "net empty id", device: VirtioNetTap{FD: 3, MAC: "02:42:ac:11:00:02"}, wantErr: "VirtioNetTap.ID"},
		{name: "net made by qemu", device: VirtioNetTap{ID: "net0", IfName: "tap0", MAC: "02:42:ac:11:00:02"}},
		{name: "net bad ifname", device: VirtioNetTap{ID: "net0", IfName: "tap0,script=/x", MAC: "02:42:ac:11:00:02"}, wantErr: "VirtioNetTap.IfName"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.device.Valid()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Valid() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Valid() = %v, want an error naming %q", err, tt.wantErr)
			}
		})
	}
}

func TestEscapeOptionValue(t *testing.T) {
	tests := map[string]string{
		"/plain/path":  "/plain/path",
		"/a,b":         "/a,,b",
		"/a,,b":        "/a,,,,b",
		",":            ",,",
		"/sp ace=x,y,": "/sp ace=x,,y,,",
	}
	for in, want := range tests {
		if got := escapeOptionValue(in); got != want {
			t.Errorf("escapeOptionValue(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestMachinePropertiesExist checks every microvm property Args emits
// against the installed QEMU, since QEMU rejects an unknown one at start-up.
func TestMachinePropertiesExist(t *testing.T) {
	if _, err := os.Stat(realQEMU); err != nil {
		t.Skipf("needs %s: %v", realQEMU, err)
	}
	out, err := exec.Command(realQEMU, "-machine", "microvm,help").Output()
	if err != nil {
		t.Fatalf("%s -machine microvm,help: %v", realQEMU, err)
	}
	known := map[string]bool{}
	scanner := bufio.NewScanner(bytes.NewReader(out))
	for scanner.Scan() {
		// Property lines read "  acpi=<OnOffAuto>       - Enable ACPI".
		name, _, found := strings.Cut(strings.TrimSpace(scanner.Text()), "=<")
		if found {
			known[name] = true
		}
	}
	if len(known) == 0 {
		t.Fatalf("no properties parsed from:\n%s", out)
	}
	for _, accel := range []Accel{AccelKVM, AccelTCG} {
		args, err := sandboxConfig(accel).Args()
		if err != nil {
			t.Fatal(err)
		}
		i := slices.Index(args, "-machine")
		if i < 0 || i+1 >= len(args) {
			t.Fatalf("%s: no -machine argument in %q", accel, args)
		}
		machine, properties, _ := strings.Cut(args[i+1], ",")
		if machine != "microvm" {
			t.Errorf("%s: machine %q, want microvm", accel, machine)
		}
		for _, property := range strings.Split(properties, ",") {
			name, _, _ := strings.Cut(property, "=")
			if !known[name] {
				t.Errorf("%s: microvm property %q is not in %s's list", accel, name, realQEMU)
			}
		}
	}
}
