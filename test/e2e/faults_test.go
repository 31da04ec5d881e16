package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// sandboxPIDs reads the daemon's and QEMU's PIDs from the state file.
func (e *env) sandboxPIDs(id string) (daemon, qemu int) {
	e.t.Helper()
	data, err := os.ReadFile(filepath.Join(e.root, "state", id, "state.json"))
	if err != nil {
		e.t.Fatal(err)
	}
	var st struct {
		Daemon struct{ PID int } `json:"daemon"`
		QEMU   struct{ PID int } `json:"qemu"`
	}
	if err := json.Unmarshal(data, &st); err != nil {
		e.t.Fatal(err)
	}
	if st.Daemon.PID <= 0 || st.QEMU.PID <= 0 {
		e.t.Fatalf("state names no daemon or QEMU: %s", data)
	}
	return st.Daemon.PID, st.QEMU.PID
}

// reapStandIns makes this test the subreaper of the stand-ins it creates,
// as containerd's shim is, so that their exit statuses can be read.
func reapStandIns(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) })
}

func waitExitStatus(t *testing.T, pid int) int {
	t.Helper()
	done := make(chan unix.WaitStatus, 1)
	go func() {
		var ws unix.WaitStatus
		_, _ = unix.Wait4(pid, &ws, 0, nil)
		done <- ws
	}()
	select {
	case ws := <-done:
		if ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ws.ExitStatus()
	case <-time.After(30 * time.Second):
		t.Fatalf("stand-in %d did not exit", pid)
		return -1
	}
}

