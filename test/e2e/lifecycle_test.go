package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/husk-runtime/husk/internal/sandbox"
)

// state reads `husk state` of id.
func (e *env) state(id string) (status string, pid int) {
	e.t.Helper()
	r := e.run("", "state", id)
	if r.status != 0 {
		return "", 0
	}
	var st struct {
		Status string `json:"status"`
		PID    int    `json:"pid"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		e.t.Fatalf("state %q: %v", r.stdout, err)
	}
	return st.Status, st.PID
}

func (e *env) mustRun(args ...string) result {
	e.t.Helper()
	r := e.run("", args...)
	if r.status != 0 {
		e.t.Fatalf("husk %v: status %d, stderr %q", args, r.status, r.stderr)
	}
	return r
}

// create makes a container running a long-lived shell loop (or args) and
// returns its stand-in's PID; the test deletes it at the end.
func (e *env) create(id string, args ...string) int {
	e.t.Helper()
	return e.createWith(id, nil, args...)
}

// createWith is create with the bundle's spec changed by edit.
func (e *env) createWith(id string, edit func(*specs.Spec), args ...string) int {
	e.t.Helper()
	if len(args) == 0 {
		args = []string{"sh", "-c", "trap 'exit 7' TERM; echo started; while true; do sleep 0.1; done"}
	}
	b := e.bundle(edit, args...)
	pidFile := filepath.Join(e.t.TempDir(), "pid")
	cmd := e.command("create", "--bundle", b, "--pid-file", pidFile, id)
	// The stand-in inherits create's stdio, as a container inherits runc
	// create's: a pipe here would stay open as long as the container runs.
	devnull, _ := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	defer devnull.Close()
	errFile, _ := os.CreateTemp(e.t.TempDir(), "stderr")
	defer errFile.Close()
	outFile, err := os.Create(filepath.Join(e.root, id+".stdout"))
	if err != nil {
		e.t.Fatal(err)
	}
	defer outFile.Close()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, outFile, errFile
	if err := cmd.Run(); err != nil {
		out, _ := os.ReadFile(errFile.Name())
		e.t.Fatalf("create: %v %s", err, out)
	}
	e.t.Cleanup(func() { e.run("", "delete", "--force", id) })
	data, err := os.ReadFile(pidFile)
	if err != nil {
		e.t.Fatalf("pid file: %v", err)
	}
	pid, err := strconv.Atoi(string(data))
	if err != nil || pid <= 0 {
		e.t.Fatalf("pid file holds %q", data)
	}
	return pid
}

// start starts a container made by create and waits until its process has
// printed "started", so that its signal handlers are in place.
func (e *env) start(id string) {
	e.t.Helper()
	e.mustRun("start", id)
	waitFor(e.t, "the container to print started", func() bool {
		out, _ := os.ReadFile(filepath.Join(e.root, id+".stdout"))
		return strings.Contains(string(out), "started")
	})
}

// waitStopped waits until the container reads stopped.
func (e *env) waitStopped(id string) {
	e.t.Helper()
	waitFor(e.t, id+" to read stopped", func() bool {
		status, _ := e.state(id)
		return status == "stopped"
	})
}

func processAlive(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	fields := strings.Fields(string(data)[strings.LastIndexByte(string(data), ')')+1:])
	return len(fields) > 0 && fields[0] != "Z"
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestCreateStartKillDelete(t *testing.T) {
	e := newEnv(t)
	id := e.id()
	pid := e.create(id)
	if status, statePID := e.state(id); status != "created" || statePID != pid {
		t.Fatalf("after create: status %q pid %d, pid file %d", status, statePID, pid)
	}
	if !processAlive(pid) {
		t.Fatal("stand-in not alive after create")
	}
	// A second create with the same id fails and leaves the first alone.
	b := e.bundle(nil, "true")
	if r := e.run("", "create", "--bundle", b, id); r.status != 1 || !strings.Contains(r.stderr, "already exists") {
		t.Fatalf("double create: status %d, stderr %q", r.status, r.stderr)
	}
	e.start(id)
	if status, _ := e.state(id); status != "running" {
		t.Fatalf("after start: %s", status)
	}
	if r := e.run("", "start", id); r.status != 1 {
		t.Fatalf("second start: status %d", r.status)
	}
	checkShareAttributes(t, e, id)
	// ps's json is for callers that match PIDs against the host's (docker
	// top): the container's stand-in; its table, the guest's PIDs.
	r := e.mustRun("ps", "--format", "json", id)
	var pids []int
	if err := json.Unmarshal([]byte(r.stdout), &pids); err != nil || len(pids) != 1 || pids[0] != pid {
		t.Fatalf("ps json %q (%v), want the stand-in's pid [%d]", r.stdout, err, pid)
	}
	if lines := strings.Fields(e.mustRun("ps", id).stdout); len(lines) < 2 || lines[0] != "PID" {
		t.Fatalf("ps: %q, want a header and the guest's PIDs", lines)
	} else if _, err := strconv.Atoi(lines[1]); err != nil {
		t.Fatalf("ps: %q, want the guest's PIDs", lines)
	}
	if r := e.run("", "delete", id); r.status != 1 || !strings.Contains(r.stderr, "not stopped") {
		t.Fatalf("delete of running: status %d, stderr %q", r.status, r.stderr)
	}
	e.mustRun("kill", id, "TERM")
	waitFor(t, "the stand-in to exit", func() bool { return !processAlive(pid) })
	if status, _ := e.state(id); status != "stopped" {
		t.Fatalf("after kill: %s", status)
	}
	if r := e.run("", "kill", id, "KILL"); r.status != 1 || !strings.Contains(r.stderr, "not running") {
		t.Fatalf("kill of stopped: status %d, stderr %q", r.status, r.stderr)
	}
	e.mustRun("delete", id)
	if r := e.run("", "state", id); r.status != 1 || !strings.Contains(r.stderr, "does not exist") {
		t.Fatalf("state after delete: status %d, stderr %q", r.status, r.stderr)
	}
}

func TestStandInExitsWithContainerStatus(t *testing.T) {
	e := newEnv(t)
	id := e.id()
	// Like containerd's shim and conmon, become the subreaper that the
	// stand-in is re-parented to when create exits, to read its status.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	// The stand-in is our child, so its exit status is ours to read.
	b := e.bundle(nil, "sh", "-c", "read line; exit 9")
	cmd := e.command("create", "--bundle", b, id)
	stdinR, stdinW, _ := os.Pipe()
	outFile, _ := os.CreateTemp(t.TempDir(), "out")
	defer outFile.Close()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdinR, outFile, outFile
	if err := cmd.Run(); err != nil {
		out, _ := os.ReadFile(outFile.Name())
		t.Fatalf("create: %v %s", err, out)
	}
	stdinR.Close()
	t.Cleanup(func() { e.run("", "delete", "--force", id) })
	_, pid := e.state(id)
	e.mustRun("start", id)
	stdinW.WriteString("go\n")
	stdinW.Close()
	var ws unix.WaitStatus
	if _, err := unix.Wait4(pid, &ws, 0, nil); err != nil {
		t.Fatalf("waiting for the stand-in: %v", err)
	}
	if !ws.Exited() || ws.ExitStatus() != 9 {
		t.Fatalf("stand-in ended with %v, want exit status 9", ws)
	}
	if status, _ := e.state(id); status != "stopped" {
		t.Fatalf("status %s", status)
	}
}

func TestKillSignalForms(t *testing.T) {
	e := newEnv(t)
	id := e.id()
	pid := e.create(id, "sh", "-c", "trap 'echo got-usr1' USR1; trap 'exit 0' HUP; echo started; while true; do sleep 0.1; done")
	e.start(id)
	// Each form of the name reaches the process: one line per signal.
	for i, sig := range []string{"USR1", "SIGUSR1", "10"} {
		e.mustRun("kill", id, sig)
		waitFor(t, "the trap to run for "+sig, func() bool {
			out, _ := os.ReadFile(filepath.Join(e.root, id+".stdout"))
			return strings.Count(string(out), "got-usr1") == i+1
		})
	}
	if !processAlive(pid) {
		t.Fatal("container died of a trapped signal")
	}
	if r := e.run("", "kill", id, "NOSUCHSIG"); r.status != 1 {
		t.Fatalf("bad signal: status %d", r.status)
	}
	e.mustRun("kill", "--all", id, "SIGHUP")
	waitFor(t, "the container to exit on HUP", func() bool { return !processAlive(pid) })
}

func TestExecPauseResumeEvents(t *testing.T) {
	e := newEnv(t)
	id := e.id()
	e.create(id)
	e.start(id)

	r := e.run("", "exec", id, "sh", "-c", "echo in $(pwd); exit 4")
	if r.status != 4 || r.stdout != "in /\n" {
		t.Fatalf("exec: status %d, stdout %q, stderr %q", r.status, r.stdout, r.stderr)
	}
	r = e.run("", "exec", "-e", "FOO=bar", "--cwd", "/tmp", "-u", "1000:1000", id, "sh", "-c", "echo $FOO in $(pwd) as $(id -u):$(id -g)")
	if r.status != 0 || r.stdout != "bar in /tmp as 1000:1000\n" {
		t.Fatalf("exec with flags: status %d, stdout %q, stderr %q", r.status, r.stdout, r.stderr)
	}
	r = e.run("hello exec\n", "exec", id, "cat")
	if r.stdout != "hello exec\n" {
		t.Fatalf("exec stdin: %q", r.stdout)
	}
	proc := filepath.Join(t.TempDir(), "process.json")
	os.WriteFile(proc, []byte(`{"args":["sh","-c","echo from process file"],"cwd":"/","env":["PATH=/bin"],"user":{"uid":0,"gid":0}}`), 0o644)
	if r := e.mustRun("exec", "--process", proc, id); r.stdout != "from process file\n" {
		t.Fatalf("exec --process: %q", r.stdout)
	}
	pidFile := filepath.Join(t.TempDir(), "exec.pid")
	e.mustRun("exec", "-d", "--pid-file", pidFile, id, "sleep", "0.5")
	data, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatalf("exec pid file: %v", err)
	}
	execPID, _ := strconv.Atoi(string(data))
	waitFor(t, "the detached exec's stand-in to exit", func() bool { return !processAlive(execPID) })

	e.mustRun("pause", id)
	if status, _ := e.state(id); status != "paused" {
		t.Fatalf("after pause: %s", status)
	}
	if r := e.run("", "pause", id); r.status != 1 {
		t.Fatal("second pause succeeded")
	}
	e.mustRun("resume", id)
	if status, _ := e.state(id); status != "running" {
		t.Fatalf("after resume: %s", status)
	}
	r = e.mustRun("events", "--stats", id)
	var ev struct {
		Type string `json:"type"`
		ID   string `json:"id"`
		Data struct {
			CPU struct {
				Usage struct {
					Total uint64 `json:"total"`
				} `json:"usage"`
			} `json:"cpu"`
			Memory struct {
				Usage struct {
					Usage uint64 `json:"usage"`
				} `json:"usage"`
			} `json:"memory"`
			Pids struct {
				Current uint64 `json:"current"`
			} `json:"pids"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &ev); err != nil {
		t.Fatalf("events %q: %v", r.stdout, err)
	}
	if ev.Type != "stats" || ev.ID != id || ev.Data.CPU.Usage.Total == 0 || ev.Data.Memory.Usage.Usage == 0 || ev.Data.Pids.Current == 0 {
		t.Fatalf("stats event without figures: %s", r.stdout)
	}
	// The new limits reach the container's cgroup in the guest.
	e.mustRun("update", "--pids-limit", "50", "--memory", "67108864", id)
	r = e.mustRun("exec", id, "cat", "/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/memory.max")
	if r.stdout != "50\n67108864\n" {
		t.Fatalf("limits in the guest after update: %q", r.stdout)
	}
}

