package e2e

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestIsolation runs probes inside a container, as root and sharing the
// guest's PID namespace (the weakest setting a spec can ask for), and checks
// that none of them reaches the host.
func TestIsolation(t *testing.T) {
	e := newEnv(t)
	secret := filepath.Join(t.TempDir(), "host-secret")
	marker := fmt.Sprintf("husk-secret-%d", os.Getpid())
	if err := os.WriteFile(secret, []byte(marker), 0o644); err != nil {
		t.Fatal(err)
	}
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close()
	go func() {
		for {
			c, err := listener.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, marker)
			c.Close()
		}
	}()
	port := listener.Addr().(*net.TCPAddr).Port

	b := e.bundle(noPIDNamespace, "sh", "/probe.sh")
	rootfs := filepath.Join(b, "rootfs")
	// Symlinks planted in the rootfs that would point at the host's file if
	// they were resolved on the host.
	for name, target := range map[string]string{
		"abs-link": secret,
		"rel-link": strings.Repeat("../", 30) + strings.TrimPrefix(secret, "/"),
	} {
		if err := os.Symlink(target, filepath.Join(rootfs, name)); err != nil {
			t.Fatal(err)
		}
	}
	probe := fmt.Sprintf(`
for f in /abs-link /rel-link %[1]s; do cat "$f" 2>/dev/null; done
cat /proc/*/cmdline 2>/dev/null | tr '\0' ' ' | grep -o -e 'qemu-syste[m]' -e 'docker[d]' -e 'e2e[.]tes[t]'
echo x > /proc/1/root/init 2>/dev/null && echo WROTE-AGENT
ls /dev/vport* /dev/kvm /dev/virtio-ports 2>/dev/null && echo SAW-DEVICES
cat /proc/modules 2>/dev/null && echo HAS-MODULES
nc -w 2 127.0.0.1 %[2]d 2>/dev/null
echo probes-done
`, secret, port)
	if err := os.WriteFile(filepath.Join(rootfs, "probe.sh"), []byte(probe), 0o755); err != nil {
		t.Fatal(err)
	}
	// The probes can succeed: on the host, the planted link and the
	// listener do give the marker.
	if data, err := os.ReadFile(filepath.Join(rootfs, "abs-link")); err != nil || string(data) != marker {
		t.Fatalf("control: the planted link does not reach the secret on the host: %q %v", data, err)
	}
	if c, err := net.Dial("tcp", listener.Addr().String()); err != nil {
		t.Fatalf("control: the listener is not reachable on the host: %v", err)
	} else {
		c.Close()
	}

	r := e.run("", "run", "--bundle", b, e.id())
	if !strings.Contains(r.stdout, "probes-done") {
		t.Fatalf("probes did not run: status %d, stdout %q, stderr %q", r.status, r.stdout, r.stderr)
	}
	for _, leak := range []string{marker, "qemu-system", "dockerd", "e2e.test", "WROTE-AGENT", "SAW-DEVICES", "HAS-MODULES"} {
		if strings.Contains(r.stdout, leak) {
			t.Errorf("the container reached the host or the guest's internals: %q in\n%s", leak, r.stdout)
		}
	}
}
