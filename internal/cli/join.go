package cli

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/husk-runtime/husk/internal/config"
	"github.com/husk-runtime/husk/internal/oci"
	"github.com/husk-runtime/husk/internal/state"
)

// A container whose spec names the network namespace of another container
// of this state root by that container's process, /proc/PID/ns/net (what
// Docker's --network container:NAME and Podman's --network container:NAME
// give), joins the other container's sandbox: it runs in the same VM, in
// the same network namespace in the guest, as it would share the namespace
// under runc. The PID is the other container's stand-in, whose own network
// namespace is the host's and says nothing.
//
// The joined container has no daemon of its own: its state names the
// sandbox's container, whose daemon serves its requests. The sandbox ends
// with the container that made it; containers that joined it are stopped
// with it.

var procNetNS = regexp.MustCompile(`^/proc/([0-9]+)/ns/net$`)

// sandboxToJoin returns the running container of this root whose stand-in
// the spec's network namespace path names, or nil.
func sandboxToJoin(g *globals, spec *specs.Spec) *state.State {
	path, ok := specNetworkNamespace(spec)
	if !ok {
		return nil
	}
	m := procNetNS.FindStringSubmatch(path)
	if m == nil {
		return nil
	}
	pid, err := strconv.Atoi(m[1])
	if err != nil {
		return nil
	}
	all, err := g.store().List()
	if err != nil {
		return nil
	}
	for _, st := range all {
		if st.StandIn.PID != pid || !st.StandIn.Alive() || !st.Daemon.Alive() || st.Status == state.Stopped {
			continue
		}
		if st.Sandbox != "" {
			// It joined another itself: the sandbox is that one's.
			for _, owner := range all {
				if owner.ID == st.Sandbox {
					return owner
				}
			}
			return nil
		}
		return st
	}
	return nil
}

// joinSandbox records a container that joins owner's sandbox: no daemon is
// started; owner's serves it. Create hooks run with owner's network
// namespace holder, which holds the namespace the container joins.
func joinSandbox(g *globals, st *state.State, owner *state.State, bundle *oci.Bundle, cfg *config.Config) (*prepared, error) {
	if oci.HasCreateHooks(bundle.Spec) {
		if !owner.NetNSHolder.Alive() {
			return nil, fmt.Errorf("prestart and createRuntime hooks of a container that joins %s's network: %s's network namespace is the VM's, which no host process holds", owner.ID, owner.ID)
		}
		hookState := hookStateOf(&state.State{ID: st.ID, Bundle: st.Bundle, Annotations: st.Annotations, NetNSHolder: owner.NetNSHolder}, specs.StateCreating)
		for _, point := range []oci.HookPoint{oci.Prestart, oci.CreateRuntime} {
			if err := oci.RunHooks(bundle.Spec, point, hookState); err != nil {
				return nil, err
			}
		}
	}
	st.Sandbox, st.Daemon, st.QEMU = owner.ID, owner.Daemon, owner.QEMU
	if err := g.store().Create(st); err != nil {
		if errors.Is(err, state.ErrExist) {
			return nil, fmt.Errorf("container with id %s already exists", st.ID)
		}
		return nil, err
	}
	return &prepared{bundle: bundle, cfg: cfg}, nil
}
