package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// parallelism is how many sandboxes the parallel tests start at once.
const parallelism = 20

// inParallel runs run(i) for i in [0, n) at once and returns the results.
func inParallel(n int, run func(i int) result) []result {
	var wg sync.WaitGroup
	results := make([]result, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			results[i] = run(i)
		}(i)
	}
	wg.Wait()
	return results
}

func TestParallelRuns(t *testing.T) {
	e := newEnv(t)
	b := e.bundle(nil, "sh", "-c", "echo hello $0", "parallel")
	results := inParallel(parallelism, func(int) result {
		return runCommand(t, e.command("run", "--bundle", b, e.id()), "")
	})
	for i, r := range results {
		if r.status != 0 || r.stdout != "hello parallel\n" {
			t.Errorf("run %d: status %d, stdout %q, stderr %q", i, r.status, r.stdout, r.stderr)
		}
	}
}

func TestParallelDockerRuns(t *testing.T) {
	d := newDockerEnv(t)
	burst := func() {
		results := inParallel(parallelism, func(i int) result {
			return d.run("", "run", "--rm", "--runtime", "husk", "busybox:local", "echo", fmt.Sprint("n", i))
		})
		for i, r := range results {
			if r.status != 0 || r.stdout != fmt.Sprintf("n%d\n", i) {
				t.Errorf("docker run %d: status %d, stdout %q, stderr %q", i, r.status, r.stdout, r.stderr)
			}
		}
	}
	// Descriptors of connections that the clients opened to dockerd's API
	// are not counted (see fdCount): dockerd keeps some of those after a
	// burst, a timing-dependent number, under runc as well. The first burst
	// lets the daemons open what they open once, on first use.
	burst()
	baselines := fdBaselines(t, "dockerd", "containerd")
	burst()
	burst()
	baselines.check(t)
}

func TestParallelCtrRuns(t *testing.T) {
	c := newCtrEnv(t)
	baselines := fdBaselines(t, "containerd")
	results := inParallel(parallelism, func(i int) result {
		return c.run("", append(runFlags, "--rm", ctrImage, c.id(), "echo", fmt.Sprint("n", i))...)
	})
	for i, r := range results {
		if r.status != 0 || r.stdout != fmt.Sprintf("n%d\n", i) {
			t.Errorf("ctr run %d: status %d, stdout %q, stderr %q", i, r.status, r.stdout, r.stderr)
		}
	}
	baselines.check(t)
}

// fdBaseline is a long-lived process's count of open descriptors.
type fdBaseline struct {
	name  string
	pid   int
	count int
	// apiClients: leave out the connections clients opened to the daemon's
	// own API socket (dockerd's HTTP keep-alives; see fdCount).
	apiClients bool
}

type fdBaselineSet []fdBaseline

// fdBaselines records the open descriptors of the named daemons (each the
// oldest process of that name), which the sandboxes a test runs must not
// leave any more of.
func fdBaselines(t *testing.T, names ...string) fdBaselineSet {
	t.Helper()
	var set fdBaselineSet
	for _, name := range names {
		out, err := exec.Command("pgrep", "-o", "-x", name).Output()
		if err != nil {
			skipUnlessRequired(t, "no %s running: %v", name, err)
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(out)))
		b := fdBaseline{name: name, pid: pid, apiClients: name == "dockerd"}
		b.count = b.current()
		set = append(set, b)
	}
	return set
}

// current counts the daemon's open descriptors now.
func (b fdBaseline) current() int { return fdCount(b.pid, b.apiClients) }

// fdCount counts pid's open descriptors. With apiClients it leaves out the
// unix sockets pid accepted on a listening socket of its own (which the
// kernel names by the listener's path): its clients' connections, whose end
// is up to the client and the daemon's keep-alive policy, not to the
// sandboxes. Everything a sandbox could leak in a daemon (FIFOs, files,
// connections to a shim, which have no path on the daemon's side) is
// counted either way.
func fdCount(pid int, apiClients bool) int {
	entries, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	var accepted map[string]bool
	if apiClients {
		accepted = acceptedSockets(pid)
	}
	n := 0
	for _, entry := range entries {
		target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, entry.Name()))
		if err != nil {
			continue // closed since the listing
		}
		inode, isSocket := strings.CutPrefix(target, "socket:[")
		if isSocket && accepted[strings.TrimSuffix(inode, "]")] {
			continue
		}
		n++
	}
	return n
}

// acceptedSockets returns the inodes of the unix sockets, in pid's network
// namespace, that carry a path and are not listening: connections accepted
// on a path-bound listener.
func acceptedSockets(pid int) map[string]bool {
	table, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/unix", pid))
	if err != nil {
		return nil
	}
	// Num RefCount Protocol Flags Type St Inode Path; Flags 00010000 is
	// __SO_ACCEPTCON, set only on listeners.
	inodes := map[string]bool{}
	for _, line := range strings.Split(string(table), "\n")[1:] {
		fields := strings.Fields(line)
		if len(fields) < 8 || fields[3] == "00010000" {
			continue
		}
		inodes[fields[6]] = true
	}
	return inodes
}

