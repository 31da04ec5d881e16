package agent

import (
	"context"
	"os"
	"path/filepath"
	"slices"

	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentapi "github.com/husk-runtime/husk/api/agent/v1"
)

// WarmUpArg is the argument the warm-up container's process, the agent's
// own binary, is started with: it exits at once, before being the agent.
const WarmUpArg = "husk-warm-up"

// warmUpID names the warm-up container. The host's ids are its own; while
// the warm-up runs, the id is reserved like any container's.
const warmUpID = "husk-warm-up"

// warmUpExe is where the warm-up container finds the agent's binary.
const warmUpExe = "/husk-warm-up"

// WarmUp creates, starts, waits for and removes a throwaway container
// (see the API's comment for why). Its spec is runc's default one with a
// cgroup namespace and a small seccomp filter, so that each step a
// container's creation usually takes is taken: namespaces, mounts, the
// pivot into its root, devices, the cgroup, capabilities, the filter, the
// exec. Its root is an empty directory on the guest's /run with the
// agent's binary bound into it.
func (s *Service) WarmUp(ctx context.Context, _ *agentapi.Empty) (_ *agentapi.Empty, retErr error) {
	release, err := s.reserve(warmUpID)
	if err != nil {
		return nil, err
	}
	defer release()

	dir, err := os.MkdirTemp("/run", "husk-warm-up-")
	if err != nil {
		return nil, status.Errorf(codes.Internal, "warm-up: %v", err)
	}
	defer os.RemoveAll(dir)
	root := filepath.Join(dir, "rootfs")
	if err := os.Mkdir(root, 0o755); err != nil {
		return nil, status.Errorf(codes.Internal, "warm-up: %v", err)
	}
	spec := warmUpSpec(root)
	cfg, err := newContainerConfig(warmUpID, spec)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "warm-up: %v", err)
	}
	proc, err := s.initProcess(spec.Process)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "warm-up: %v", err)
	}
	lc, err := libcontainer.Create(stateDir, warmUpID, cfg)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "warm-up: creating the container: %v", err)
	}
	// A container whose state or cgroup stayed would fail a real one of
	// the same name later: the warm-up fails with it.
	defer func() {
		if err := lc.Destroy(); err != nil && retErr == nil {
			retErr = status.Errorf(codes.Internal, "warm-up: removing the container: %v", err)
		}
	}()
	p, err := s.startProcess(lc, warmUpID, "", proc, stdio{})
	if err != nil {
		return nil, status.Errorf(codes.Internal, "warm-up: %v", err)
	}
	if err := lc.Exec(); err != nil {
		return nil, status.Errorf(codes.Internal, "warm-up: starting the container: %v", err)
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		_ = lc.Signal(os.Kill)
		<-p.done
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	if p.status != 0 {
		return nil, status.Errorf(codes.Internal, "warm-up: the container's process exited with status %d", p.status)
	}
	return &agentapi.Empty{}, nil
}

// warmUpSpec is the warm-up container's spec, its root at root.
func warmUpSpec(root string) *specs.Spec {
	spec := specconv.Example()
	spec.Root = &specs.Root{Path: root, Readonly: true}
	spec.Process.Terminal = false
	spec.Process.Args = []string{warmUpExe, WarmUpArg}
	// Docker gives a container its own cgroup namespace; runc's default
	// spec does only on a cgroup v2 host.
	if !slices.ContainsFunc(spec.Linux.Namespaces, func(ns specs.LinuxNamespace) bool { return ns.Type == specs.CgroupNamespace }) {
		spec.Linux.Namespaces = append(spec.Linux.Namespaces, specs.LinuxNamespace{Type: specs.CgroupNamespace})
	}
	spec.Mounts = append(spec.Mounts, specs.Mount{
		Destination: warmUpExe, Type: "bind", Source: "/init", Options: []string{"bind", "ro"},
	})
	spec.Linux.Seccomp = &specs.LinuxSeccomp{
		DefaultAction: specs.ActAllow,
		Architectures: []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32},
		Syscalls: []specs.LinuxSyscall{{
			Names:  []string{"kexec_load", "open_by_handle_at", "reboot", "swapon", "swapoff"},
			Action: specs.ActErrno,
		}},
	}
	return spec
}
