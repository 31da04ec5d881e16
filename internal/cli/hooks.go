package cli

import (
	"fmt"
	"os/exec"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

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

// startNetNSHolder starts the process that holds the container's host-side
// network namespace while the create hooks run and as long as the sandbox
// lives. It sleeps in the namespace the spec names, in a new one if the
// spec asks for one, or in the host's if the spec has none.
func startNetNSHolder(spec *specs.Spec) (state.Process, error) {
	sleep := []string{"sleep", "infinity"}
	var cmd *exec.Cmd
	// inPlace says whether the holder has entered its namespace: unshare
	// and nsenter exec sleep in the same process once it is in place, and
	// until then /proc/PID/ns/net is this process's.
	var inPlace func(pid int) bool
	switch path, ok := specNetworkNamespace(spec); {
	case ok && path == "":
		cmd = exec.Command("unshare", append([]string{"--net", "--"}, sleep...)...)
		own, err := namespaceOf("/proc/self/ns/net")
		if err != nil {
			return state.Process{}, err
		}
		inPlace = func(pid int) bool {
			ns, err := namespaceOf(fmt.Sprintf("/proc/%d/ns/net", pid))
			return err == nil && ns != own
		}
	case ok:
		cmd = exec.Command("nsenter", append([]string{"--net=" + path, "--"}, sleep...)...)
		target, err := namespaceOf(path)
		if err != nil {
			return state.Process{}, fmt.Errorf("the spec's network namespace %s: %w", path, err)
		}
		inPlace = func(pid int) bool {
			ns, err := namespaceOf(fmt.Sprintf("/proc/%d/ns/net", pid))
			return err == nil && ns == target
		}
	default:
		cmd = exec.Command(sleep[0], sleep[1:]...)
		inPlace = func(int) bool { return true }
	}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return state.Process{}, fmt.Errorf("starting the network namespace holder for the hooks: %w", err)
	}
	go func() { _ = cmd.Wait() }()
	holder := state.ProcessOf(cmd.Process.Pid)
	for deadline := time.Now().Add(5 * time.Second); !inPlace(holder.PID); time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) || !holder.Alive() {
			killProcess(holder)
			return state.Process{}, fmt.Errorf("the network namespace holder for the hooks did not start (%v)", cmd.Args)
		}
	}
	return holder, nil
}

// namespaceOf identifies the namespace a /proc/PID/ns file or a bind mount
// of one names.
func namespaceOf(path string) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsID{}, err
	}
	return nsID{st.Dev, st.Ino}, nil
}

type nsID struct{ dev, ino uint64 }

// specNetworkNamespace reports whether the spec has a network namespace
// and the path it names ("" for a new one).
func specNetworkNamespace(spec *specs.Spec) (path string, ok bool) {
	if spec.Linux == nil {
		return "", false
	}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			return ns.Path, true
		}
	}
	return "", false
}

// runCreateHooks runs the prestart and createRuntime hooks of a container
// being created, if it has any, with a holder of the container's network
// namespace recorded in st for the sandbox to boot with. If a hook fails,
// the holder is ended again.
func runCreateHooks(st *state.State, spec *specs.Spec) error {
	if !oci.HasCreateHooks(spec) {
		return nil
	}
	holder, err := startNetNSHolder(spec)
	if err != nil {
		return err
	}
	st.NetNSHolder = holder
	hookState := hookStateOf(st, specs.StateCreating)
	for _, point := range []oci.HookPoint{oci.Prestart, oci.CreateRuntime} {
		if err := oci.RunHooks(spec, point, hookState); err != nil {
			killProcess(holder)
			st.NetNSHolder = state.Process{}
			return err
		}
	}
	return nil
}

// hostNetNS is the host-side network namespace the container's sandbox
// joins: the one the spec names, or the one made for its hooks when the
// spec asks for a new one; "" for none.
func hostNetNS(st *state.State, spec *specs.Spec) string {
	path, ok := specNetworkNamespace(spec)
	if ok && path == "" && st.NetNSHolder.PID != 0 {
		return fmt.Sprintf("/proc/%d/ns/net", st.NetNSHolder.PID)
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

// killProcess ends a process husk started and waits for it to go.
func killProcess(p state.Process) {
	if p.Alive() {
		_ = unix.Kill(p.PID, unix.SIGKILL)
		waitGone(p, 5*time.Second)
	}
}
