package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/husk-runtime/husk/internal/oci"
)

// ctrImage is the busybox image scripts/start-services.sh imports into the
// test namespace of containerd.
const ctrImage = "docker.io/library/busybox:local"

// ctrEnv drives Debian's containerd with its ctr, through the husk shim.
type ctrEnv struct {
	t         *testing.T
	namespace string
}

var ctrSeq atomic.Int64

func newCtrEnv(t *testing.T) *ctrEnv {
	t.Helper()
	requireGuest(t)
	ns := os.Getenv("HUSK_TEST_CTR_NAMESPACE")
	if ns == "" {
		skipUnlessRequired(t, "HUSK_TEST_CTR_NAMESPACE is not set: run scripts/start-services.sh (make test does)")
	}
	if _, err := exec.LookPath("ctr"); err != nil {
		skipUnlessRequired(t, "needs ctr (apt-get install containerd)")
	}
	c := &ctrEnv{t: t, namespace: ns}
	if r := c.run("", "images", "check", "name=="+ctrImage); r.status != 0 || !strings.Contains(r.stdout, "complete") {
		skipUnlessRequired(t, "containerd has no %s in namespace %s: %s %s", ctrImage, ns, r.stdout, r.stderr)
	}
	// Registered first, so it runs last: after the test's own clean-up,
	// containerd holds no more descriptors than before it.
	baseline := fdBaselines(t, "containerd")
	t.Cleanup(func() { baseline.check(t) })
	return c
}

// id returns a fresh container id whose leftovers are checked at cleanup.
func (c *ctrEnv) id() string {
	id := fmt.Sprintf("husk-e2e-%d-%d", os.Getpid(), ctrSeq.Add(1))
	c.t.Cleanup(func() { c.checkNoLeaks(id) })
	return id
}

func (c *ctrEnv) command(args ...string) *exec.Cmd {
	return exec.Command("ctr", append([]string{"-n", c.namespace}, args...)...)
}

func (c *ctrEnv) run(stdin string, args ...string) result {
	c.t.Helper()
	return runCommand(c.t, c.command(args...), stdin)
}

func (c *ctrEnv) mustRun(args ...string) string {
	c.t.Helper()
	r := c.run("", args...)
	if r.status != 0 {
		c.t.Fatalf("ctr %v: status %d, stdout %q, stderr %q", args, r.status, r.stdout, r.stderr)
	}
	return strings.TrimSpace(r.stdout)
}

// taskStatus is the STATUS column of `ctr task ls` for id.
func (c *ctrEnv) taskStatus(id string) string {
	c.t.Helper()
	for _, line := range strings.Split(c.mustRun("task", "ls"), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == id {
			return f[2]
		}
	}
	return ""
}

