package qemu

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	cpuinfoIntelVMX = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr vmx sse2\nvmx flags\t: vnmi preemption_timer\n"
	cpuinfoAMDSVM   = "processor\t: 0\nflags\t\t: fpu vme svm lm\n"
	cpuinfoNoVirt   = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr sse2 hypervisor\n"
	// A "vmx flags" line alone must not count: only the "flags" line says
	// whether the CPU exposes VT-x.
	cpuinfoOnlyVMXKey = "processor\t: 0\nflags\t\t: fpu sse2\nvmx flags\t: vnmi\n"
)

func TestChooseAccel(t *testing.T) {
	dir := t.TempDir()
	writeFile := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	vmx := writeFile("cpuinfo-vmx", cpuinfoIntelVMX)
	svm := writeFile("cpuinfo-svm", cpuinfoAMDSVM)
	noVirt := writeFile("cpuinfo-novirt", cpuinfoNoVirt)
	onlyVMXKey := writeFile("cpuinfo-vmxkey", cpuinfoOnlyVMXKey)
	kvmDevice := writeFile("kvm", "")
	missingKVM := filepath.Join(dir, "no-kvm")
	// Opening a directory read-write fails even for root, unlike a chmod 000
	// file, so it stands in for a /dev/kvm that cannot be opened.
	unopenableKVM := t.TempDir()

	tests := []struct {
		name       string
		requested  string
		cpuinfo    string
		kvm        string
		want       Accel
		wantReason string
		wantErr    string
	}{
		{name: "auto intel", requested: "auto", cpuinfo: vmx, kvm: kvmDevice, want: AccelKVM, wantReason: "hardware virtualization available"},
		{name: "auto amd", requested: "auto", cpuinfo: svm, kvm: kvmDevice, want: AccelKVM, wantReason: "hardware virtualization available"},
		{name: "auto no cpu flag", requested: "auto", cpuinfo: noVirt, kvm: kvmDevice, want: AccelTCG, wantReason: "cpu has no vmx/svm flag"},
		{name: "auto vmx flags key only", requested: "auto", cpuinfo: onlyVMXKey, kvm: kvmDevice, want: AccelTCG, wantReason: "cpu has no vmx/svm flag"},
		{name: "auto no device", requested: "auto", cpuinfo: vmx, kvm: missingKVM, want: AccelTCG, wantReason: missingKVM + ": no such file or directory"},
		{name: "auto device unopenable", requested: "auto", cpuinfo: vmx, kvm: unopenableKVM, want: AccelTCG, wantReason: unopenableKVM + ": is a directory"},
		{name: "auto cpuinfo unreadable", requested: "auto", cpuinfo: filepath.Join(dir, "none"), kvm: kvmDevice, want: AccelTCG, wantReason: "reading cpu flags: open " + filepath.Join(dir, "none") + ": no such file or directory"},
		{name: "tcg requested", requested: "tcg", cpuinfo: vmx, kvm: kvmDevice, want: AccelTCG, wantReason: "requested in configuration"},
		{name: "tcg needs no probe", requested: "tcg", cpuinfo: filepath.Join(dir, "none"), kvm: missingKVM, want: AccelTCG, wantReason: "requested in configuration"},
		{name: "kvm requested", requested: "kvm", cpuinfo: svm, kvm: kvmDevice, want: AccelKVM, wantReason: "requested in configuration"},
		{name: "kvm requested no cpu flag", requested: "kvm", cpuinfo: noVirt, kvm: kvmDevice, wantErr: "cpu has no vmx/svm flag"},
		{name: "kvm requested no device", requested: "kvm", cpuinfo: vmx, kvm: missingKVM, wantErr: "no such file or directory"},
		{name: "unknown", requested: "hvf", cpuinfo: vmx, kvm: kvmDevice, wantErr: `"hvf"`},
		{name: "empty", requested: "", cpuinfo: vmx, kvm: kvmDevice, wantErr: `""`},
		{name: "case matters", requested: "KVM", cpuinfo: vmx, kvm: kvmDevice, wantErr: `"KVM"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			probe := hostProbe{cpuinfoPath: tt.cpuinfo, kvmPath: tt.kvm}
			got, reason, err := probe.chooseAccel(tt.requested)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("chooseAccel(%q) error = %v, want one containing %q", tt.requested, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("chooseAccel(%q): %v", tt.requested, err)
			}
			if got != tt.want || reason != tt.wantReason {
				t.Errorf("chooseAccel(%q) = %q, %q; want %q, %q", tt.requested, got, reason, tt.want, tt.wantReason)
			}
		})
	}
}
