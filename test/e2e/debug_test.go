package e2e

import (
	"strings"
	"testing"
)

// TestDebugConsole: with debug_console set, `husk debug-console` opens a
// shell in the guest beside the agent, outside the container, that sees the
// container's processes; without it, a clear refusal.
func TestDebugConsole(t *testing.T) {
	e := newEnv(t)
	e.writeConfig("[runtime]\ndebug_console = true\n")
	id := e.id()
	e.create(id)
	e.start(id)
	// /init run by hand refuses: it is the agent, which as anything but
	// PID 1 would take the guest down with it.
	script := "echo sum=$((6*7)); cat /proc/1/cmdline; echo; ps; /init; echo init=$?; exit\n"
	r := e.run(script, "debug-console", id)
	if r.status != 0 {
		t.Fatalf("debug-console: status %d, stdout %q, stderr %q", r.status, r.stdout, r.stderr)
	}
	for _, want := range []string{
		"sum=42",       // a working shell
		"/init",        // PID 1 is the agent: the shell is in the guest, not the container
		"sleep 0.1",    // the container's processes are in sight
		"husk-guest# ", // its prompt
		"runs only as the guest's init (PID 1)",
		"init=1",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("debug console output lacks %q:\n%s", want, r.stdout)
		}
	}
	if r := e.run("", "exec", id, "echo", "still up"); r.status != 0 || r.stdout != "still up\n" {
		t.Errorf("exec after /init in the debug console: status %d, stdout %q, stderr %q", r.status, r.stdout, r.stderr)
	}
	e.mustRun("delete", "--force", id)

	e.writeConfig("")
	id = e.id()
	e.create(id)
	e.start(id)
	r = e.run("exit\n", "debug-console", id)
	if r.status == 0 || !strings.Contains(r.stderr, "debug console is not enabled") {
		t.Errorf("debug-console without debug_console: status %d, stderr %q", r.status, r.stderr)
	}
	e.mustRun("delete", "--force", id)
}