// waitStatus waits for a task to reach a status.
func (c *ctrEnv) waitStatus(id, want string) {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := c.taskStatus(id)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("task %s: status %q, want %q", id, got, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// remove deletes a container and its task, whatever state they are in.
func (c *ctrEnv) remove(id string) {
	c.run("", "task", "kill", "-s", "SIGKILL", id)
	c.run("", "task", "delete", "-f", id)
	c.run("", "container", "delete", id)
}

// checkNoLeaks fails if anything of container id is left: a shim or QEMU
// process, the sandbox's state directory, a mount of its bundle, or the
// container in containerd.
func (c *ctrEnv) checkNoLeaks(id string) {
	t := c.t
	c.remove(id)
	stateDir := filepath.Join("/run/husk/containerd", c.namespace, id)
	bundle := filepath.Join("/run/containerd/io.containerd.runtime.v2.task", c.namespace, id)
	deadline := time.Now().Add(10 * time.Second)
	var leaks []string
	for {
		leaks = leaks[:0]
		out, _ := exec.Command("ps", "-eo", "pid,args").Output()
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, "containerd-shim-husk-v2") && strings.Contains(line, "-id "+id+" ") ||
				strings.Contains(line, "qemu-system") && strings.Contains(line, stateDir+"/") {
				leaks = append(leaks, "process: "+strings.TrimSpace(line))
			}
		}
		if _, err := os.Stat(stateDir); err == nil {
			leaks = append(leaks, "state directory: "+stateDir)
		}
		mounts, _ := os.ReadFile("/proc/self/mounts")
		for _, line := range strings.Split(string(mounts), "\n") {
			if strings.Contains(line, bundle) || strings.Contains(line, stateDir) {
				leaks = append(leaks, "mount: "+line)
			}
		}
		if r := c.run("", "container", "ls", "-q"); strings.Contains("\n"+r.stdout, "\n"+id+"\n") {
			leaks = append(leaks, "containerd container: "+id)
		}
		if len(leaks) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, l := range leaks {
		t.Errorf("left behind: %s", l)
	}
}

// runFlags select the husk runtime.
var runFlags = []string{"run", "--runtime", "io.containerd.husk.v2"}

func TestCtrRun(t *testing.T) {
	c := newCtrEnv(t)
	run := append(runFlags, "--rm")
	if got := c.mustRun(append(run, ctrImage, c.id(), "echo", "hi")...); got != "hi" {
		t.Fatalf("echo: %q", got)
	}
	if r := c.run("", append(run, ctrImage, c.id(), "sh", "-c", "echo to-stderr >&2; exit 3")...); r.status != 3 || r.stderr != "to-stderr\n" {
		t.Fatalf("exit code and stderr: status %d, stderr %q", r.status, r.stderr)
	}
	if got := c.mustRun(append(run, ctrImage, c.id(), "uname", "-r")...); got == hostKernel() {
		t.Fatalf("container sees the host kernel %q", got)
	}
	if r := c.run("piped in\n", append(run, ctrImage, c.id(), "cat")...); r.stdout != "piped in\n" {
		t.Fatalf("stdin: %q %q", r.stdout, r.stderr)
	}
	got := c.mustRun(append(run, "--env", "FOO=bar", "--cwd", "/tmp", ctrImage, c.id(), "sh", "-c", "echo $FOO $(pwd)")...)
	if got != "bar /tmp" {
		t.Fatalf("env, cwd: %q", got)
	}
}

func TestCtrTerminal(t *testing.T) {
	c := newCtrEnv(t)
	if _, err := exec.LookPath("script"); err != nil {
		skipUnlessRequired(t, "needs script(1) from bsdutils for a pty")
	}
	id := c.id()
	cmd := exec.Command("script", "-qec", fmt.Sprintf("ctr -n %s run --runtime io.containerd.husk.v2 --rm -t %s %s sh -c 'tty; echo run-tty-ok'", c.namespace, ctrImage, id), "/dev/null")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ctr run -t: %v %q", err, out)
	}
	if !strings.Contains(string(out), "/dev/pts/") || !strings.Contains(string(out), "run-tty-ok") {
		t.Fatalf("no terminal in the container: %q", out)
	}

	// An exec with a terminal, into a running task; the size set on the
	// caller's terminal reaches it (ResizePty).
	id = c.id()
	c.mustRun(append(runFlags, "-d", ctrImage, id, "sleep", "600")...)
	c.waitStatus(id, "RUNNING")
	// ctr sends the size just after the start, so the process waits a moment.
	cmd = exec.Command("script", "-qec", fmt.Sprintf("stty rows 33 cols 77; ctr -n %s task exec -t --exec-id tty1 %s sh -c 'tty; sleep 1; stty size; echo exec-tty-ok'", c.namespace, id), "/dev/null")
	out, err = cmd.Output()
	if err != nil {
		t.Fatalf("ctr task exec -t: %v %q", err, out)
	}
	for _, want := range []string{"/dev/pts/", "33 77", "exec-tty-ok"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("exec -t output lacks %q: %q", want, out)
		}
	}
}

// events collects what `ctr events` prints while it runs.
type events struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []string
	done  chan struct{}
}

