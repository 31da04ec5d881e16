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
// of this state root, by that container's process, /proc/PID/ns/net (what
// Docker's --network container:NAME and Podman's --network container:NAME
// give), or by the namespace its sandbox was joined to, joins the other
// container's sandbox: it runs in the same VM, in
// the same network namespace in the guest, as it would share the namespace
// under runc. The PID is the other container's stand-in, whose own network
// namespace is the host's and says nothing.
//
// The joined container has no daemon of its own: its state names the
// sandbox's container, whose daemon serves its requests. The sandbox ends
// with the container that made it; containers that joined it are stopped
// with it.

var procNetNS = regexp.MustCompile(`^/proc/([0-9]+)/ns/net$`)

// sandboxToJoin returns the running container of this root whose sandbox
// a container with this spec joins, or nil: the spec names that
// container's stand-in by /proc/PID/ns/net, or names, by any path, the
// host-side network namespace that container's sandbox is joined to (a
// second container given the same CNI namespace, or the pid that its hooks
// saw). A second sandbox joined to the same namespace would put a second
// set of taps and redirects on its interfaces and break the first's
// network. The host's own namespace is never joined this way: a container
// that names it gets loopback only, in a VM of its own.
func sandboxToJoin(g *globals, spec *specs.Spec) *state.State {
	path, ok := oci.NetworkNamespace(spec)
	if !ok || path == "" {
		return nil
	}
	all, err := g.store().List()
	if err != nil {
		return nil
	}
	ownerOf := func(st *state.State) *state.State {
		if st.Sandbox == "" {
			return st
		}
		for _, owner := range all {
			if owner.ID == st.Sandbox {
				return owner
			}
		}
		return nil
	}
	live := func(st *state.State) bool { return st.Daemon.Alive() && st.Status != state.Stopped }
	if m := procNetNS.FindStringSubmatch(path); m != nil {
		if pid, err := strconv.Atoi(m[1]); err == nil {
			for _, st := range all {
				if st.StandIn.PID == pid && st.StandIn.Alive() && live(st) {
					return ownerOf(st)
				}
			}
		}
	}
	want, err := oci.NamespaceOf(path)
	if err != nil {
		return nil
	}
	if host, err := oci.NamespaceOf("/proc/self/ns/net"); err != nil || want == host {
		return nil
	}
	for _, st := range all {
		if st.Sandbox != "" || !live(st) {
			continue
		}
		if ns, err := oci.NamespaceOf(sandboxNetNS(st)); err == nil && ns == want {
			return st
		}
	}
	return nil
}

// sandboxNetNS is the host-side network namespace a sandbox was joined to
// at boot ("" for none).
func sandboxNetNS(st *state.State) string {
	spec, err := oci.ReadSpec(st.Bundle)
	if err != nil {
		return ""
	}
	return hostNetNS(st, spec)
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
		if err := oci.RunCreateHooks(bundle.Spec, hookState); err != nil {
			return nil, err
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
