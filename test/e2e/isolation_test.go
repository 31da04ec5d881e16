package e2e

import (
	"crypto/sha256"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// TestIsolation runs probes inside a container, as root, sharing the guest's
// PID namespace and holding CAP_MKNOD (weaker than a default container),
// joined to a network namespace of the test's with a default route, and
// checks that none of them reaches the host. Each probe has a control that
// shows the same tool works in the guest, so a probe cannot pass because it
// failed for another reason.
func TestIsolation(t *testing.T) {
	f := newNetFixture(t) // before the env: its leak check runs after the env's clean-up
	e := newEnv(t)
	secret := filepath.Join(t.TempDir(), "host-secret")
	marker := fmt.Sprintf("husk-secret-%d", os.Getpid())
	if err := os.WriteFile(secret, []byte(marker), 0o644); err != nil {
		t.Fatal(err)
	}
	// A service on the host's loopback, and a reachable one in namespace B
	// (the control for the network probes).
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
	const controlPort = 18097
	f.serveFromB(t, controlPort, "control", "network-control-ok\n")

	// A volume holding links that would reach the secret if they were
	// resolved on the host.
	volume := t.TempDir()
	for name, target := range map[string]string{
		"abs-link": secret,
		"rel-link": strings.Repeat("../", 30) + strings.TrimPrefix(secret, "/"),
	} {
		if err := os.Symlink(target, filepath.Join(volume, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(volume, "plain"), []byte("volume-control-ok\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	b := e.bundle(func(s *specs.Spec) {
		noPIDNamespace(s)
		inNamespace(f.a)(s)
		caps := s.Process.Capabilities
		caps.Bounding = append(caps.Bounding, "CAP_MKNOD")
		caps.Effective = append(caps.Effective, "CAP_MKNOD")
		caps.Permitted = append(caps.Permitted, "CAP_MKNOD")
		s.Mounts = append(s.Mounts,
			specs.Mount{Destination: "/vol", Type: "bind", Source: volume, Options: []string{"rbind", "ro"}},
			specs.Mount{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs"},
			// A destination that climbs out of the rootfs lands inside it.
			specs.Mount{Destination: "/../../../../husk-climb", Type: "tmpfs", Source: "tmpfs"})
	}, "sh", "/probe.sh")
	rootfs := filepath.Join(b, "rootfs")
	// The same links planted in the rootfs itself.
	for _, name := range []string{"abs-link", "rel-link"} {
		target, _ := os.Readlink(filepath.Join(volume, name))
		if err := os.Symlink(target, filepath.Join(rootfs, name)); err != nil {
			t.Fatal(err)
		}
	}
	probe := fmt.Sprintf(`
cat /vol/plain
for f in /abs-link /rel-link /vol/abs-link /vol/rel-link %[1]s; do cat "$f" 2>/dev/null; done
grep -q /husk-climb /proc/self/mounts && echo climb-mounted-inside
cat /proc/*/cmdline 2>/dev/null | tr '\0' ' ' | grep -o -e 'qemu-syste[m]' -e 'docker[d]' -e 'e2e[.]tes[t]'
tr '\0' ' ' </proc/1/cmdline | grep -q init && echo agent-visible-control
echo x > /proc/1/root/init 2>/dev/null && echo WROTE-AGENT
mknod /tmp/null c 1 3 && echo ok > /tmp/null && echo mknod-control-ok
maj=$(awk '$2=="virtio-portsdev" {print $1}' /proc/devices)
[ -n "$maj" ] && echo "agent-port-major-found"
mknod /tmp/vport c "$maj" 1 2>/dev/null; cat /tmp/vport >/dev/null 2>&1 && echo OPENED-AGENT-PORT
mknod /tmp/kvm c 10 232 2>/dev/null; cat /tmp/kvm >/dev/null 2>&1 && echo OPENED-KVM
ls /dev/vport* /dev/kvm /dev/virtio-ports 2>/dev/null && echo SAW-DEVICES
echo not-a-module > /tmp/m.ko
insmod /tmp/m.ko 2>&1 | grep -q -e 'does not support' -e 'not implemented' -e 'not permitted' && echo insmod-refused
[ -e /proc/modules ] && echo HAS-MODULES
printf 'GET /control HTTP/1.0\r\n\r\n' | nc -w 2 %[3]s %[4]d 2>/dev/null | grep -q network-control && echo network-nc-control-ok
wget -q -O - http://%[3]s:%[4]d/control
for addr in 127.0.0.1 10.0.2.2 %[3]s; do nc -w 2 $addr %[2]d </dev/null 2>/dev/null; done
echo probes-done
`, secret, port, f.addrB, controlPort)
	if err := os.WriteFile(filepath.Join(rootfs, "probe.sh"), []byte(probe), 0o755); err != nil {
		t.Fatal(err)
	}
	// Host-side controls: the planted link and the listener do give the
	// marker on the host.
	if data, err := os.ReadFile(filepath.Join(volume, "abs-link")); err != nil || string(data) != marker {
		t.Fatalf("control: the planted link does not reach the secret on the host: %q %v", data, err)
	}
	if c, err := net.Dial("tcp", listener.Addr().String()); err != nil {
		t.Fatalf("control: the listener is not reachable on the host: %v", err)
	} else {
		c.Close()
	}
	guestFiles := map[string][32]byte{}
	for _, name := range []string{"vmlinux", "husk-initrd.img"} {
		guestFiles[name] = fileHash(t, filepath.Join(buildDir, name))
	}

	r := e.run("", "run", "--bundle", b, e.id())
	if !strings.Contains(r.stdout, "probes-done") {
		t.Fatalf("probes did not run: status %d, stdout %q, stderr %q", r.status, r.stdout, r.stderr)
	}
	for _, control := range []string{"volume-control-ok", "climb-mounted-inside", "agent-visible-control", "mknod-control-ok",
		"agent-port-major-found", "insmod-refused", "network-nc-control-ok", "network-control-ok"} {
		if !strings.Contains(r.stdout, control) {
			t.Errorf("control %q missing: a probe may have failed for another reason:\n%s", control, r.stdout)
		}
	}
	for _, leak := range []string{marker, "qemu-system", "dockerd", "e2e.test", "WROTE-AGENT", "OPENED-AGENT-PORT", "OPENED-KVM", "SAW-DEVICES", "HAS-MODULES"} {
		if strings.Contains(r.stdout, leak) {
			t.Errorf("the container reached the host or the guest's internals: %q in\n%s", leak, r.stdout)
		}
	}
	for name, before := range guestFiles {
		if fileHash(t, filepath.Join(buildDir, name)) != before {
			t.Errorf("the guest's %s changed on the host", name)
		}
	}
	for _, outside := range []string{filepath.Join(b, "husk-climb"), "/husk-climb"} {
		if _, err := os.Stat(outside); err == nil {
			t.Errorf("a mount destination climbed out of the rootfs: %s exists", outside)
		}
	}
}

func fileHash(t *testing.T, path string) [32]byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(data)
}
