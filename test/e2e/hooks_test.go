package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// writeHook writes an executable shell script and returns its path.
func writeHook(t *testing.T, dir, name, body string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte("#!/bin/sh\nset -e\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// readHookState reads the state a hook saved from its stdin.
func readHookState(t *testing.T, path string) specs.State {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the hook did not run: %v", err)
	}
	var st specs.State
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatalf("hook state %q: %v", data, err)
	}
	return st
}

// networkHooks writes, into dir, a prestart hook that does what Docker's
// libnetwork-setkey does: it moves the fixture's interface from namespace A
// into the namespace of the pid in its state, and configures it there (an
// interface's addresses and routes stay behind when it moves); and
// poststart and poststop hooks that save their state. Each hook saves its
// state as dir/NAME.json.
func networkHooks(t *testing.T, dir string, f *netFixture) *specs.Hooks {
	t.Helper()
	prestart := writeHook(t, dir, "prestart", fmt.Sprintf(`state=$(cat)
echo "$state" > %[1]s/prestart.json
pid=$(echo "$state" | sed -n 's/.*"pid":\([0-9]*\).*/\1/p')
ip -n %[2]s link set %[3]s netns /proc/$pid/ns/net
nsenter --net=/proc/$pid/ns/net sh -c 'ip addr add %[4]s/24 dev %[3]s && ip link set %[3]s mtu %[5]s up && ip link set lo up && ip route add default via %[6]s'
`, dir, f.a, f.vethA, f.addrA, f.mtu, f.addrB))
	return &specs.Hooks{
		//lint:ignore SA1019 deprecated by OCI, but the hook Docker's networking uses
		Prestart:  []specs.Hook{{Path: prestart}},
		Poststart: []specs.Hook{{Path: writeHook(t, dir, "poststart", "cat > "+dir+"/poststart.json\n"), Args: []string{"poststart", "arg"}}},
		Poststop:  []specs.Hook{{Path: writeHook(t, dir, "poststop", "cat > "+dir+"/poststop.json\n")}},
	}
}

// checkHookStates checks the states networkHooks' hooks saved for the
// container id, and that the namespace holder the prestart hook saw is
// gone; it returns the prestart hook's state.
func checkHookStates(t *testing.T, dir, id string) specs.State {
	t.Helper()
	created := readHookState(t, filepath.Join(dir, "prestart.json"))
	if created.ID != id || created.Status != specs.StateCreating || created.Pid == 0 {
		t.Errorf("prestart hook's state: %+v", created)
	}
	if st := readHookState(t, filepath.Join(dir, "poststart.json")); st.ID != id || st.Status != specs.StateRunning {
		t.Errorf("poststart hook's state: %+v", st)
	}
	if st := readHookState(t, filepath.Join(dir, "poststop.json")); st.ID != id || st.Status != specs.StateStopped {
		t.Errorf("poststop hook's state: %+v", st)
	}
	if !gone(created.Pid) {
		t.Errorf("the network namespace holder %d outlived the container", created.Pid)
	}
	return created
}

// TestHooksPrepareTheNetwork: a spec that asks for a new network namespace
// and carries a prestart hook that moves an interface into it (what
// Docker's libnetwork-setkey does for its bridge networks): the hook runs
// on the host with the state on its stdin, the VM boots joined to the
// interface it moved, the container fetches a file across it, and the
// poststart and poststop hooks see the container running and stopped. The
// namespace's holder is gone afterwards.
func TestHooksPrepareTheNetwork(t *testing.T) {
	f := newNetFixture(t) // before the env: its leak check runs after the env's clean-up
	e := newEnv(t)
	const port = 18093
	f.serveFromB(t, port, "greeting", "hello across the hook's veth\n")

	dir := t.TempDir()
	id := e.id()
	b := e.bundle(func(s *specs.Spec) {
		s.Hooks = networkHooks(t, dir, f)
	}, "sh", "-c", fmt.Sprintf("cat /sys/class/net/%s/mtu; wget -q -O - http://%s:%d/greeting", f.vethA, f.addrB, port))
	r := e.run("", "run", "--bundle", b, id)
	if r.status != 0 || r.stdout != f.mtu+"\nhello across the hook's veth\n" {
		t.Fatalf("run: status %d, stdout %q, stderr %q", r.status, r.stdout, r.stderr)
	}

	if created := checkHookStates(t, dir, id); created.Bundle != b {
		t.Errorf("prestart hook's state names bundle %q, want %q", created.Bundle, b)
	}
}