func TestUnknownIDs(t *testing.T) {
	e := newEnv(t)
	for _, args := range [][]string{
		{"start", "nope"}, {"kill", "nope"}, {"delete", "nope"}, {"state", "nope"},
		{"exec", "nope", "true"}, {"pause", "nope"}, {"ps", "nope"}, {"events", "--stats", "nope"},
	} {
		r := e.run("", args...)
		if r.status != 1 || !strings.Contains(r.stderr, "does not exist") {
			t.Errorf("%v: status %d, stderr %q", args, r.status, r.stderr)
		}
	}
}

// checkShareAttributes: every mount of the container's share, in its
// daemon's mount namespace, is nodev and nosuid: QEMU, which serves it,
// never opens a device node or runs a setuid file through it.
func checkShareAttributes(t *testing.T, e *env, id string) {
	t.Helper()
	var st struct {
		Daemon struct {
			PID int `json:"pid"`
		} `json:"daemon"`
	}
	data, err := os.ReadFile(filepath.Join(e.root, "state", id, "state.json"))
	if err != nil || json.Unmarshal(data, &st) != nil || st.Daemon.PID == 0 {
		t.Fatalf("the daemon's pid: %v %s", err, data)
	}
	mountinfo, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", st.Daemon.PID))
	if err != nil {
		t.Fatal(err)
	}
	shared := 0
	for _, line := range strings.Split(string(mountinfo), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || !strings.Contains(f[4], "/"+sandbox.SharedDir+"/"+id+"/") {
			continue
		}
		shared++
		if opts := "," + f[5] + ","; !strings.Contains(opts, ",nodev,") || !strings.Contains(opts, ",nosuid,") {
			t.Errorf("a shared mount without nodev and nosuid: %s", line)
		}
	}
	if shared == 0 {
		t.Errorf("no mount of container %s's share in its daemon's mount namespace", id)
	}
}
