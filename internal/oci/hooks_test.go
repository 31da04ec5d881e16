package oci

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestRunHooksPassesStateAndNamesFailures(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "state.json")
	timeout := 1
	spec := &specs.Spec{Hooks: &specs.Hooks{
		Poststart: []specs.Hook{
			{Path: "/bin/sh", Args: []string{"sh", "-c", "cat > " + out + "; echo $HOOK_ENV >> " + out}, Env: []string{"HOOK_ENV=from-the-spec"}},
			{Path: "/bin/sh", Args: []string{"sh", "-c", "echo refused >&2; exit 4"}},
			{Path: "/bin/sh", Args: []string{"sh", "-c", "touch " + dir + "/third"}},
		},
		Poststop: []specs.Hook{{Path: "/bin/sleep", Args: []string{"sleep", "5"}, Timeout: &timeout}},
	}}
	err := RunHooks(spec, Poststart, specs.State{ID: "c1", Status: specs.StateRunning, Pid: 42})
	if err == nil || !strings.Contains(err.Error(), "poststart hook 1 (/bin/sh)") || !strings.Contains(err.Error(), "refused") {
		t.Errorf("failing hook: %v", err)
	}
	data, _ := os.ReadFile(out)
	if !strings.Contains(string(data), `"id":"c1"`) || !strings.Contains(string(data), `"pid":42`) || !strings.Contains(string(data), "from-the-spec") {
		t.Errorf("the first hook read %q", data)
	}
	if _, err := os.Stat(filepath.Join(dir, "third")); err == nil {
		t.Error("a hook after the failing one ran")
	}
	if err := RunHooks(spec, Poststop, specs.State{}); err == nil || !strings.Contains(err.Error(), "timed out after 1s") {
		t.Errorf("hook past its timeout: %v", err)
	}
	if err := RunHooks(&specs.Spec{}, Prestart, specs.State{}); err != nil {
		t.Errorf("no hooks: %v", err)
	}
}

func TestValidateRefusesHooksInTheContainer(t *testing.T) {
	zero := 0
	for want, hooks := range map[string]*specs.Hooks{
		"hooks.createContainer":       {CreateContainer: []specs.Hook{{Path: "/bin/true"}}},
		"hooks.startContainer":        {StartContainer: []specs.Hook{{Path: "/bin/true"}}},
		"hooks.createRuntime[0].path": {CreateRuntime: []specs.Hook{{Path: "bin/true"}}},
		"hooks.poststop[0].timeout":   {Poststop: []specs.Hook{{Path: "/bin/true", Timeout: &zero}}},
	} {
		spec := DefaultSpec()
		spec.Hooks = hooks
		if err := Validate(spec); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v", want, err)
		}
	}
	spec := DefaultSpec()
	spec.Hooks = &specs.Hooks{CreateRuntime: []specs.Hook{{Path: "/bin/true"}}, Poststop: []specs.Hook{{Path: "/bin/true"}}}
	if err := Validate(spec); err != nil {
		t.Errorf("host-side hooks: %v", err)
	}
}
