package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestInstallAndPackage: make install puts every file in its place under
// DESTDIR and the installed husk works; make uninstall takes them away but
// the configuration; make deb packages the same files.
func TestInstallAndPackage(t *testing.T) {
	requireGuest(t)
	repo := filepath.Join(buildDir, "..")
	dest := t.TempDir()
	if out, err := exec.Command("make", "-C", repo, "install", "DESTDIR="+dest).CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	installed := []string{
		"usr/local/bin/husk", "usr/local/bin/containerd-shim-husk-v2", "usr/local/share/husk/vmlinux", "usr/local/share/husk/husk-initrd.img",
		"usr/local/share/man/man8/husk.8", "usr/local/share/man/man8/husk-run.8",
		"usr/local/share/bash-completion/completions/husk", "etc/husk/configuration.toml",
	}
	for _, f := range installed {
		if _, err := os.Stat(filepath.Join(dest, f)); err != nil {
			t.Errorf("not installed: %s", f)
		}
	}
	cfg := filepath.Join(dest, "check.toml")
	os.WriteFile(cfg, []byte("[hypervisor]\nkernel = \""+filepath.Join(dest, "usr/local/share/husk/vmlinux")+
		"\"\ninitrd = \""+filepath.Join(dest, "usr/local/share/husk/husk-initrd.img")+"\"\n"), 0o644)
	out, err := exec.Command(filepath.Join(dest, "usr/local/bin/husk"), "--config", cfg, "check").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "accelerator") || !strings.Contains(string(out), "(Linux 6.1.") || !strings.Contains(string(out), "(agent of husk ") {
		t.Fatalf("installed husk check: %v\n%s", err, out)
	}
	if out, err := exec.Command("make", "-C", repo, "uninstall", "DESTDIR="+dest).CombinedOutput(); err != nil {
		t.Fatalf("make uninstall: %v\n%s", err, out)
	}
	for _, f := range installed {
		_, err := os.Stat(filepath.Join(dest, f))
		if kept := f == "etc/husk/configuration.toml"; kept != (err == nil) {
			t.Errorf("after uninstall %s: present=%v", f, err == nil)
		}
	}

	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		skipUnlessRequired(t, "needs dpkg-deb for make deb")
	}
	if out, err := exec.Command("make", "-C", repo, "deb").CombinedOutput(); err != nil {
		t.Fatalf("make deb: %v\n%s", err, out)
	}
	out, err = exec.Command("dpkg-deb", "-c", filepath.Join(buildDir, "husk.deb")).Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"./usr/bin/husk", "./usr/bin/containerd-shim-husk-v2", "./usr/share/husk/vmlinux", "./usr/share/husk/husk-initrd.img", "./etc/husk/configuration.toml"} {
		if !strings.Contains(string(out), f) {
			t.Errorf("package lacks %s", f)
		}
	}
	if out, _ := exec.Command("dpkg-deb", "-f", filepath.Join(buildDir, "husk.deb"), "Depends").Output(); !strings.Contains(string(out), "qemu-system-x86") {
		t.Errorf("package does not depend on qemu-system-x86: %q", out)
	}
}