// TestHostProcessKilled: whichever host process of a running sandbox is
// killed (QEMU, the daemon, the stand-in), or when the host's end of the
// agent channel is shut, callers waiting on the stand-in see 137, the
// container reads stopped, and delete cleans everything.
func TestHostProcessKilled(t *testing.T) {
	kill := func(pick func(standIn, daemon, qemu int) int) func(*testing.T, int, int, int) {
		return func(t *testing.T, standIn, daemon, qemu int) {
			if err := syscall.Kill(pick(standIn, daemon, qemu), syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, tc := range []struct {
		fault    string
		netMode  string // how the sandbox joins the test's network namespace
		qemuDies bool   // before delete
		inflict  func(t *testing.T, standIn, daemon, qemu int)
	}{
		{"qemu", "tc", true, kill(func(_, _, qemu int) int { return qemu })},
		// A killed daemon never undoes its network: delete --force does.
		{"daemon", "tc", true, kill(func(_, daemon, _ int) int { return daemon })},
		{"daemon-macvtap", "macvtap", true, kill(func(_, daemon, _ int) int { return daemon })},
		{"stand-in", "tc", false, kill(func(standIn, _, _ int) int { return standIn })},
		// The guest can no longer be reached: it ends.
		{"agent-channel", "tc", true, func(t *testing.T, _, daemon, qemu int) { severAgentChannel(t, daemon, qemu) }},
	} {
		t.Run(tc.fault, func(t *testing.T) {
			f := newNetFixture(t) // before the env: its leak check runs after the env's clean-up
			e := newEnv(t)
			e.writeConfig(fmt.Sprintf("[network]\nmode = %q\n", tc.netMode))
			reapStandIns(t)
			id := e.id()
			standIn := e.createWith(id, inNamespace(f.a))
			e.start(id)
			if !f.joined() {
				t.Fatalf("the sandbox did not join %s", f.a)
			}
			daemon, qemu := e.sandboxPIDs(id)
			tc.inflict(t, standIn, daemon, qemu)
			if status := waitExitStatus(t, standIn); status != 137 {
				t.Fatalf("stand-in exit status %d, want 137", status)
			}
			if tc.qemuDies {
				waitFor(t, "QEMU to be gone", func() bool { return !processAlive(qemu) })
			}
			e.waitStopped(id)
			e.mustRun("delete", "--force", id)
			if left := f.leftovers(); left != "" {
				t.Errorf("left in the network namespace after delete --force:\n%s", left)
			}
		})
	}
}

func TestCreateKilledHalfway(t *testing.T) {
	e := newEnv(t)
	id := e.id()
	b := e.bundle(nil, "sleep", "600")
	cmd := e.command("create", "--bundle", b, id)
	devnull, _ := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	defer devnull.Close()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, devnull, devnull
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Kill it while the guest boots.
	waitFor(t, "the state directory", func() bool {
		_, err := os.Stat(filepath.Join(e.root, "state", id, "state.json"))
		return err == nil
	})
	time.Sleep(300 * time.Millisecond)
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	r := e.run("", "list")
	if !strings.Contains(r.stdout, id) {
		t.Fatalf("half-created container not listed: %q", r.stdout)
	}
	if r := e.run("", "delete", "--force", id); r.status != 0 {
		t.Fatalf("delete --force: %d %q", r.status, r.stderr)
	}
}

// noPIDNamespace removes the container's PID namespace, so that it shares
// the guest's and can reach the agent.
func noPIDNamespace(s *specs.Spec) {
	var kept []specs.LinuxNamespace
	for _, ns := range s.Linux.Namespaces {
		if ns.Type != specs.PIDNamespace {
			kept = append(kept, ns)
		}
	}
	s.Linux.Namespaces = kept
}

// guestDeaths are the ways a container kills its guest in the fault tests:
// as root sharing the guest's PID namespace it crashes the agent (PID 1),
// so the guest kernel panics; with a writable /proc/sysrq-trigger it
// panics the kernel while the agent serves. panic is what the kernel says.
var guestDeaths = []struct {
	fault  string
	edit   func(*specs.Spec)
	script string
	panic  string
}{
	{"agent-crash", func(s *specs.Spec) {
		noPIDNamespace(s)
		s.Process.Capabilities.Bounding = append(s.Process.Capabilities.Bounding, "CAP_KILL")
	}, "sleep 0.5; kill -SEGV 1; sleep 600", "Attempted to kill init"},
	{"kernel-panic", writableSysrqTrigger, "sleep 0.5; echo c > /proc/sysrq-trigger; sleep 600", "Kernel panic - not syncing: sysrq triggered crash"},
}

// TestGuestDies: the guest dies under a running container. QEMU exits, the
// waiter gets 137, the container reads stopped, delete --force removes
// everything, and the guest's console log, with the panic, is kept.
func TestGuestDies(t *testing.T) {
	for _, d := range guestDeaths {
		t.Run(d.fault, func(t *testing.T) {
			e := newEnv(t)
			reapStandIns(t)
			id := e.id()
			t.Cleanup(func() { os.Remove(filepath.Join(keptLogDir, id+".console.log")) })
			standIn := e.createWith(id, d.edit, "sh", "-c", d.script)
			_, qemu := e.sandboxPIDs(id)
			e.mustRun("start", id)
			if status := waitExitStatus(t, standIn); status != 137 {
				t.Fatalf("stand-in exit status %d, want 137", status)
			}
			waitFor(t, "QEMU to exit after the guest died", func() bool { return !processAlive(qemu) })
			if status, _ := e.state(id); status != "stopped" {
				t.Fatalf("state after the guest died: %s", status)
			}
			e.mustRun("delete", "--force", id)
			checkKeptConsoleLog(t, id, d.panic)
		})
	}
}

// TestForcedDeleteIsNoCrash: delete --force of a running container ends
// its guest on purpose, whether or not the container's exit arrives before
// the guest powers off: no console log is kept as if the guest had
// crashed.
func TestForcedDeleteIsNoCrash(t *testing.T) {
	e := newEnv(t)
	for i := 0; i < 3; i++ {
		id := e.id()
		kept := filepath.Join(keptLogDir, id+".console.log")
		t.Cleanup(func() { os.Remove(kept) })
		e.create(id)
		e.start(id)
		e.mustRun("delete", "--force", id)
		if _, err := os.Stat(kept); err == nil {
			t.Errorf("delete --force of %s kept its console log as a crash's", id)
		}
	}
}

// checkKeptConsoleLog checks that the console log of a guest that ended
// under a running container was kept, past delete, with want in it.
func checkKeptConsoleLog(t *testing.T, id, want string) {
	t.Helper()
	kept := filepath.Join(keptLogDir, id+".console.log")
	data, err := os.ReadFile(kept)
	if err != nil {
		t.Fatalf("the guest's console log was not kept: %v", err)
	}
	if !strings.Contains(string(data), want) {
		t.Errorf("the kept console log lacks %q:\n%s", want, data)
	}
}

// writableSysrqTrigger takes /proc/sysrq-trigger out of the spec's
// read-only and masked paths, where the default spec puts it.
func writableSysrqTrigger(s *specs.Spec) {
	without := func(paths []string) []string {
		var kept []string
		for _, p := range paths {
			if p != "/proc/sysrq-trigger" {
				kept = append(kept, p)
			}
		}
		return kept
	}
	s.Linux.ReadonlyPaths = without(s.Linux.ReadonlyPaths)
	s.Linux.MaskedPaths = without(s.Linux.MaskedPaths)
}

// TestStateRootFull: with no space left in the state root, create fails with
// a clear error and leaves nothing behind.
func TestStateRootFull(t *testing.T) {
	e := newEnv(t)
	root := e.smallStateRoot("64k")
	filler, _ := os.Create(filepath.Join(root, "filler"))
	_, _ = filler.Write(make([]byte, 128<<10))
	filler.Close()
	b := e.bundle(nil, "true")
	id := e.id()
	r := e.run("", "run", "--bundle", b, id)
	if r.status != 1 || !strings.Contains(r.stderr, "no space left") {
		t.Fatalf("status %d, stderr %q", r.status, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(root, id)); err == nil {
		t.Fatal("state directory left behind")
	}
}

// smallStateRoot mounts a tmpfs of size as the env's state root, until
// the test ends; it is unmounted before the env's leak check, which would
// otherwise count it.
func (e *env) smallStateRoot(size string) string {
	e.t.Helper()
	root := filepath.Join(e.root, "state")
	if err := os.MkdirAll(root, 0o711); err != nil {
		e.t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", root, "tmpfs", 0, "size="+size); err != nil {
		skipUnlessRequired(e.t, "cannot mount a small tmpfs: %v", err)
	}
	e.t.Cleanup(func() { unix.Unmount(root, unix.MNT_DETACH) })
	return root
}

// TestStateRootFillsUnderARunningContainer: the state root runs out of
// space while a container runs. Its end is still reported: the waiter gets
// the exit status, the container reads stopped, and delete --force removes
// everything.
func TestStateRootFillsUnderARunningContainer(t *testing.T) {
	e := newEnv(t)
	root := e.smallStateRoot("8m")
	reapStandIns(t)
	id := e.id()
	standIn := e.create(id)
	e.start(id)
	filler, err := os.Create(filepath.Join(root, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	for {
		if _, err := filler.Write(chunk); err != nil {
			if !errors.Is(err, unix.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	filler.Close()
	e.mustRun("kill", id, "KILL")
	if status := waitExitStatus(t, standIn); status != 137 {
		t.Fatalf("stand-in exit status %d, want 137", status)
	}
	e.waitStopped(id)
	if r := e.run("", "delete", "--force", id); r.status != 0 {
		t.Fatalf("delete --force with the state root full: status %d, stderr %q", r.status, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(root, id)); err == nil {
		t.Error("state directory left behind")
	}
}

// severAgentChannel shuts down the daemon's end of the agent channel from
// outside: it takes a copy of the daemon's socket with pidfd_getfd(2) and
// shuts the socket down, which acts on the daemon's end itself. The socket
// is listed in QEMU's network namespace, the connecting side's.
func severAgentChannel(t *testing.T, daemon, qemu int) {
	t.Helper()
	unixSockets, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/unix", qemu))
	if err != nil {
		t.Fatal(err)
	}
	agentInodes := map[string]bool{}
	for _, line := range strings.Split(string(unixSockets), "\n") {
		f := strings.Fields(line)
		if len(f) == 8 && filepath.Base(f[7]) == "agent.sock" {
			agentInodes[f[6]] = true
		}
	}
	fdDir := filepath.Join("/proc", strconv.Itoa(daemon), "fd")
	entries, err := os.ReadDir(fdDir)
	if err != nil {
		t.Fatal(err)
	}
	pidfd, err := unix.PidfdOpen(daemon, 0)
	if err != nil {
		skipUnlessRequired(t, "pidfd_open: %v", err)
	}
	defer unix.Close(pidfd)
	for _, ent := range entries {
		link, _ := os.Readlink(filepath.Join(fdDir, ent.Name()))
		inode := strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")
		if !agentInodes[inode] {
			continue
		}
		target, _ := strconv.Atoi(ent.Name())
		fd, err := unix.PidfdGetfd(pidfd, target, 0)
		if err != nil {
			skipUnlessRequired(t, "pidfd_getfd: %v", err)
		}
		defer unix.Close(fd)
		if err := unix.Shutdown(fd, unix.SHUT_RDWR); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatalf("no agent channel among the daemon's descriptors")
}
