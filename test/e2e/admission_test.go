package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/husk-runtime/husk/internal/admission"
)

// turn is one guest's turn to start, as its daemon logged it.
type turn struct {
	sandbox      string
	began, ended int64 // UnixNano
	held         string
}

// startTurns reads the turns a daemon's log records.
func startTurns(t *testing.T, sandbox, logPath string) []turn {
	t.Helper()
	f, err := os.Open(logPath)
	if err != nil {
		t.Fatalf("the daemon's log: %v", err)
	}
	defer f.Close()
	var turns []turn
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, `msg="start turn ended"`) {
			continue
		}
		tr := turn{sandbox: sandbox}
		for _, field := range strings.Fields(line) {
			key, value, _ := strings.Cut(field, "=")
			switch key {
			case "began_ns":
				tr.began, _ = strconv.ParseInt(value, 10, 64)
			case "ended_ns":
				tr.ended, _ = strconv.ParseInt(value, 10, 64)
			case "held":
				tr.held = value
			}
		}
		if tr.began == 0 || tr.ended < tr.began {
			t.Fatalf("%s: a turn without its times: %s", logPath, line)
		}
		turns = append(turns, tr)
	}
	return turns
}

// Guests start at most runtime.concurrent_starts at a time on the host:
// with one slot, the turns of creates made at once never overlap, and every
// create succeeds.
func TestStartTurnsNeverOverlap(t *testing.T) {
	e := newEnv(t)
	e.writeConfig("[runtime]\nconcurrent_starts = 1\n")
	b := e.bundle(nil, "true")
	const n = 6
	ids := make([]string, n)
	for i := range ids {
		ids[i] = e.id()
	}
	results := inParallel(n, func(i int) result { return e.createQuiet(b, ids[i]) })
	var turns []turn
	for i, r := range results {
		if r.status != 0 {
			t.Errorf("create %d: status %d, stderr %q", i, r.status, r.stderr)
			continue
		}
		turns = append(turns, startTurns(t, ids[i], filepath.Join(e.root, "state", ids[i], "daemon.log"))...)
	}
	// Each sandbox's turn ended with its container's create (one of them
	// may have made the template first, in a turn of its own).
	if len(turns) < n {
		t.Errorf("%d turns logged, want at least %d", len(turns), n)
	}
	sort.Slice(turns, func(i, j int) bool { return turns[i].began < turns[j].began })
	for k := 1; k < len(turns); k++ {
		if prev := turns[k-1]; turns[k].began < prev.ended {
			t.Errorf("%s's turn began %s before %s's (held %s) ended", turns[k].sandbox,
				time.Duration(prev.ended-turns[k].began), prev.sandbox, prev.held)
		}
	}
	for _, id := range ids {
		e.run("", "delete", "--force", id)
	}
}

// create runs husk create with its stdio on files: the container's
// stand-in keeps what it is given, past the command's end.
func (e *env) createQuiet(bundle, id string) result {
	e.t.Helper()
	stderr, err := os.CreateTemp(e.t.TempDir(), "stderr")
	if err != nil {
		e.t.Fatal(err)
	}
	defer stderr.Close()
	cmd := e.command("create", "--bundle", bundle, id)
	cmd.Stderr = stderr
	status := 0
	if err := cmd.Run(); err != nil {
		exitErr, ok := err.(*exec.ExitError)
		if !ok {
			e.t.Fatalf("%v: %v", cmd.Args, err)
		}
		status = exitErr.ExitCode()
	}
	out, _ := os.ReadFile(stderr.Name())
	return result{stderr: string(out), status: status}
}

// holdTurn takes one of the host's turns to start for the test, so that
// what husk starts meanwhile queues behind it (with one slot).
func holdTurn(t *testing.T) *admission.Turn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	turn, err := admission.Gate{Dir: admission.Dir, Slots: 1}.Enter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { turn.Leave() })
	return turn
}

// ticketsOf lists the queue's tickets of the process pid.
func ticketsOf(pid int) []string {
	names, _ := filepath.Glob(filepath.Join(admission.Dir, fmt.Sprintf("*-%d", pid)))
	return names
}