func (c *ctrEnv) watchEvents() *events {
	c.t.Helper()
	e := &events{cmd: c.command("events"), done: make(chan struct{})}
	out, err := e.cmd.StdoutPipe()
	if err != nil {
		c.t.Fatal(err)
	}
	if err := e.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	go func() {
		defer close(e.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			e.mu.Lock()
			e.lines = append(e.lines, sc.Text())
			e.mu.Unlock()
		}
	}()
	c.t.Cleanup(func() { e.cmd.Process.Kill(); e.cmd.Wait() })
	time.Sleep(200 * time.Millisecond) // subscribed before the first event
	return e
}

// waitFor waits until an event with topic for id has been seen.
func (e *events) waitFor(t *testing.T, topic, id string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		e.mu.Lock()
		for _, l := range e.lines {
			if strings.Contains(l, " "+topic+" ") && strings.Contains(l, id) {
				e.mu.Unlock()
				return
			}
		}
		e.mu.Unlock()
		time.Sleep(100 * time.Millisecond)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	t.Errorf("no %s event for %s; events: %q", topic, id, e.lines)
}

func TestCtrDetachedLifecycle(t *testing.T) {
	c := newCtrEnv(t)
	ev := c.watchEvents()
	id := c.id()
	// The background sleep keeps a second process in the container at every
	// moment, whatever point of its loop the shell is at.
	c.mustRun(append(runFlags, "-d", ctrImage, id, "sh", "-c", `trap "echo got TERM; exit 7" TERM; echo started; sleep 1000 & while true; do sleep 0.2; done`)...)
	c.waitStatus(id, "RUNNING")
	ev.waitFor(t, "/tasks/create", id)
	ev.waitFor(t, "/tasks/start", id)

	// ps: the guest's PIDs of the shell and its sleep.
	ps := strings.Split(c.mustRun("task", "ps", id), "\n")
	if len(ps) < 2 {
		t.Fatalf("task ps: %q", ps)
	}

	// exec: output and exit code come back, with its events.
	r := c.run("", "task", "exec", "--exec-id", "e1", id, "sh", "-c", "echo in-exec; exit 5")
	if r.status != 5 || r.stdout != "in-exec\n" {
		t.Fatalf("exec: status %d, stdout %q, stderr %q", r.status, r.stdout, r.stderr)
	}
	ev.waitFor(t, "/tasks/exec-added", id)
	ev.waitFor(t, "/tasks/exec-started", id)
	if got := c.mustRun("task", "exec", "--exec-id", "e2", id, "cat", "/proc/1/cmdline"); !strings.HasPrefix(got, "sh") {
		t.Fatalf("exec does not share the container's PID namespace: %q", got)
	}

	// metrics: real figures from the guest's cgroup.
	m := c.mustRun("task", "metrics", id)
	if v := metric(m, "memory.usage"); v == "" || v == "0" {
		t.Errorf("memory.usage = %q in\n%s", v, m)
	}
	if v := metric(m, "pids.current"); v != "2" && v != "3" {
		t.Errorf("pids.current = %q in\n%s", v, m)
	}
	if v := metric(m, "cpu.usage_usec"); v == "" || v == "0" {
		t.Errorf("cpu.usage_usec = %q in\n%s", v, m)
	}

	// pause and resume: frozen processes do not run.
	c.mustRun("task", "pause", id)
	c.waitStatus(id, "PAUSED")
	ev.waitFor(t, "/tasks/paused", id)
	c.mustRun("task", "resume", id)
	c.waitStatus(id, "RUNNING")
	ev.waitFor(t, "/tasks/resumed", id)

	// kill: TERM reaches the trap, and the exit status is the script's.
	c.mustRun("task", "kill", id)
	c.waitStatus(id, "STOPPED")
	ev.waitFor(t, "/tasks/exit", id)
	if r := c.run("", "task", "exec", "--exec-id", "e3", id, "true"); r.status == 0 {
		t.Errorf("exec into a stopped task succeeded")
	}
	if r := c.run("", "task", "delete", id); r.status != 0 || !strings.Contains(r.stderr, "exit code 7") {
		t.Errorf("task delete: status %d, stderr %q, want exit code 7 reported", r.status, r.stderr)
	}
	ev.waitFor(t, "/tasks/delete", id)
	c.mustRun("container", "delete", id)
}

