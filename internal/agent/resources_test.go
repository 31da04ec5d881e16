package agent

import (
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