// A create that queues succeeds once its turn comes; one whose command is
// killed while it queues (its caller's deadline passed) leaves the queue at
// once, and leaves nothing behind.
func TestQueuedCreates(t *testing.T) {
	e := newEnv(t)
	e.writeConfig("[runtime]\nconcurrent_starts = 1\n")
	b := e.bundle(nil, "true")
	held := holdTurn(t)

	waiting, killed := e.id(), e.id()
	done := make(chan result, 1)
	go func() { done <- e.createQuiet(b, waiting) }()
	victim := e.command("create", "--bundle", b, killed)
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	daemonPID := func(id string) int {
		var st struct {
			Daemon struct {
				PID int `json:"pid"`
			} `json:"daemon"`
		}
		data, err := os.ReadFile(filepath.Join(e.root, "state", id, "state.json"))
		if err == nil {
			_ = json.Unmarshal(data, &st)
		}
		return st.Daemon.PID
	}
	// Both daemons queue behind the test's turn.
	deadline := time.Now().Add(30 * time.Second)
	for len(ticketsOf(daemonPID(waiting))) == 0 || len(ticketsOf(daemonPID(killed))) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the creates' daemons did not join the queue")
		}
		time.Sleep(50 * time.Millisecond)
	}
	select {
	case r := <-done:
		t.Fatalf("a create finished while its turn was held: status %d, stderr %q", r.status, r.stderr)
	case <-time.After(time.Second):
	}
	victimDaemon := daemonPID(killed)
	if err := victim.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = victim.Wait()
	deadline = time.Now().Add(5 * time.Second)
	for len(ticketsOf(victimDaemon)) > 0 || syscall.Kill(victimDaemon, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("the daemon of a killed create (pid %d) still queues: tickets %q", victimDaemon, ticketsOf(victimDaemon))
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The daemon removed what it had made; a caller's delete finds
	// nothing, or what is left (checkNoLeaks looks at the end).
	e.run("", "delete", "--force", killed)

	held.Leave()
	r := <-done
	if r.status != 0 {
		t.Fatalf("the queued create: status %d, stderr %q", r.status, r.stderr)
	}
	if r := e.run("", "start", waiting); r.status != 0 {
		t.Errorf("start: status %d, stderr %q", r.status, r.stderr)
	}
	e.run("", "delete", "--force", waiting)
}

// shimPID is the pid of the husk shim serving container id, or 0.
func shimPID(id string) int {
	out, _ := exec.Command("pgrep", "-f", "containerd-shim-husk-v2 .*-id "+id+" ").Output()
	pid, _ := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0]))
	return pid
}

// Through containerd, a create queues within the caller's deadline: one
// whose deadline passes while it queues fails and leaves nothing behind
// (its shim leaves the queue and ends); one without a deadline succeeds
// once its turn comes. The shim's configuration comes from the runtime
// options' ConfigPath (ctr --runtime-config-path).
func TestCtrQueuedCreates(t *testing.T) {
	c := newCtrEnv(t)
	cfg := filepath.Join(t.TempDir(), "one-start.toml")
	if err := os.WriteFile(cfg, []byte("[runtime]\nconcurrent_starts = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run := append(runFlags, "--rm", "--runtime-config-path", cfg)
	held := holdTurn(t)

	// The deadline passes while the shim queues.
	late := c.id()
	lateRun := exec.Command("ctr", append([]string{"-n", c.namespace, "--timeout", "20s"}, append(run, ctrImage, late, "echo", "late")...)...)
	var lateOut strings.Builder
	lateRun.Stdout, lateRun.Stderr = &lateOut, &lateOut
	if err := lateRun.Start(); err != nil {
		t.Fatal(err)
	}
	lateDone := make(chan error, 1)
	go func() { lateDone <- lateRun.Wait() }()
	queued := 0
	for queued == 0 {
		select {
		case err := <-lateDone:
			t.Fatalf("ctr run ended (%v) before its shim queued: %s", err, lateOut.String())
		case <-time.After(100 * time.Millisecond):
		}
		if pid := shimPID(late); pid != 0 && len(ticketsOf(pid)) > 0 {
			queued = pid
		}
	}
	if err := <-lateDone; err == nil {
		t.Fatalf("ctr run succeeded while the only turn was held: %s", lateOut.String())
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(ticketsOf(queued)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the shim (pid %d) of a create past its deadline still queues: %q", queued, ticketsOf(queued))
		}
		time.Sleep(50 * time.Millisecond)
	}
	// checkNoLeaks, at the test's end, looks for its shim, QEMU, state and mounts.

	// Without a deadline, the create waits for its turn.
	waiting := c.id()
	waitingRun := c.command(append(run, ctrImage, waiting, "echo", "queued")...)
	var stdout, stderr strings.Builder
	waitingRun.Stdout, waitingRun.Stderr = &stdout, &stderr
	if err := waitingRun.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- waitingRun.Wait() }()
	deadline = time.Now().Add(30 * time.Second)
	for pid := shimPID(waiting); pid == 0 || len(ticketsOf(pid)) == 0; pid = shimPID(waiting) {
		if time.Now().After(deadline) {
			t.Fatal("the second create's shim did not join the queue")
		}
		time.Sleep(100 * time.Millisecond)
	}
	held.Leave()
	if err := <-done; err != nil || strings.TrimSpace(stdout.String()) != "queued" {
		t.Fatalf("the queued ctr run: %v, stdout %q, stderr %q", err, stdout.String(), stderr.String())
	}
}
