package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// newTemplateEnv is a test environment whose templates go to a directory of
// its own, so that the test sees them made; extra is more [hypervisor] TOML.
func newTemplateEnv(t *testing.T, extra string) (e *env, templates string) {
	e = newEnv(t)
	templates = filepath.Join(t.TempDir(), "templates")
	e.writeConfig(fmt.Sprintf("template_dir = %q\n%s", templates, extra))
	t.Cleanup(func() {
		out, _ := exec.Command("pgrep", "-af", "qemu-system.*sandbox-template-").Output()
		if strings.Contains(string(out), templates) {
			t.Errorf("a template's QEMU was left running: %s", out)
		}
		if left, _ := filepath.Glob(filepath.Join(templates, "*.making-*")); len(left) > 0 {
			t.Errorf("a template being made was left: %v", left)
		}
	})
	return e, templates
}

// runDetached is `husk run -d`. The stand-in inherits its stdio, as a
// container inherits runc's: a pipe there would stay open as long as the
// container runs, so its output goes to files.
func (e *env) runDetached(bundle, id string) result {
	e.t.Helper()
	return e.runDetachedTo(bundle, id, os.DevNull)
}

// runDetachedTo is runDetached with the container's output to the file out.
func (e *env) runDetachedTo(bundle, id, out string) result {
	e.t.Helper()
	stdout, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		e.t.Error(err) // not Fatal: this runs on the test's goroutines too
		return result{status: -1}
	}
	defer stdout.Close()
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		e.t.Error(err) // not Fatal: this runs on the test's goroutines too
		return result{status: -1}
	}
	defer devnull.Close()
	errFile, err := os.CreateTemp(e.t.TempDir(), "stderr")
	if err != nil {
		e.t.Error(err) // not Fatal: this runs on the test's goroutines too
		return result{status: -1}
	}
	defer errFile.Close()
	cmd := e.command("run", "-d", "--bundle", bundle, id)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, stdout, errFile
	status := 0
	if err := cmd.Run(); err != nil {
		exitErr, ok := err.(*exec.ExitError)
		if !ok {
			e.t.Errorf("%v: %v", cmd.Args, err)
			return result{status: -1}
		}
		status = exitErr.ExitCode()
	}
	stderr, _ := os.ReadFile(errFile.Name())
	return result{stderr: string(stderr), status: status}
}

func (e *env) daemonLog(id string) string {
	e.t.Helper()
	data, err := os.ReadFile(filepath.Join(e.root, "state", id, "daemon.log"))
	if err != nil {
		e.t.Fatal(err)
	}
	return string(data)
}

// templatesIn lists the complete templates in dir.
func templatesIn(t *testing.T, dir string) []string {
	t.Helper()
	states, _ := filepath.Glob(filepath.Join(dir, "*", "state"))
	var names []string
	for _, s := range states {
		if !strings.Contains(s, ".making-") {
			names = append(names, filepath.Base(filepath.Dir(s)))
		}
	}
	return names
}

func (e *env) execOut(id string, args ...string) string {
	e.t.Helper()
	r := e.run("", append([]string{"exec", id}, args...)...)
	if r.status != 0 {
		e.t.Fatalf("exec %v: status %d, stderr %q", args, r.status, r.stderr)
	}
	return strings.TrimSpace(r.stdout)
}

// TestTemplateRestoresGuests: the first sandbox makes the template and
// both it and the next are restored from it. Restored guests are clones of
// one saved guest, random generator included, yet each has the host's clock
// and random bytes of its own, and maps the template's RAM rather than a
// copy of it.
func TestTemplateRestoresGuests(t *testing.T) {
	e, templates := newTemplateEnv(t, "")
	bundle := e.bundle(nil, "sleep", "600")
	first, second := e.id(), e.id()
	if r := e.runDetached(bundle, first); r.status != 0 {
		t.Fatalf("run %s: status %d, stderr %q", first, r.status, r.stderr)
	}
	defer e.run("", "delete", "-f", first)
	log := e.daemonLog(first)
	if !strings.Contains(log, "template made") || !strings.Contains(log, "restored=true") {
		t.Fatalf("the first sandbox did not make the template and restore it:\n%s", log)
	}
	made := templatesIn(t, templates)
	if len(made) != 1 {
		t.Fatalf("templates in %s: %v, want one", templates, made)
	}
	// The template's own clock stopped when it was saved: a guest that
	// kept it would now be this far behind.
	time.Sleep(4 * time.Second)
	if r := e.runDetached(bundle, second); r.status != 0 {
		t.Fatalf("run %s: status %d, stderr %q", second, r.status, r.stderr)
	}
	defer e.run("", "delete", "-f", second)
	log = e.daemonLog(second)
	if strings.Contains(log, "template made") || !strings.Contains(log, "restored=true") {
		t.Fatalf("the second sandbox did not restore the first one's template:\n%s", log)
	}

	guestNow, err := strconv.ParseInt(e.execOut(second, "date", "+%s"), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	if skew := time.Now().Unix() - guestNow; skew < -2 || skew > 2 {
		t.Errorf("the restored guest's clock is %d s off the host's", skew)
	}
	// A container's first process draws about a second into the restored
	// guest's uptime, before the kernel's own early reseed: without the
	// hello's entropy every guest restored from one template draws the same
	// bytes here (seen with the reseed taken out of the agent).
	drawFirst := e.bundle(nil, "sh", "-c", "head -c 32 /dev/urandom | od -An -tx1")
	var random [2]string
	for i := range random {
		id, out := e.id(), filepath.Join(t.TempDir(), "drawn")
		if r := e.runDetachedTo(drawFirst, id, out); r.status != 0 {
			t.Fatalf("run: status %d, stderr %q", r.status, r.stderr)
		}
		waitFor(t, id+" to read stopped", func() bool { status, _ := e.state(id); return status == "stopped" })
		if !strings.Contains(e.daemonLog(id), "restored=true") {
			t.Errorf("%s was not restored from the template", id)
		}
		e.mustRun("delete", id)
		drawn, _ := os.ReadFile(out)
		random[i] = strings.TrimSpace(string(drawn))
	}
	if random[0] == random[1] || len(random[0]) < 64 {
		t.Errorf("containers in restored guests drew the same random bytes: %q", random)
	}

	_, qemu := e.sandboxPIDs(second)
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", qemu))
	if err != nil {
		t.Fatal(err)
	}
	if memory := filepath.Join(templates, made[0], "memory"); !strings.Contains(string(maps), memory) {
		t.Errorf("QEMU does not map the template's RAM %s", memory)
	}
	for _, id := range []string{first, second} {
		if r := e.run("", "delete", "-f", id); r.status != 0 {
			t.Errorf("delete %s: status %d, stderr %q", id, r.status, r.stderr)
		}
	}
	if got := templatesIn(t, templates); len(got) != 1 || got[0] != made[0] {
		t.Errorf("templates after the sandboxes ended: %v, want %v kept", got, made)
	}
}

// TestTemplateMadeOnce: creates that find no template wait for the one
// that makes it, and all restore it.
func TestTemplateMadeOnce(t *testing.T) {
	e, templates := newTemplateEnv(t, "")
	bundle := e.bundle(nil, "sleep", "600")
	ids := []string{e.id(), e.id(), e.id()}
	var wg sync.WaitGroup
	results := make([]result, len(ids))
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = e.runDetached(bundle, id)
		}()
	}
	wg.Wait()
	for _, id := range ids {
		defer e.run("", "delete", "-f", id)
	}
	makers := 0
	for i, id := range ids {
		if results[i].status != 0 {
			t.Fatalf("run %s: status %d, stderr %q", id, results[i].status, results[i].stderr)
		}
		log := e.daemonLog(id)
		if strings.Contains(log, "template made") {
			makers++
		}
		if !strings.Contains(log, "restored=true") {
			t.Errorf("%s was not restored:\n%s", id, log)
		}
	}
	if makers != 1 {
		t.Errorf("%d sandboxes made a template, want 1", makers)
	}
	if got := templatesIn(t, templates); len(got) != 1 {
		t.Errorf("templates: %v, want one", got)
	}
}

