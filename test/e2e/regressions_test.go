package e2e

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A caller that stops reading (husk run … | head -1) must not leave the
// container blocked writing forever: it gets EPIPE/SIGPIPE, as under runc.
func TestRunOutputReaderGoesAway(t *testing.T) {
	e := newEnv(t)
	b := e.bundle(nil, "yes")
	cmd := exec.Command("sh", "-c", "'"+huskBin+"' --root '"+e.root+"/state' --config '"+e.config+"' run --bundle '"+b+"' "+e.id()+" | head -1")
	done := make(chan error, 1)
	var out []byte
	go func() {
		var err error
		out, err = cmd.Output()
		done <- err
	}()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("husk run | head -1 did not end: the container is stuck writing")
	}
	if strings.TrimSpace(string(out)) != "y" {
		t.Fatalf("output %q", out)
	}
}

// After an attached exec returns, nothing may go on reading the caller's
// stdin: the next thing typed belongs to the caller's shell.
func TestExecLeavesCallerStdinAlone(t *testing.T) {
	e := newEnv(t)
	id := e.id()
	e.create(id)
	e.start(id)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	cmd := e.command("exec", id, "true")
	cmd.Stdin = r
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("exec: %v %s", err, out)
	}
	if _, err := w.WriteString("abc"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if err := syscall.SetNonblock(int(r.Fd()), true); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8)
	n, _ := syscall.Read(int(r.Fd()), buf)
	if string(buf[:max(n, 0)]) != "abc" {
		t.Fatalf("the caller's stdin was read by someone else: got back %q", buf[:max(n, 0)])
	}
}

// As soon as the stand-in has exited, the container reads stopped and a
// plain delete succeeds: containerd's shim deletes the moment it has reaped
// the stand-in (a race once lost under load, leaving a VM behind).
func TestDeleteRightAfterStandInExits(t *testing.T) {
	e := newEnv(t)
	reapStandIns(t)
	for i := 0; i < 5; i++ {
		id := e.id()
		standIn := e.create(id, "true")
		e.mustRun("start", id)
		if status := waitExitStatus(t, standIn); status != 0 {
			t.Fatalf("stand-in status %d", status)
		}
		if r := e.run("", "delete", id); r.status != 0 {
			t.Fatalf("delete right after exit: status %d, stderr %q", r.status, r.stderr)
		}
	}
}
