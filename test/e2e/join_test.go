package e2e

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// qemuCount counts the QEMU processes whose command line names dir.
func qemuCount(dir string) int {
	out, _ := exec.Command("pgrep", "-c", "-f", "qemu-system.*"+dir).Output()
	n := 0
	fmt.Sscan(string(out), &n)
	return n
}

// TestJoinAnotherContainersNetwork: a spec whose network namespace is
// /proc/PID/ns/net of a running container's process (what Docker and
// Podman give for --network container:NAME) runs in that container's VM
// and network: it reaches the first container's server on 127.0.0.1, and
// no second QEMU starts. Deleting the joined container leaves the first
// running; deleting the first stops the joined one, which is then deleted
// without touching anything else.
func TestJoinAnotherContainersNetwork(t *testing.T) {
	e := newEnv(t)
	owner := e.id()
	ownerPID := e.createWith(owner, nil, "sh", "-c", "mkdir -p /dev/shm/www && echo served-by-the-owner > /dev/shm/www/x && echo started && exec httpd -f -p 8081 -h /dev/shm/www")
	e.start(owner)
	qemus := func() int { return qemuCount(e.root) }
	before := qemus()

	joinOwner := func(s *specs.Spec) {
		for i, ns := range s.Linux.Namespaces {
			if ns.Type == specs.NetworkNamespace {
				s.Linux.Namespaces[i].Path = fmt.Sprintf("/proc/%d/ns/net", ownerPID)
			}
		}
	}
	joined := e.id()
	e.createWith(joined, joinOwner, "sh", "-c", "echo started; sleep 600")
	e.start(joined)
	if after := qemus(); after != before {
		t.Errorf("%d QEMU processes after the join, %d before", after, before)
	}
	var out string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if r := e.run("", "exec", joined, "wget", "-q", "-O", "-", "http://127.0.0.1:8081/x"); r.status == 0 {
			out = r.stdout
			break
		}
	}
	if out != "served-by-the-owner\n" {
		t.Errorf("the joined container fetched %q from the owner's server on 127.0.0.1", out)
	}

	// A run that joins, removed when done; the owner goes on.
	r := e.run("", "run", "--bundle", e.bundle(joinOwner, "wget", "-q", "-O", "-", "http://127.0.0.1:8081/x"), e.id())
	if r.status != 0 || r.stdout != out {
		t.Errorf("run joining the owner: status %d, stdout %q, stderr %q", r.status, r.stdout, r.stderr)
	}
	if status, _ := e.state(owner); status != "running" {
		t.Errorf("owner %s after a joined run ended", status)
	}

	// The owner's delete ends the sandbox: the joined container stops.
	e.mustRun("kill", owner, "KILL")
	e.waitStopped(owner)
	e.mustRun("delete", owner)
	e.waitStopped(joined)
	if r := e.run("", "delete", joined); r.status != 0 {
		t.Errorf("delete of the joined container: status %d, stderr %q", r.status, r.stderr)
	}
	if r := e.run("", "state", joined); r.status == 0 || !strings.Contains(r.stderr, "does not exist") {
		t.Errorf("state of the deleted joined container: status %d, stderr %q", r.status, r.stderr)
	}
}

// TestSecondContainerInTheSameNamespaceJoins: a second container given the
// network namespace a running sandbox was joined to (two containers handed
// one CNI namespace) runs in that sandbox rather than putting a second set
// of taps and redirects on the same interface: it reaches the next
// namespace over the first one's interface, and no second QEMU starts.
func TestSecondContainerInTheSameNamespaceJoins(t *testing.T) {
	f := newNetFixture(t) // before the env: its leak check runs after the env's clean-up
	e := newEnv(t)
	const port = 18094
	f.serveFromB(t, port, "x", "across the shared interface\n")
	owner := e.id()
	e.createWith(owner, inNamespace(f.a), "sh", "-c", "echo started; sleep 600")
	e.start(owner)
	qemus := func() int { return qemuCount(e.root) }
	before := qemus()
	b := e.bundle(inNamespace(f.a), "wget", "-q", "-O", "-", fmt.Sprintf("http://%s:%d/x", f.addrB, port))
	cmd := e.command("run", "--bundle", b, e.id())
	done := make(chan result, 1)
	go func() { done <- runCommand(t, cmd, "") }()
	during := before
	var r result
	for running := true; running; {
		select {
		case r = <-done:
			running = false
		case <-time.After(100 * time.Millisecond):
			during = max(during, qemus())
		}
	}
	if r.status != 0 || r.stdout != "across the shared interface\n" {
		t.Fatalf("second container in the namespace: status %d, stdout %q, stderr %q", r.status, r.stdout, r.stderr)
	}
	if during != before {
		t.Errorf("%d QEMU processes while the second container ran, %d before", during, before)
	}
	e.mustRun("delete", "--force", owner)
}