// metric is a value from `ctr task metrics` output.
func metric(out, name string) string {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == name {
			return f[1]
		}
	}
	return ""
}

func TestCtrKillAll(t *testing.T) {
	c := newCtrEnv(t)
	id := c.id()
	// The shell handles USR1 and lives on; its children (a handler is not
	// inherited across exec) die of it.
	c.mustRun(append(runFlags, "-d", ctrImage, id, "sh", "-c", "trap 'echo usr1' USR1; sleep 600 & while true; do sleep 0.2; done")...)
	c.waitStatus(id, "RUNNING")
	sleeperAlive := func() bool {
		ps := c.mustRun("task", "exec", "--exec-id", fmt.Sprintf("ps%d", time.Now().UnixNano()), id, "ps", "-o", "args")
		for _, line := range strings.Split(ps, "\n") {
			if strings.TrimSpace(line) == "sleep 600" { // not the shell, whose script names it
				return true
			}
		}
		return false
	}
	if !sleeperAlive() {
		t.Fatal("no sleep 600 in the container")
	}
	// Without --all only the init process gets the signal.
	c.mustRun("task", "kill", "-s", "SIGUSR1", id)
	time.Sleep(500 * time.Millisecond)
	if !sleeperAlive() {
		t.Error("kill without --all reached a process other than init")
	}
	c.mustRun("task", "kill", "--all", "-s", "SIGUSR1", id)
	waitFor(t, "kill --all to reach sleep 600", func() bool { return !sleeperAlive() })
	if status := c.taskStatus(id); status != "RUNNING" {
		t.Errorf("init handles USR1, but the task is %q", status)
	}
	c.mustRun("task", "kill", "--all", "-s", "SIGKILL", id)
	c.waitStatus(id, "STOPPED")
	c.mustRun("task", "delete", id)
	c.mustRun("container", "delete", id)
}

func TestCtrBadInput(t *testing.T) {
	c := newCtrEnv(t)
	if r := c.run("", "task", "kill", "husk-no-such-container"); r.status == 0 || !strings.Contains(r.stderr, "not found") {
		t.Errorf("kill of an unknown task: status %d, %q", r.status, r.stderr)
	}
	id := c.id()
	c.mustRun(append(runFlags, "-d", ctrImage, id, "sleep", "600")...)
	c.waitStatus(id, "RUNNING")
	// A second exec with an id in use is refused as already existing.
	c.mustRun("task", "exec", "-d", "--exec-id", "dup", id, "sleep", "600")
	if r := c.run("", "task", "exec", "--exec-id", "dup", id, "true"); r.status == 0 || !strings.Contains(r.stderr, "already exists") {
		t.Errorf("duplicate exec id: status %d, %q", r.status, r.stderr)
	}
	// A task cannot be deleted while it runs.
	if r := c.run("", "task", "delete", id); r.status == 0 {
		t.Errorf("deleting a running task succeeded")
	}
	if r := c.run("", "task", "checkpoint", id); r.status == 0 || !strings.Contains(r.stderr, "not supported") {
		t.Errorf("checkpoint: status %d, %q", r.status, r.stderr)
	}
}

// TestCtrShimOrQEMUKilled: a killed shim takes its VM with it and
// containerd's clean-up (the shim's delete) leaves nothing; a killed QEMU
// ends the task with a status and containerd can remove it.
func TestCtrShimOrQEMUKilled(t *testing.T) {
	c := newCtrEnv(t)
	for _, victim := range []string{"containerd-shim-husk-v2", "qemu-system"} {
		t.Run(victim, func(t *testing.T) {
			// The sandbox joins a network namespace of the test's: what
			// it made there must go too.
			f := newNetFixture(t)
			id := c.id()
			ev := c.watchEvents()
			c.mustRun(append(runFlags, "-d", "--with-ns", "network:/var/run/netns/"+f.a, ctrImage, id, "sleep", "600")...)
			c.waitStatus(id, "RUNNING")
			if !f.joined() {
				t.Fatalf("the sandbox did not join %s", f.a)
			}
			qemu := findProcess(t, "qemu-system", id)
			pid := findProcess(t, victim, id)
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			if victim == "qemu-system" {
				c.waitStatus(id, "STOPPED")
				ev.waitFor(t, "/tasks/exit", id)
				if r := c.run("", "task", "delete", id); r.status != 0 || !strings.Contains(r.stderr, "exit code 137") {
					t.Errorf("task delete after QEMU died: status %d, stderr %q, want exit code 137", r.status, r.stderr)
				}
			} else {
				// containerd runs the shim's delete and drops the task.
				c.waitStatus(id, "")
			}
			c.mustRun("container", "delete", id)
			// QEMU dies with its shim, but not before containerd has the
			// news; the sandbox's tap goes with QEMU's last descriptor of
			// it (netlink cannot delete a tap in use).
			waitFor(t, "QEMU to be gone", func() bool { return !processAlive(qemu) })
			if left := f.leftovers(); left != "" {
				t.Errorf("left in the network namespace:\n%s", left)
			}
		})
	}
}

