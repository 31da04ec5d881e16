package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/husk-runtime/husk/internal/config"
)

// poolSlot is one line of `husk pool status --format json`.
type poolSlot struct {
	Slot    string `json:"slot"`
	Status  string `json:"status"`
	Daemon  int    `json:"daemon_pid"`
	QEMU    int    `json:"qemu_pid"`
	Current bool   `json:"current"`
}

// newPoolEnv is a test environment whose configuration keeps a warm pool of
// size sandboxes; the pool is drained when the test ends, before the leak
// check.
func newPoolEnv(t *testing.T, size int) *env {
	e := newEnv(t)
	e.writeConfig(fmt.Sprintf("[pool]\nsize = %d\n", size))
	t.Cleanup(func() {
		waitForPoolFills(t, e.root)
		if r := e.run("", "pool", "drain"); r.status != 0 {
			t.Errorf("pool drain: status %d, stderr %q", r.status, r.stderr)
		}
	})
	return e
}

// waitForPoolFills waits until no `husk pool fill` that a create started in
// the background for the state root (under dir) is running, so that a drain
// after it is the last word.
func waitForPoolFills(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, _ := exec.Command("pgrep", "-f", dir+".* pool fill").Output()
		if len(strings.TrimSpace(string(out))) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("a pool fill for %s still runs: pids %s", dir, out)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *env) poolStatus() []poolSlot {
	e.t.Helper()
	r := e.run("", "pool", "status", "--format", "json")
	if r.status != 0 {
		e.t.Fatalf("pool status: status %d, stderr %q", r.status, r.stderr)
	}
	var slots []poolSlot
	if err := json.Unmarshal([]byte(r.stdout), &slots); err != nil {
		e.t.Fatalf("pool status: %v: %q", err, r.stdout)
	}
	return slots
}

func (e *env) fillPool() []poolSlot {
	e.t.Helper()
	if r := e.run("", "pool", "fill", "--wait"); r.status != 0 {
		e.t.Fatalf("pool fill: status %d, stderr %q", r.status, r.stderr)
	}
	return e.poolStatus()
}

// containerQEMU is the QEMU pid in a container's state file.
func (e *env) containerQEMU(id string) int {
	e.t.Helper()
	data, err := os.ReadFile(filepath.Join(e.root, "state", id, "state.json"))
	if err != nil {
		e.t.Fatal(err)
	}
	var st struct {
		QEMU struct {
			PID int `json:"pid"`
		} `json:"qemu"`
	}
	if err := json.Unmarshal(data, &st); err != nil {
		e.t.Fatal(err)
	}
	return st.QEMU.PID
}

