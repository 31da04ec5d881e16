package agent

import (
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestMergeResourcesKeepsUnsetFields(t *testing.T) {
	limit, newLimit, shares, pids := int64(64<<20), int64(128<<20), uint64(512), int64(10)
	base := &specs.LinuxResources{
		Memory: &specs.LinuxMemory{Limit: &limit},
		CPU:    &specs.LinuxCPU{Shares: &shares},
	}
	got := mergeResources(base, &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &newLimit}, Pids: &specs.LinuxPids{Limit: &pids}})
	if *got.Memory.Limit != newLimit || *got.CPU.Shares != shares || *got.Pids.Limit != 10 {
		t.Fatalf("merged = %+v", got)
	}
	if *base.Memory.Limit != limit {
		t.Fatal("base was modified")
	}
	if got := mergeResources(nil, &specs.LinuxResources{}); got == nil {
		t.Fatal("nil base gave nil")
	}
}

func TestParseCmdline(t *testing.T) {
	p, err := ParseCmdline("console=ttyS0 husk.msize=65536 husk.debug=1 quiet")
	if err != nil || p.MSize != 65536 || !p.Debug {
		t.Fatalf("params %+v, %v", p, err)
	}
	if _, err := ParseCmdline("husk.msize=tiny"); err == nil {
		t.Fatal("bad msize accepted")
	}
}

// Network sysctls are applied by the agent only for a container that joins
// the guest's network namespace; a name that is not a sysctl's is refused
// before anything is written.
func TestApplyGuestNetworkSysctls(t *testing.T) {
	own := &specs.Spec{Linux: &specs.Linux{
		Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace}},
		Sysctl:     map[string]string{"net.ipv4.ip_unprivileged_port_start": "0"},
	}}
	if err := applyGuestNetworkSysctls(own); err != nil || len(own.Linux.Sysctl) != 1 {
		t.Errorf("a container with a network namespace of its own: %v, sysctls %v; want them left to libcontainer", err, own.Linux.Sysctl)
	}
	for _, key := range []string{"net.ipv4/../../kernel.x", "net..x", "net.a/b"} {
		joins := &specs.Spec{Linux: &specs.Linux{
			// The agent's own namespace (in the guest, channel.GuestNetNS).
			Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace, Path: "/proc/self/ns/net"}},
			Sysctl:     map[string]string{key: "1"},
		}}
		if err := applyGuestNetworkSysctls(joins); err == nil || !strings.Contains(err.Error(), "not a sysctl name") {
			t.Errorf("sysctl %q: %v, want refused", key, err)
		}
	}
}
