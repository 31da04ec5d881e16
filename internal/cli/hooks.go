package cli

import (
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"

	"github.com/husk-runtime/husk/internal/oci"
	"github.com/husk-runtime/husk/internal/state"
)

// The OCI hooks run on the host, from the command line, in the host's mount
// namespace, as runc runs them: prestart and createRuntime while the
// container is created, before its VM boots; poststart after start;
// poststop after delete.
//
// The state they read names a process whose network namespace is the
// container's host-side one: the one the spec names, or, when the spec asks
// for a new network namespace, one husk makes for the container. Docker's
// libnetwork-setkey prestart hook moves the container's interfaces into that
// namespace; the VM, booted after the hooks, is joined to them as to any
// namespace a spec names (see internal/network). The process is a holder
// that husk starts for this and ends with the sandbox: the container's own
// process is inside the VM and, at create, not even there yet.

// runCreateHooks runs the prestart and createRuntime hooks of a container
// being created, if it has any, with a holder of the container's network
// namespace recorded in st for the sandbox to boot with. If a hook fails,
// the holder is ended again.
func runCreateHooks(st *state.State, spec *specs.Spec) error {
	if !oci.HasCreateHooks(spec) {
		return nil
	}
	holder, err := oci.StartNetNSHolder(spec)
	if err != nil {
		return err
	}
	st.NetNSHolder = holder
	hookState := hookStateOf(st, specs.StateCreating)
	if err := oci.RunCreateHooks(spec, hookState); err != nil {
		oci.StopNetNSHolder(holder)
		st.NetNSHolder = state.Process{}
		return err
	}
	return nil
}

// hostNetNS is the host-side network namespace the container's sandbox
// joins: the one the spec names, or the one made for its hooks when the
// spec asks for a new one, while its holder lives (its pid may name
// another process afterwards); "" for none.
func hostNetNS(st *state.State, spec *specs.Spec) string {
	path, ok := oci.NetworkNamespace(spec)
	if ok && path == "" && st.NetNSHolder.Alive() {
		return oci.NetNSOf(st.NetNSHolder.PID)
	}
	return path
}

// runHooksWarning runs hooks whose failure the OCI spec makes a warning:
// poststart and poststop.
func runHooksWarning(st *state.State, point oci.HookPoint, status specs.ContainerState) {
	spec, err := oci.ReadSpec(st.Bundle)
	if err != nil || len(oci.Hooks(spec, point)) == 0 {
		return
	}
	hookState := hookStateOf(st, status)
	if status == specs.StateStopped {
		hookState.Pid = 0 // gone, and its number may be another process's by now
	}
	if err := oci.RunHooks(spec, point, hookState); err != nil {
		logrus.Warn(err)
	}
}

// hookStateOf is the state a hook reads on its stdin.
func hookStateOf(st *state.State, status specs.ContainerState) specs.State {
	pid := st.StandIn.PID
	if st.NetNSHolder.PID != 0 {
		pid = st.NetNSHolder.PID
	}
	return specs.State{
		Version: specs.Version, ID: st.ID, Status: status, Pid: pid,
		Bundle: st.Bundle, Annotations: st.Annotations,
	}
}
