package shim

import (
	"encoding/json"
	"testing"

	"github.com/opencontainers/cgroups"
)

func TestMetricsOfGuestStats(t *testing.T) {
	st := cgroups.NewStats()
	st.CpuStats.CpuUsage.TotalUsage = 5_000_000 // ns
	st.CpuStats.CpuUsage.UsageInUsermode = 3_000_000
	st.CpuStats.CpuUsage.UsageInKernelmode = 2_000_000
	st.CpuStats.ThrottlingData.ThrottledPeriods = 4
	st.MemoryStats.Usage.Usage = 1 << 20
	st.MemoryStats.Usage.Limit = 64 << 20
	st.MemoryStats.Stats["anon"] = 4096
	st.MemoryStats.Stats["file"] = 8192
	st.PidsStats.Current = 3
	st.PidsStats.Limit = 100
	data, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	m, err := metricsOf(data)
	if err != nil {
		t.Fatal(err)
	}
	if m.CPU.UsageUsec != 5000 || m.CPU.UserUsec != 3000 || m.CPU.SystemUsec != 2000 || m.CPU.NrThrottled != 4 {
		t.Errorf("cpu = %+v", m.CPU)
	}
	if m.Memory.Usage != 1<<20 || m.Memory.UsageLimit != 64<<20 || m.Memory.Anon != 4096 || m.Memory.File != 8192 {
		t.Errorf("memory = %+v", m.Memory)
	}
	if m.Pids.Current != 3 || m.Pids.Limit != 100 {
		t.Errorf("pids = %+v", m.Pids)
	}
	if _, err := metricsOf([]byte("{not json")); err == nil {
		t.Error("garbage accepted")
	}
}