// TestCtrGuestDies: the guest dies under a task run through the shim, by
// its agent crashing or its kernel panicking. The waiting ctr run gets
// 137, containerd gets the TaskExit event, and nothing is left.
func TestCtrGuestDies(t *testing.T) {
	c := newCtrEnv(t)
	for _, tc := range guestDeaths {
		t.Run(tc.fault, func(t *testing.T) {
			id := c.id()
			t.Cleanup(func() { os.Remove(filepath.Join(keptLogDir, id+".console.log")) })
			ev := c.watchEvents()
			r := c.run("", append(runFlags, "--config", c.specFile(tc.edit, "sh", "-c", tc.script), id)...)
			if r.status != 137 {
				t.Errorf("ctr run: status %d, want 137; stderr %q", r.status, r.stderr)
			}
			ev.waitFor(t, "/tasks/exit", id)
			c.checkNoLeaks(id)
			checkKeptConsoleLog(t, id, tc.panic)
		})
	}
}

// specFile writes a complete spec for `ctr run --config`: a busybox bundle
// of its own whose root path is absolute, changed by edit.
func (c *ctrEnv) specFile(edit func(*specs.Spec), args ...string) string {
	c.t.Helper()
	e := &env{t: c.t, root: c.t.TempDir()} // only for its bundle helper
	b := e.bundle(edit, args...)
	spec, err := oci.ReadSpec(b)
	if err != nil {
		c.t.Fatal(err)
	}
	spec.Root.Path = filepath.Join(b, "rootfs")
	data, err := json.Marshal(spec)
	if err == nil {
		err = os.WriteFile(filepath.Join(b, "config.json"), data, 0o644)
	}
	if err != nil {
		c.t.Fatal(err)
	}
	return filepath.Join(b, "config.json")
}

// TestCtrPodEndsWithItsSandbox: containers that carry the CRI's pod
// annotations share their sandbox container's VM, and deleting the sandbox
// container ends the pod's other containers with it.
func TestCtrPodEndsWithItsSandbox(t *testing.T) {
	c := newCtrEnv(t)
	sandboxID, memberID := c.id(), c.id()
	annotate := func(kind string) func(*specs.Spec) {
		return func(s *specs.Spec) {
			s.Annotations = map[string]string{"io.kubernetes.cri.container-type": kind, "io.kubernetes.cri.sandbox-id": sandboxID}
		}
	}
	c.mustRun(append(runFlags, "-d", "--config", c.specFile(annotate("sandbox"), "sleep", "600"), sandboxID)...)
	defer c.checkNoLeaks(sandboxID)
	defer c.remove(memberID)
	c.waitStatus(sandboxID, "RUNNING")
	c.mustRun(append(runFlags, "-d", "--config", c.specFile(annotate("container"), "sleep", "600"), memberID)...)
	c.waitStatus(memberID, "RUNNING")
	stateDir := filepath.Join("/run/husk/containerd", c.namespace, sandboxID)
	if qemus := countProcesses(t, "qemu-system", stateDir+"/"); qemus != 1 {
		t.Fatalf("%d QEMU processes for the pod, want 1", qemus)
	}
	ev := c.watchEvents()
	c.mustRun("task", "kill", "-s", "SIGKILL", sandboxID)
	c.waitStatus(sandboxID, "STOPPED")
	c.mustRun("task", "delete", sandboxID)
	ev.waitFor(t, "/tasks/exit", memberID)
	c.waitStatus(memberID, "STOPPED")
	if r := c.run("", "task", "delete", memberID); r.status != 0 || !strings.Contains(r.stderr, "exit code 137") {
		t.Errorf("task delete of the pod's other container: status %d, stderr %q, want exit code 137", r.status, r.stderr)
	}
	c.mustRun("container", "delete", memberID)
}

