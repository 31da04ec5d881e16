package qemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// runningQEMU is a QEMU process started by a test, with the QMP connection
// it made to the test's socket.
type runningQEMU struct {
	qmp    *QMP
	stderr *bytes.Buffer
	// exited is closed when the process has been reaped; exitErr is then
	// its exit status.
	exited  chan struct{}
	exitErr error
}

func listenUnix(t *testing.T, path string) *net.UnixListener {
	t.Helper()
	listener, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { listener.Close() })
	return listener
}

// acceptFrom accepts QEMU's connection, giving up if QEMU exits first.
func acceptFrom(t *testing.T, listener *net.UnixListener, vm *runningQEMU, timeout time.Duration) net.Conn {
	t.Helper()
	if err := listener.SetDeadline(time.Now().Add(timeout)); err != nil {
		t.Fatal(err)
	}
	accepted := make(chan struct{})
	defer close(accepted)
	go func() {
		select {
		case <-vm.exited:
			listener.SetDeadline(time.Now())
		case <-accepted:
		}
	}()
	conn, err := listener.Accept()
	if err != nil {
		select {
		case <-vm.exited:
			t.Fatalf("qemu exited before connecting (%v): %s", vm.exitErr, vm.stderr)
		default:
		}
		t.Fatalf("accepting qemu's connection on %s: %v", listener.Addr(), err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// startQEMU runs config plus extraArgs and negotiates QMP on qmpListener.
// The process is killed at cleanup if the test has not stopped it.
func startQEMU(t *testing.T, config *Config, qmpListener *net.UnixListener, extraArgs ...string) *runningQEMU {
	t.Helper()
	args, err := config.Args()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(config.Binary, append(args, extraArgs...)...)
	vm := &runningQEMU{exited: make(chan struct{}), stderr: &bytes.Buffer{}}
	cmd.Stderr = vm.stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting qemu: %v", err)
	}
	go func() {
		vm.exitErr = cmd.Wait()
		close(vm.exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-vm.exited
	})

	conn := acceptFrom(t, qmpListener, vm, 10*time.Second)
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	vm.qmp, err = NewQMP(conn)
	if err != nil {
		t.Fatalf("qmp handshake with qemu: %v (stderr: %s)", err, vm.stderr)
	}
	return vm
}

// wait waits for QEMU to exit by itself and fails the test if it does not,
// or exits with an error.
func (vm *runningQEMU) wait(t *testing.T, timeout time.Duration) {
	t.Helper()
	select {
	case <-vm.exited:
		if vm.exitErr != nil {
			t.Errorf("qemu exited with %v: %s", vm.exitErr, vm.stderr)
		}
	case <-time.After(timeout):
		t.Fatalf("qemu still running after %v", timeout)
	}
}

// TestRealQEMUAcceptsArgs starts the installed QEMU with a full device set,
// stopped before the first instruction (-S), so QEMU itself parses every
// argument, opens every path and connects every socket. The kernel is a
// file of zeros: QEMU only loads it, and the CPUs never run.
func TestRealQEMUAcceptsArgs(t *testing.T) {
	if _, err := os.Stat(realQEMU); err != nil {
		t.Skipf("needs %s: %v", realQEMU, err)
	}
	dir := t.TempDir()
	// Commas in paths check the escaping: QEMU would split an unescaped one
	// and fail to find the directory or write the wrong file.
	kernel := filepath.Join(dir, "vmlinux,0")
	if err := os.WriteFile(kernel, make([]byte, 8192), 0o644); err != nil {
		t.Fatal(err)
	}
	shared := filepath.Join(dir, "shared,dir")
	if err := os.Mkdir(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	console := filepath.Join(dir, "console,log")
	qmpListener := listenUnix(t, filepath.Join(dir, "qmp.sock"))
	agentListener := listenUnix(t, filepath.Join(dir, "agent.sock"))
	config := &Config{
		Binary:     realQEMU,
		Name:       "argtest",
		Kernel:     kernel,
		KernelArgs: "console=ttyS0,115200 quiet",
		CPUs:       2,
		MemoryMiB:  128,
		Accel:      AccelTCG,
		TBSizeMiB:  16,
		Devices: []Device{
			SerialConsoleToFile{Path: console},
			QMPClient{SocketPath: qmpListener.Addr().String()},
			VirtioSerialPort{ID: "agent", SocketPath: agentListener.Addr().String(), Name: "org.husk.agent.0"},
			Virtio9P{ID: "shared", Path: shared, Tag: "husk-shared", ReadOnly: true},
			VirtioRNG{ID: "rng0"},
		},
	}
	vm := startQEMU(t, config, qmpListener, "-S")
	// QEMU connected the agent port during start-up, before any guest code.
	acceptFrom(t, agentListener, vm, 5*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	execute := func(command string, arguments any, result any) {
		t.Helper()
		raw, err := vm.qmp.Execute(ctx, command, arguments)
		if err != nil {
			t.Fatalf("%s: %v", command, err)
		}
		if err := json.Unmarshal(raw, result); err != nil {
			t.Fatalf("%s returned %s: %v", command, raw, err)
		}
	}

	var status struct{ Status string }
	execute("query-status", nil, &status)
	if status.Status != "prelaunch" {
		t.Errorf("status %q, want prelaunch (-S)", status.Status)
	}
	var name struct{ Name string }
	execute("query-name", nil, &name)
	if name.Name != "sandbox-argtest" {
		t.Errorf("name %q, want sandbox-argtest", name.Name)
	}
	// -kernel and -append reach QEMU unescaped.
	for property, want := range map[string]string{"kernel": kernel, "append": config.KernelArgs} {
		var got string
		execute("qom-get", map[string]string{"path": "/machine", "property": property}, &got)
		if got != want {
			t.Errorf("machine %s = %q, want %q", property, got, want)
		}
	}
	var chardevs []struct{ Label string }
	execute("query-chardev", nil, &chardevs)
	var labels []string
	for _, chardev := range chardevs {
		labels = append(labels, chardev.Label)
	}
	for _, want := range []string{"console", "qmp", "agent"} {
		if !strings.Contains(" "+strings.Join(labels, " ")+" ", " "+want+" ") {
			t.Errorf("chardev %q missing from %v", want, labels)
		}
	}
	if _, err := vm.qmp.Execute(ctx, "qom-list", map[string]string{"path": "/machine/peripheral/agent-bus"}); err != nil {
		t.Errorf("virtio-serial bus device: %v", err)
	}
	if _, err := os.Stat(console); err != nil {
		t.Errorf("console file: %v", err)
	}

	if err := vm.qmp.Quit(ctx); err != nil {
		t.Fatalf("quit: %v", err)
	}
	vm.wait(t, 10*time.Second)
}

// TestBootKernel boots a real guest kernel under TCG with a 9p root holding
// a small Go /init, and checks the console, the virtio-serial port in both
// directions, the virtio RNG and that a guest reboot makes QEMU exit. It
// needs a kernel built by scripts/build-kernel.sh, named by HUSK_TEST_KERNEL,
// and takes several seconds under TCG.
func TestBootKernel(t *testing.T) {
	kernel := os.Getenv("HUSK_TEST_KERNEL")
	if kernel == "" {
		t.Skip("set HUSK_TEST_KERNEL to a vmlinux from scripts/build-kernel.sh to boot a guest")
	}
	if _, err := os.Stat(realQEMU); err != nil {
		t.Skipf("needs %s: %v", realQEMU, err)
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("needs the go tool to build the guest's init: %v", err)
	}
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	for _, sub := range []string{"dev", "sys"} {
		if err := os.MkdirAll(filepath.Join(root, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	build := exec.Command(goTool, "build", "-o", filepath.Join(root, "init"), "./testdata/bootinit")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building init: %v\n%s", err, out)
	}

	console := filepath.Join(dir, "console.log")
	qmpListener := listenUnix(t, filepath.Join(dir, "qmp.sock"))
	portListener := listenUnix(t, filepath.Join(dir, "port.sock"))
	config := &Config{
		Binary: realQEMU,
		Name:   "boottest",
		Kernel: kernel,
		// reboot=t: microvm has no keyboard controller or ACPI to reset
		// through, so the guest resets by triple fault.
		KernelArgs: "console=ttyS0 reboot=t panic=-1 root=husk-root rootfstype=9p rootflags=trans=virtio,version=9p2000.L ro init=/init",
		CPUs:       2,
		MemoryMiB:  256,
		Accel:      AccelTCG,
		Devices: []Device{
			SerialConsoleToFile{Path: console},
			QMPClient{SocketPath: qmpListener.Addr().String()},
			VirtioSerialPort{ID: "test", SocketPath: portListener.Addr().String(), Name: "org.husk.test.0"},
			Virtio9P{ID: "root", Path: root, Tag: "husk-root", ReadOnly: true},
			VirtioRNG{ID: "rng0"},
		},
	}
	vm := startQEMU(t, config, qmpListener)
	port := acceptFrom(t, portListener, vm, 5*time.Second)
	dumpConsole := func() {
		log, _ := os.ReadFile(console)
		t.Logf("guest console:\n%s", log)
	}

	port.SetDeadline(time.Now().Add(90 * time.Second))
	line, err := bufio.NewReader(port).ReadString('\n')
	if err != nil {
		dumpConsole()
		t.Fatalf("reading the guest's line: %v", err)
	}
	if want := "guest up rng=virtio_rng.0\n"; line != want {
		dumpConsole()
		t.Fatalf("guest said %q, want %q", line, want)
	}
	if _, err := port.Write([]byte("ok\n")); err != nil {
		t.Fatalf("answering the guest: %v", err)
	}
	vm.wait(t, 30*time.Second)
	if log, err := os.ReadFile(console); err != nil || !bytes.Contains(log, []byte("Linux version")) {
		t.Errorf("console log lacks the kernel banner (read error: %v)", err)
		dumpConsole()
	}
}