// TestFailingHookLeavesNothing: a prestart hook that fails ends the create
// with an error naming the hook and carrying its output, and leaves no
// sandbox, state or namespace holder behind (the leak check, and the pid
// the hook saw).
func TestFailingHookLeavesNothing(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	hook := writeHook(t, dir, "refuse", "sed -n 's/.*\"pid\":\\([0-9]*\\).*/\\1/p' > "+dir+"/pid\necho 'no network for you' >&2\nexit 3\n")
	b := e.bundle(func(s *specs.Spec) {
		s.Hooks = &specs.Hooks{CreateRuntime: []specs.Hook{{Path: hook}}}
	}, "true")
	r := e.run("", "run", "--bundle", b, e.id())
	if r.status == 0 || !strings.Contains(r.stderr, "createRuntime hook 0 ("+hook+")") || !strings.Contains(r.stderr, "no network for you") {
		t.Fatalf("run with a failing hook: status %d, stderr %q", r.status, r.stderr)
	}
	data, err := os.ReadFile(filepath.Join(dir, "pid"))
	var pid int
	if _, scanErr := fmt.Sscan(string(data), &pid); err != nil || scanErr != nil {
		t.Fatalf("the hook saw no pid: %q, %v", data, err)
	}
	if !gone(pid) {
		t.Errorf("the network namespace holder %d outlived the failed create", pid)
	}
}

// TestHooksInTheContainerRefused: createContainer and startContainer hooks
// would have to run inside the VM: refused with the field named; a hook
// with a relative path too.
func TestHooksInTheContainerRefused(t *testing.T) {
	e := newEnv(t)
	for name, hooks := range map[string]*specs.Hooks{
		"hooks.createContainer":   {CreateContainer: []specs.Hook{{Path: "/bin/true"}}},
		"hooks.startContainer":    {StartContainer: []specs.Hook{{Path: "/bin/true"}}},
		"hooks.poststart[0].path": {Poststart: []specs.Hook{{Path: "true"}}},
	} {
		b := e.bundle(func(s *specs.Spec) { s.Hooks = hooks }, "true")
		if r := e.run("", "run", "--bundle", b, e.id()); r.status == 0 || !strings.Contains(r.stderr, name) {
			t.Errorf("%s: status %d, stderr %q", name, r.status, r.stderr)
		}
	}
}

// TestCtrHooksPrepareTheNetwork: the same through containerd and husk's
// shim (a spec given to `ctr run --config`, as nerdctl's networking hook
// would come): the prestart hook moves an interface into the namespace the
// shim made, the sandbox boots joined to it, and poststart and poststop
// run.
func TestCtrHooksPrepareTheNetwork(t *testing.T) {
	c := newCtrEnv(t)
	f := newNetFixture(t)
	const port = 18095
	f.serveFromB(t, port, "greeting", "hello through the shim\n")
	dir := t.TempDir()
	specPath := c.specFile(func(s *specs.Spec) {
		s.Hooks = networkHooks(t, dir, f)
	}, "wget", "-q", "-O", "-", fmt.Sprintf("http://%s:%d/greeting", f.addrB, port))
	id := c.id()
	r := c.run("", append(runFlags, "--rm", "--config", specPath, id)...)
	if r.status != 0 || r.stdout != "hello through the shim\n" {
		t.Fatalf("ctr run: status %d, stdout %q, stderr %q", r.status, r.stdout, r.stderr)
	}
	checkHookStates(t, dir, id)
}
