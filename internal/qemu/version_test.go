package qemu

import (
	"os"
	"testing"
)

func TestParseVersion(t *testing.T) {
	tests := []struct {
		name    string
		output  string
		want    string
		wantErr bool
	}{
		{name: "debian 12", output: "QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u12)\nCopyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n", want: "7.2.19"},
		{name: "ubuntu", output: "QEMU emulator version 8.2.2 (Debian 1:8.2.2+ds-0ubuntu1.4)\nCopyright (c) 2003-2023 Fabrice Bellard and the QEMU Project developers\n", want: "8.2.2"},
		{name: "fedora", output: "QEMU emulator version 6.2.0 (qemu-6.2.0-11.fc36)\n", want: "6.2.0"},
		{name: "upstream build", output: "QEMU emulator version 9.1.0\nCopyright (c) 2003-2024 Fabrice Bellard and the QEMU Project developers\n", want: "9.1.0"},
		{name: "development snapshot", output: "QEMU emulator version 8.0.90 (v8.1.0-rc0)\n", want: "8.0.90"},
		{name: "two parts", output: "QEMU emulator version 2.12 (qemu-kvm-ev)\n", want: "2.12"},
		{name: "crlf", output: "QEMU emulator version 7.2.0\r\n", want: "7.2.0"},
		{name: "program name prefix", output: "qemu-system-x86_64 QEMU emulator version 7.2.0\n", want: "7.2.0"},
		{name: "empty", output: "", wantErr: true},
		{name: "not qemu", output: "bash: qemu: command not found\n", wantErr: true},
		{name: "version on second line", output: "warning: something\nQEMU emulator version 7.2.0\n", wantErr: true},
		{name: "no number", output: "QEMU emulator version \n", wantErr: true},
		{name: "garbage number", output: "QEMU emulator version 7.x.1\n", wantErr: true},
		{name: "single number", output: "QEMU emulator version 7\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseVersion(tt.output)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("parseVersion(%q) = %q, want an error", tt.output, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseVersion(%q): %v", tt.output, err)
			}
			if got != tt.want {
				t.Errorf("parseVersion(%q) = %q, want %q", tt.output, got, tt.want)
			}
		})
	}
}

func TestVersionRealBinary(t *testing.T) {
	if _, err := os.Stat(realQEMU); err != nil {
		t.Skipf("needs %s: %v", realQEMU, err)
	}
	got, err := Version(realQEMU)
	if err != nil {
		t.Fatal(err)
	}
	if !isVersionNumber(got) {
		t.Errorf("Version(%s) = %q, not a version number", realQEMU, got)
	}
}

func TestVersionMissingBinary(t *testing.T) {
	if _, err := Version("/nonexistent/qemu-system-x86_64"); err == nil {
		t.Fatal("Version of a missing binary succeeded")
	}
}