// check waits for every daemon's descriptors to come back to the baseline;
// a few are allowed for connections the daemon keeps for itself.
func (set fdBaselineSet) check(t *testing.T) {
	t.Helper()
	const slack = 4
	for _, b := range set {
		deadline := time.Now().Add(15 * time.Second)
		for b.current() > b.count+slack && time.Now().Before(deadline) {
			time.Sleep(200 * time.Millisecond)
		}
		if n := b.current(); n > b.count+slack {
			t.Errorf("%s (pid %d) has %d open descriptors, %d before the runs", b.name, b.pid, n, b.count)
		} else {
			t.Logf("%s: %d open descriptors, %d before the runs", b.name, n, b.count)
		}
	}
}

// cycles is how many create/start/delete cycles TestManyCycles runs: 300,
// or 20 with -short.
func cycles() int {
	if testing.Short() {
		return 20
	}
	return 300
}

// TestManyCycles runs many whole lifecycles in a row, each as runc's callers
// drive it (create, start, the process exits, delete): each must succeed
// and leave nothing behind (the leak check runs at the end), and neither
// the CLI's peak memory nor the sandbox daemon's may grow from the first
// cycles to the last.
func TestManyCycles(t *testing.T) {
	e := newEnv(t)
	if _, err := os.Stat("/usr/bin/time"); err != nil {
		skipUnlessRequired(t, "needs GNU time (apt-get install time): %v", err)
	}
	b := e.bundle(nil, "true")
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	n := cycles()
	var cliPeaks, daemonPeaks []int64
	for i := 0; i < n; i++ {
		id := e.id()
		var cliPeak int64
		// step runs one command and takes its own peak RSS from GNU
		// time. The rusage of a child of this test would not do: a child
		// forked from a process starts its peak at that process's RSS
		// (the kernel carries the old memory's high-water mark across
		// exec), so it would follow this test's growing heap.
		step := func(args ...string) {
			dir := t.TempDir()
			cmd := e.command(args...)
			cmd.Args = append([]string{"/usr/bin/time", "-f", "%M", "-o", filepath.Join(dir, "peak")}, cmd.Args...)
			cmd.Path = "/usr/bin/time"
			errFile, err := os.Create(filepath.Join(dir, "stderr"))
			if err != nil {
				t.Fatal(err)
			}
			defer errFile.Close()
			// A file, not a pipe: the stand-in inherits create's stdio.
			cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, devnull, errFile
			if err := cmd.Run(); err != nil {
				msg, _ := os.ReadFile(errFile.Name())
				t.Fatalf("cycle %d: husk %v: %v %s", i, args, err, msg)
			}
			out, _ := os.ReadFile(filepath.Join(dir, "peak"))
			kib, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
			if err != nil {
				t.Fatalf("GNU time's peak for husk %v: %q", args, out)
			}
			cliPeak = max(cliPeak, kib)
		}
		step("create", "--bundle", b, id)
		daemon, _ := e.sandboxPIDs(id)
		step("start", id)
		e.waitStopped(id)
		daemonPeaks = append(daemonPeaks, peakRSS(t, daemon))
		step("delete", id)
		cliPeaks = append(cliPeaks, cliPeak)
	}
	for _, p := range []struct {
		what  string
		peaks []int64
	}{{"husk create/start/delete", cliPeaks}, {"the sandbox daemon", daemonPeaks}} {
		first, last := medianOf(p.peaks[:10]), medianOf(p.peaks[len(p.peaks)-10:])
		t.Logf("%d cycles; peak RSS of %s, median: first 10 %d KiB, last 10 %d KiB", n, p.what, first, last)
		if last > first+first/5 {
			t.Errorf("peak RSS of %s grew from %d KiB to %d KiB", p.what, first, last)
		}
	}
}

// peakRSS reads a live process's peak resident memory (VmHWM) in KiB.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	status, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			kib, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
			return kib
		}
	}
	t.Fatalf("no VmHWM for %d", pid)
	return 0
}

func medianOf(v []int64) int64 {
	s := append([]int64(nil), v...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// processFootprint reads a process's open descriptors and resident memory.
func processFootprint(t *testing.T, pid int) (fds int, rssKiB int) {
	t.Helper()
	entries, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		t.Fatal(err)
	}
	status, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			rssKiB, _ = strconv.Atoi(strings.Fields(line)[1])
		}
	}
	return len(entries), rssKiB
}

// TestManyExecsDaemonDoesNotGrow: the long-lived daemon must hand back every
// descriptor and goroutine an exec used.
func TestManyExecsDaemonDoesNotGrow(t *testing.T) {
	e := newEnv(t)
	id := e.id()
	e.create(id)
	e.start(id)
	daemon, _ := e.sandboxPIDs(id)
	n := cycles()
	var fdsAt, rssAt [2]int
	for i := 0; i < n; i++ {
		if r := e.run("in\n", "exec", id, "cat"); r.status != 0 || r.stdout != "in\n" {
			t.Fatalf("exec %d: status %d, stdout %q, stderr %q", i, r.status, r.stdout, r.stderr)
		}
		if i == 9 {
			fdsAt[0], rssAt[0] = processFootprint(t, daemon)
		}
	}
	fdsAt[1], rssAt[1] = processFootprint(t, daemon)
	t.Logf("%d execs; daemon fds %d → %d, RSS %d → %d KiB", n, fdsAt[0], fdsAt[1], rssAt[0], rssAt[1])
	if fdsAt[1] > fdsAt[0] {
		t.Errorf("daemon descriptors grew from %d to %d", fdsAt[0], fdsAt[1])
	}
	if rssAt[1] > rssAt[0]+8*1024 {
		t.Errorf("daemon RSS grew from %d KiB to %d KiB", rssAt[0], rssAt[1])
	}
}
