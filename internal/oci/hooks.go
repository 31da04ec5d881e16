package oci

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// HookPoint names one of the spec's lists of hooks.
type HookPoint string

// The hook points husk runs on the host. createContainer and
// startContainer hooks must run in the container's namespaces, which are
// inside the VM, where the host's programs are not: Validate refuses them.
const (
	Prestart      HookPoint = "prestart"
	CreateRuntime HookPoint = "createRuntime"
	Poststart     HookPoint = "poststart"
	Poststop      HookPoint = "poststop"
)

// defaultHookTimeout bounds a hook that sets no timeout of its own: one
// that hangs must not hang the container's create or delete forever.
const defaultHookTimeout = 2 * time.Minute

// Hooks returns the spec's hooks at point.
func Hooks(spec *specs.Spec, point HookPoint) []specs.Hook {
	h := spec.Hooks
	if h == nil {
		return nil
	}
	switch point {
	case Prestart:
		//lint:ignore SA1019 deprecated by OCI, but what Docker's networking uses
		return h.Prestart
	case CreateRuntime:
		return h.CreateRuntime
	case Poststart:
		return h.Poststart
	case Poststop:
		return h.Poststop
	}
	return nil
}

// HasCreateHooks says whether the spec has hooks that run while the
// container is created: prestart and createRuntime. They may prepare the
// container's network namespace (Docker's libnetwork-setkey does), so they
// must run before the VM boots.
func HasCreateHooks(spec *specs.Spec) bool {
	return len(Hooks(spec, Prestart)) > 0 || len(Hooks(spec, CreateRuntime)) > 0
}

// RunHooks runs the hooks at point in order, each with the container's
// state as JSON on its stdin, as the OCI runtime spec says; the first that
// fails or times out ends the run with an error naming it.
func RunHooks(spec *specs.Spec, point HookPoint, state specs.State) error {
	input, err := json.Marshal(state)
	if err != nil {
		return fmt.Errorf("encoding the state for %s hooks: %w", point, err)
	}
	for i, hook := range Hooks(spec, point) {
		if err := runHook(hook, input); err != nil {
			return fmt.Errorf("%s hook %d (%s): %w", point, i, hook.Path, err)
		}
	}
	return nil
}

// RunCreateHooks runs the hooks of a container being created, prestart
// then createRuntime.
func RunCreateHooks(spec *specs.Spec, state specs.State) error {
	for _, point := range []HookPoint{Prestart, CreateRuntime} {
		if err := RunHooks(spec, point, state); err != nil {
			return err
		}
	}
	return nil
}

func runHook(hook specs.Hook, input []byte) error {
	timeout := defaultHookTimeout
	if hook.Timeout != nil {
		if *hook.Timeout <= 0 {
			return fmt.Errorf("timeout %d: must be positive", *hook.Timeout)
		}
		timeout = time.Duration(*hook.Timeout) * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, hook.Path)
	if len(hook.Args) > 0 {
		// args[0] is the hook's argv[0], as in execv.
		cmd.Args = hook.Args
	}
	cmd.Env = hook.Env
	cmd.Stdin = bytes.NewReader(input)
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	// A child the hook leaves behind holding its output must not hold the
	// hook's caller past the timeout.
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("timed out after %s", timeout)
	}
	if err != nil {
		if msg := strings.TrimSpace(output.String()); msg != "" {
			return fmt.Errorf("%w: %s", err, msg)
		}
		return err
	}
	return nil
}