// TestTemplateFallsBackToBooting: a template QEMU cannot load is dropped and
// the guest boots; so does a guest whose template directory cannot be made,
// and every guest when templates are off.
func TestTemplateFallsBackToBooting(t *testing.T) {
	t.Run("corrupt state", func(t *testing.T) {
		e, templates := newTemplateEnv(t, "")
		bundle := e.bundle(nil, "true")
		if r := e.run("", "run", "--bundle", bundle, e.id()); r.status != 0 {
			t.Fatalf("run: status %d, stderr %q", r.status, r.stderr)
		}
		made := templatesIn(t, templates)
		if len(made) != 1 {
			failed, _ := filepath.Glob(filepath.Join(templates, "*.failed"))
			var why []byte
			if len(failed) > 0 {
				why, _ = os.ReadFile(failed[0])
			}
			t.Fatalf("templates: %v, want one; failed: %s", made, why)
		}
		state := filepath.Join(templates, made[0], "state")
		if err := os.WriteFile(state, []byte("QEVM\x00\x00\x00\x03 not a saved machine"), 0o600); err != nil {
			t.Fatal(err)
		}
		id := e.id()
		if r := e.runDetached(e.bundle(nil, "sleep", "600"), id); r.status != 0 {
			t.Fatalf("run with a corrupt template: status %d, stderr %q", r.status, r.stderr)
		}
		defer e.run("", "delete", "-f", id)
		log := e.daemonLog(id)
		if !strings.Contains(log, "restoring the guest from its template failed") || !strings.Contains(log, "restored=false") {
			t.Errorf("no fallback to a boot in the daemon's log:\n%s", log)
		}
		if _, err := os.Stat(state); !os.IsNotExist(err) {
			t.Errorf("the template QEMU could not load is still there: %v", err)
		}
		if out := e.execOut(id, "echo", "booted"); out != "booted" {
			t.Errorf("exec in the booted guest: %q", out)
		}
	})
	t.Run("template directory unusable", func(t *testing.T) {
		e := newEnv(t)
		notADir := filepath.Join(t.TempDir(), "file")
		if err := os.WriteFile(notADir, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		e.writeConfig(fmt.Sprintf("template_dir = %q\n", filepath.Join(notADir, "templates")))
		id := e.id()
		if r := e.runDetached(e.bundle(nil, "sleep", "600"), id); r.status != 0 {
			t.Fatalf("run: status %d, stderr %q", r.status, r.stderr)
		}
		defer e.run("", "delete", "-f", id)
		if log := e.daemonLog(id); !strings.Contains(log, "no template") || !strings.Contains(log, "restored=false") {
			t.Errorf("no boot without a template in the daemon's log:\n%s", log)
		}
	})
	t.Run("templates off", func(t *testing.T) {
		e, templates := newTemplateEnv(t, "template = false\n")
		id := e.id()
		if r := e.runDetached(e.bundle(nil, "sleep", "600"), id); r.status != 0 {
			t.Fatalf("run: status %d, stderr %q", r.status, r.stderr)
		}
		defer e.run("", "delete", "-f", id)
		if log := e.daemonLog(id); !strings.Contains(log, "restored=false") {
			t.Errorf("the guest was not booted:\n%s", log)
		}
		if _, err := os.Stat(templates); !os.IsNotExist(err) {
			t.Errorf("template = false made %s: %v", templates, err)
		}
	})
}
