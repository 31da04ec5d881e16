package agent

import (
	"testing"

	"github.com/opencontainers/runc/libcontainer/configs"
)

// TestWarmUpSpec: the warm-up container's spec converts to a libcontainer
// config that takes the steps a real container's takes: its own
// namespaces, a read-only root with the agent's binary bound in, device
// rules and a seccomp filter, and the binary as its process.
func TestWarmUpSpec(t *testing.T) {
	spec := warmUpSpec("/run/husk-warm-up-1/rootfs")
	cfg, err := newContainerConfig(warmUpID, spec)
	if err != nil {
		t.Fatalf("converting the warm-up spec: %v", err)
	}
	if cfg.Rootfs != "/run/husk-warm-up-1/rootfs" || !cfg.Readonlyfs {
		t.Errorf("rootfs %q read-only %v", cfg.Rootfs, cfg.Readonlyfs)
	}
	for _, ns := range []configs.NamespaceType{configs.NEWNS, configs.NEWPID, configs.NEWIPC, configs.NEWUTS, configs.NEWNET, configs.NEWCGROUP} {
		if !cfg.Namespaces.Contains(ns) || cfg.Namespaces.PathOf(ns) != "" {
			t.Errorf("namespace %s: not a new one", ns)
		}
	}
	bound := false
	for _, m := range cfg.Mounts {
		if m.Destination == warmUpExe && m.Source == "/init" && m.IsBind() {
			bound = true
		}
	}
	if !bound {
		t.Errorf("the agent's binary is not bound at %s: %+v", warmUpExe, cfg.Mounts)
	}
	if cfg.Seccomp == nil || len(cfg.Seccomp.Syscalls) == 0 {
		t.Errorf("no seccomp filter: %+v", cfg.Seccomp)
	}
	if cfg.Cgroups == nil || cfg.Cgroups.Resources == nil || len(cfg.Cgroups.Resources.Devices) == 0 {
		t.Errorf("no device rules in the cgroup")
	}
	cgroupNamespaces := 0
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == "cgroup" {
			cgroupNamespaces++
		}
	}
	if cgroupNamespaces != 1 {
		t.Errorf("%d cgroup namespaces in the spec, want 1", cgroupNamespaces)
	}
	if got := spec.Process.Args; len(got) != 2 || got[0] != warmUpExe || got[1] != WarmUpArg || spec.Process.Terminal {
		t.Errorf("process %q terminal %v", got, spec.Process.Terminal)
	}
}