// createStartWait creates a container running args in a bundle changed by
// edit, reports its QEMU, starts it and waits for it to exit (reading its
// state), then deletes it.
func (e *env) createStartWait(id string, edit func(*specs.Spec), args ...string) (qemu int) {
	e.t.Helper()
	e.createWith(id, edit, args...)
	qemu = e.containerQEMU(id)
	if r := e.run("", "start", id); r.status != 0 {
		e.t.Fatalf("start: status %d, stderr %q", r.status, r.stderr)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(e.run("", "state", id).stdout, `"stopped"`) {
		if time.Now().After(deadline) {
			e.t.Fatalf("%s did not stop", id)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if r := e.run("", "delete", id); r.status != 0 {
		e.t.Fatalf("delete: status %d, stderr %q", r.status, r.stderr)
	}
	return qemu
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// gone waits up to 10 s for a process to end; a run or delete that took a
// pooled sandbox ends its daemon and QEMU as it returns, not before.
func gone(pid int) bool {
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

// TestWarmPool: a filled pool holds a booted sandbox, warmed up by a
// throwaway container; a container takes it
// (its QEMU is the pooled one), runs with its own rootfs and output, and
// the pool is refilled in the background with a new sandbox.
func TestWarmPool(t *testing.T) {
	e := newPoolEnv(t, 1)
	slots := e.fillPool()
	if len(slots) != 1 || slots[0].Status != "ready" || !slots[0].Current || slots[0].QEMU == 0 {
		t.Fatalf("after fill: %+v, want one ready slot", slots)
	}
	pooled := slots[0]
	// The guest ran a throwaway container before the slot was offered.
	slotLog, err := os.ReadFile(filepath.Join(e.root, "state", "@pool", pooled.Slot, "daemon.log"))
	if err != nil || !strings.Contains(string(slotLog), `msg="guest warmed up"`) {
		t.Errorf("the pooled sandbox's log does not show the warm-up (err %v):\n%s", err, slotLog)
	}
	// Under TCG its QEMU has the pool's translation cache, larger than
	// other sandboxes' so that the real create does not flush it.
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pooled.QEMU))
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Split(string(cmdline), "\x00")
	if i := slices.Index(args, "-accel"); i >= 0 && i+1 < len(args) && strings.HasPrefix(args[i+1], "tcg") {
		want := fmt.Sprintf("tb-size=%d", config.Default().ForPool().Hypervisor.TCGTBSizeMiB)
		if !strings.Contains(args[i+1], want) {
			t.Errorf("the pooled QEMU's accelerator is %q, want %s", args[i+1], want)
		}
	} else {
		t.Logf("the pooled QEMU does not run under TCG (%q): no translation cache to check", args)
	}

	// husk run takes the pooled sandbox.
	r := e.run("", "run", "--bundle", e.bundle(nil, "sh", "-c", "echo from the pool; cat /proc/1/cmdline | tr '\\0' ' '"), e.id())
	if r.status != 0 || r.stdout != "from the pool\nsh -c echo from the pool; cat /proc/1/cmdline | tr '\\0' ' ' " {
		t.Fatalf("run: status %d, stdout %q, stderr %q", r.status, r.stdout, r.stderr)
	}
	if !gone(pooled.QEMU) || !gone(pooled.Daemon) {
		t.Errorf("the pooled sandbox (daemon %d, QEMU %d) outlived the run that took it", pooled.Daemon, pooled.QEMU)
	}

	// The run refilled the pool; a create takes that one.
	slots = e.fillPool()
	if len(slots) != 1 || slots[0].Slot == pooled.Slot {
		t.Fatalf("after the run: %+v, want one new slot", slots)
	}
	next := slots[0]
	// The warm-up container's name is free again in the guest, and
	// nothing of it is left there to clash with.
	id := "husk-warm-up"
	if qemu := e.createStartWait(id, nil, "true"); qemu != next.QEMU {
		t.Errorf("create got QEMU %d, the pooled sandbox's is %d", qemu, next.QEMU)
	}
	if _, err := os.Stat(filepath.Join(e.root, "state", id)); err == nil {
		t.Errorf("state of %s left after delete", id)
	}
}

// TestPoolRelativePaths: a --root and --config relative to the working
// directory, the root through a symbolic link (Docker's is under /var/run,
// a link to /run), reach the pooled daemons, which work elsewhere: the fill
// completes, the pooled sandbox stays (a daemon that took the link for
// another directory would end itself as claimed and never adopted once
// its grace ran out), and a run from the same directory takes it.
func TestPoolRelativePaths(t *testing.T) {
	e := newPoolEnv(t, 1)
	if err := os.Symlink(".", filepath.Join(e.root, "linked")); err != nil {
		t.Fatal(err)
	}
	relative := func(args ...string) result {
		cmd := exec.Command(huskBin, append([]string{"--root", "linked/state", "--config", filepath.Base(e.config)}, args...)...)
		cmd.Dir = e.root
		return runCommand(t, cmd, "")
	}
	if r := relative("pool", "fill", "--wait"); r.status != 0 {
		t.Fatalf("pool fill with relative paths: status %d, stderr %q", r.status, r.stderr)
	}
	slots := e.poolStatus()
	if len(slots) != 1 || slots[0].Status != "ready" {
		t.Fatalf("after the fill: %+v, want one ready slot", slots)
	}
	time.Sleep(12 * time.Second) // past the daemon's grace for an unadopted claim
	if now := e.poolStatus(); len(now) != 1 || now[0].Slot != slots[0].Slot || now[0].Status != "ready" {
		t.Fatalf("12 s after the fill: %+v, want %s still ready", now, slots[0].Slot)
	}
	r := relative("run", "--bundle", e.bundle(nil, "echo", "relative"), e.id())
	if r.status != 0 || r.stdout != "relative\n" {
		t.Fatalf("run with relative paths: status %d, stdout %q, stderr %q", r.status, r.stdout, r.stderr)
	}
	if !gone(slots[0].QEMU) {
		t.Errorf("the run did not take the pooled sandbox (its QEMU %d still runs)", slots[0].QEMU)
	}
}

// TestWarmPoolMisfits: a container whose VM would differ from a pooled one
// (a memory limit; a network namespace with an interface) boots its own,
// and the pooled sandbox stays ready; a namespace with loopback only takes
// the pooled one.
func TestWarmPoolMisfits(t *testing.T) {
	f := newNetFixture(t) // before the env: its leak check runs after the env's clean-up
	e := newPoolEnv(t, 1)
	pooled := e.fillPool()[0]
	limit := int64(64 << 20)
	withLimit := func(s *specs.Spec) {
		s.Linux.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}
	}
	if qemu := e.createStartWait(e.id(), withLimit, "true"); qemu == pooled.QEMU {
		t.Errorf("a container with a memory limit took the pooled sandbox")
	}

	if qemu := e.createStartWait(e.id(), inNamespace(f.a), "true"); qemu == pooled.QEMU {
		t.Errorf("a container with a veth in its namespace took the pooled sandbox")
	}
	if slots := e.poolStatus(); len(slots) != 1 || slots[0].Slot != pooled.Slot || slots[0].Status != "ready" {
		t.Fatalf("pool after two misfits: %+v, want %s still ready", slots, pooled.Slot)
	}

	lonely := "husk-e2e-lo-" + filepath.Base(e.root)
	if out, err := exec.Command("ip", "netns", "add", lonely).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", lonely).Run() })
	r := e.run("", "run", "--bundle", e.bundle(inNamespace(lonely), "sh", "-c", "ls /sys/class/net"), e.id())
	if r.status != 0 || r.stdout != "lo\n" {
		t.Fatalf("run in a loopback-only namespace: status %d, stdout %q, stderr %q", r.status, r.stdout, r.stderr)
	}
	if !gone(pooled.QEMU) {
		t.Errorf("a container in a loopback-only namespace did not take the pooled sandbox")
	}
}

// TestWarmPoolFaultsAndChanges: a pooled sandbox whose QEMU dies leaves the
// pool; one whose daemon is killed is skipped and then cleared; a change of
// configuration replaces the pooled sandboxes booted with the old one.
func TestWarmPoolFaultsAndChanges(t *testing.T) {
	e := newPoolEnv(t, 1)
	pooled := e.fillPool()[0]
	if err := syscall.Kill(pooled.QEMU, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(e.poolStatus()) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the slot of a killed pooled QEMU is still there: %+v", e.poolStatus())
		}
		time.Sleep(100 * time.Millisecond)
	}

	pooled = e.fillPool()[0]
	if err := syscall.Kill(pooled.Daemon, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !gone(pooled.QEMU) {
		t.Fatalf("QEMU %d outlived its pooled daemon", pooled.QEMU)
	}
	r := e.run("", "run", "--bundle", e.bundle(nil, "echo", "booted"), e.id())
	if r.status != 0 || r.stdout != "booted\n" {
		t.Fatalf("run with a dead pooled sandbox: status %d, stdout %q, stderr %q", r.status, r.stdout, r.stderr)
	}
	for _, s := range e.fillPool() {
		if s.Slot == pooled.Slot {
			t.Errorf("the dead slot %s is still in the pool", s.Slot)
		}
	}

	// A create killed between its claim (the slot renamed to the
	// container's directory) and the adopt: the pooled sandbox notices,
	// ends, and removes the directory, so the id is free again.
	claimed := e.fillPool()[0]
	orphan := filepath.Join(e.root, "state", e.id())
	if err := os.Rename(filepath.Join(e.root, "state", "@pool", claimed.Slot), orphan); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(30 * time.Second)
	for syscall.Kill(claimed.Daemon, 0) == nil || fileExists(orphan) {
		if time.Now().After(deadline) {
			t.Fatalf("a claimed, never adopted pooled sandbox (daemon %d) is still there", claimed.Daemon)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !gone(claimed.QEMU) {
		t.Errorf("QEMU %d of the orphaned claim still runs", claimed.QEMU)
	}

	old := e.fillPool()[0]
	// (writeConfig's extra TOML follows the [hypervisor] table's lines.)
	e.writeConfig("memory_mib = 320\n[pool]\nsize = 1\n")
	if s := e.poolStatus(); len(s) != 1 || s[0].Current {
		t.Fatalf("after a configuration change: %+v, want the old slot, not current", s)
	}
	slots := e.fillPool()
	if len(slots) != 1 || slots[0].Slot == old.Slot || !slots[0].Current {
		t.Fatalf("after fill with a new configuration: %+v", slots)
	}
	if !gone(old.QEMU) {
		t.Errorf("the old pooled QEMU %d is still running", old.QEMU)
	}
	r = e.run("", "run", "--bundle", e.bundle(nil, "true"), e.id())
	if r.status != 0 {
		t.Fatalf("run: status %d, stderr %q", r.status, r.stderr)
	}
	if !gone(slots[0].QEMU) {
		t.Errorf("the run did not take the sandbox pooled with the new configuration")
	}
}

// TestPoolFillFailure: when the sandboxes a `pool fill --wait` starts fail
// (here a guest image whose /init is not husk's agent), the fill says so
// with the failure and the kept log, as soon as one fails rather than at
// its timeout, and leaves no slot behind (nor QEMU or daemon: the env's
// leak check).
func TestPoolFillFailure(t *testing.T) {
	e := newEnv(t)
	initrd := filepath.Join(e.root, "not-husk.img")
	if out, err := exec.Command(filepath.Join(buildDir, "husk-mkinitrd"), "-agent", "/bin/busybox", "-o", initrd).CombinedOutput(); err != nil {
		t.Fatalf("husk-mkinitrd: %v: %s", err, out)
	}
	config := fmt.Sprintf("[hypervisor]\nkernel = %q\ninitrd = %q\n[agent]\nboot_timeout = \"3s\"\n[pool]\nsize = 1\n",
		filepath.Join(buildDir, "vmlinux"), initrd)
	if err := os.WriteFile(e.config, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	r := e.run("", "pool", "fill", "--wait")
	if r.status == 0 || !strings.Contains(r.stderr, "a pooled sandbox failed") || !strings.Contains(r.stderr, "did not come up within 3s") {
		t.Fatalf("pool fill: status %d, stderr %q", r.status, r.stderr)
	}
	_, kept, ok := strings.Cut(strings.TrimSpace(r.stderr), "(its log: ")
	kept = strings.TrimSuffix(kept, ")")
	if !ok || !strings.HasPrefix(kept, "/var/log/husk/pool-slot-") {
		t.Fatalf("no kept log named in %q", r.stderr)
	}
	t.Cleanup(func() {
		os.Remove(kept)
		os.Remove(strings.TrimSuffix(kept, ".daemon.log") + ".console.log")
	})
	if data, err := os.ReadFile(kept); err != nil || !strings.Contains(string(data), "booting a pooled sandbox") {
		t.Errorf("kept log %s (err %v):\n%s", kept, err, data)
	}
	if console := strings.TrimSuffix(kept, ".daemon.log") + ".console.log"; !fileExists(console) {
		t.Errorf("the failed guest's console log %s was not kept", console)
	}
	waitForPoolFills(t, e.root)
	if slots := e.poolStatus(); len(slots) != 0 {
		t.Errorf("after the failure the pool holds %+v", slots)
	}
}

// TestPoolBadInput: filling a pool that the configuration turns off, and a
// size out of range, are errors that name pool.size.
func TestPoolBadInput(t *testing.T) {
	e := newEnv(t)
	if r := e.run("", "pool", "fill"); r.status == 0 || !strings.Contains(r.stderr, "pool.size") {
		t.Errorf("pool fill with the pool off: status %d, stderr %q", r.status, r.stderr)
	}
	e.writeConfig("[pool]\nsize = 65\n")
	if r := e.run("", "pool", "fill"); r.status == 0 || !strings.Contains(r.stderr, "pool.size") {
		t.Errorf("pool fill with size 65: status %d, stderr %q", r.status, r.stderr)
	}
}

// TestDockerWarmPool: Docker with husk-pool (husk with pool.size = 1, see
// scripts/start-services.sh): `docker run --network none` takes the pooled
// sandbox, whose QEMU is gone after the run, and the pool is full again
// afterwards; draining it leaves nothing of this dockerd's sandboxes.
func TestDockerWarmPool(t *testing.T) {
	d := newDockerEnv(t)
	execRoot := os.Getenv("HUSK_TEST_DOCKER_EXEC_ROOT")
	if r := d.run("", "info", "--format", "{{json .Runtimes}}"); execRoot == "" || !strings.Contains(r.stdout, "husk-pool") {
		skipUnlessRequired(t, "dockerd has no husk-pool runtime: run scripts/start-services.sh (make test does)")
	}
	// husk's state root under Docker: the one holding the pool once the
	// first run has filled it.
	poolRoot := func() string {
		matches, _ := filepath.Glob(filepath.Join(execRoot, "runtime-runc", "*", "@pool"))
		if len(matches) != 1 {
			return ""
		}
		return filepath.Dir(matches[0])
	}
	husk := func(root string, args ...string) result {
		full := append([]string{"--root", root, "--config", filepath.Join(filepath.Dir(execRoot), "husk-pool.toml")}, args...)
		return runCommand(t, exec.Command(huskBin, full...), "")
	}
	t.Cleanup(func() {
		if root := poolRoot(); root != "" {
			waitForPoolFills(t, root)
			if r := husk(root, "pool", "drain"); r.status != 0 {
				t.Errorf("pool drain: status %d, stderr %q", r.status, r.stderr)
			}
		}
	})
	run := func(want string) {
		t.Helper()
		r := d.run("", "run", "--rm", "--runtime", "husk-pool", "--network", "none", "busybox:local", "echo", want)
		if r.status != 0 || r.stdout != want+"\n" {
			t.Fatalf("docker run: status %d, stdout %q, stderr %q", r.status, r.stdout, r.stderr)
		}
	}
	run("first") // boots its own sandbox and fills the pool
	root := poolRoot()
	if root == "" {
		t.Fatalf("no warm pool under %s after a run with husk-pool", execRoot)
	}
	if r := husk(root, "pool", "fill", "--wait"); r.status != 0 {
		t.Fatalf("pool fill: status %d, stderr %q", r.status, r.stderr)
	}
	var slots []poolSlot
	if r := husk(root, "pool", "status", "--format", "json"); json.Unmarshal([]byte(r.stdout), &slots) != nil || len(slots) != 1 || slots[0].Status != "ready" {
		t.Fatalf("pool status: %q, %q", r.stdout, r.stderr)
	}
	run("second")
	if !gone(slots[0].QEMU) {
		t.Errorf("docker run did not take the pooled sandbox (QEMU %d still runs)", slots[0].QEMU)
	}
	if r := husk(root, "pool", "fill", "--wait"); r.status != 0 {
		t.Fatalf("pool fill after the run: status %d, stderr %q", r.status, r.stderr)
	}
}