// countProcesses counts the processes whose command line holds program
// and the string in.
func countProcesses(t *testing.T, program, in string) int {
	t.Helper()
	out, err := exec.Command("ps", "-eo", "args").Output()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, program) && strings.Contains(line, in) {
			n++
		}
	}
	return n
}

// findProcess finds the pid of the named program serving container id.
func findProcess(t *testing.T, program, id string) int {
	t.Helper()
	out, err := exec.Command("ps", "-eo", "pid,args").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, program) && (strings.Contains(line, "-id "+id+" ") || strings.Contains(line, "/"+id+"/")) && !strings.Contains(line, "unshare") {
			var pid int
			fmt.Sscan(strings.TrimSpace(line), &pid)
			return pid
		}
	}
	t.Fatalf("no %s process for %s in\n%s", program, id, out)
	return 0
}

// TestCtrLogURIs: output through file:// and through a binary:// logger,
// the way nerdctl passes it.
func TestCtrLogURIs(t *testing.T) {
	c := newCtrEnv(t)
	dir := t.TempDir()
	logFile := filepath.Join(dir, "file.log")
	c.mustRun(append(runFlags, "--rm", "--log-uri", "file://"+logFile, ctrImage, c.id(), "sh", "-c", "echo to-file; echo err-to-file >&2")...)
	if data, _ := os.ReadFile(logFile); !strings.Contains(string(data), "to-file\n") || !strings.Contains(string(data), "err-to-file\n") {
		t.Errorf("file:// log holds %q", data)
	}
	// The logger: stdout on fd 3, stderr on fd 4, ready when fd 5 closes.
	logger := filepath.Join(dir, "logger")
	out := filepath.Join(dir, "binary")
	script := "#!/bin/sh\nexec 5>&-\ncat <&4 > " + out + ".err &\ncat <&3 > " + out + ".out\nwait\necho \"$CONTAINER_ID\" > " + out + ".id\n"
	if err := os.WriteFile(logger, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	id := c.id()
	c.mustRun(append(runFlags, "--rm", "--log-uri", "binary://"+logger, ctrImage, id, "sh", "-c", "echo to-logger; echo err-to-logger >&2")...)
	deadline := time.Now().Add(10 * time.Second)
	for {
		gotOut, _ := os.ReadFile(out + ".out")
		gotErr, _ := os.ReadFile(out + ".err")
		gotID, _ := os.ReadFile(out + ".id")
		if string(gotOut) == "to-logger\n" && string(gotErr) == "err-to-logger\n" && strings.TrimSpace(string(gotID)) == id {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("binary:// logger got stdout %q, stderr %q, id %q", gotOut, gotErr, gotID)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestCtrOOM: a container that outgrows its memory limit is killed by the
// guest's OOM killer, and containerd hears of it as a TaskOOM event.
func TestCtrOOM(t *testing.T) {
	c := newCtrEnv(t)
	ev := c.watchEvents()
	id := c.id()
	r := c.run("", append(runFlags, "--rm", "--memory-limit", "33554432", ctrImage, id,
		"sh", "-c", `x=$(head -c 200000000 /dev/zero | tr '\0' a); echo survived`)...)
	if r.status != 137 || strings.Contains(r.stdout, "survived") {
		t.Fatalf("over its limit: status %d, stdout %q, stderr %q", r.status, r.stdout, r.stderr)
	}
	ev.waitFor(t, "/tasks/oom", id)
}
