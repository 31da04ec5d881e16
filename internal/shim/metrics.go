package shim

import (
	"encoding/json"
	"fmt"

	v2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/opencontainers/cgroups"
)

// metricsOf converts the guest's cgroup statistics (libcontainer's
// cgroups.Stats as JSON, read from the guest's cgroup v2 files) into
// containerd's cgroup v2 metrics, which `ctr task metrics` and the CRI
// stats calls decode.
func metricsOf(statsJSON []byte) (*v2stats.Metrics, error) {
	var st cgroups.Stats
	if err := json.Unmarshal(statsJSON, &st); err != nil {
		return nil, fmt.Errorf("decoding the guest's cgroup statistics: %w", err)
	}
	mem := st.MemoryStats
	stat := func(key string) uint64 { return mem.Stats[key] }
	const nsPerUsec = 1000
	cpu := st.CpuStats
	return &v2stats.Metrics{
		Pids: &v2stats.PidsStat{Current: st.PidsStats.Current, Limit: st.PidsStats.Limit},
		CPU: &v2stats.CPUStat{
			UsageUsec:     cpu.CpuUsage.TotalUsage / nsPerUsec,
			UserUsec:      cpu.CpuUsage.UsageInUsermode / nsPerUsec,
			SystemUsec:    cpu.CpuUsage.UsageInKernelmode / nsPerUsec,
			NrPeriods:     cpu.ThrottlingData.Periods,
			NrThrottled:   cpu.ThrottlingData.ThrottledPeriods,
			ThrottledUsec: cpu.ThrottlingData.ThrottledTime / nsPerUsec,
		},
		Memory: &v2stats.MemoryStat{
			Usage:      mem.Usage.Usage,
			UsageLimit: mem.Usage.Limit,
			// Swap alone (memory.swap.current), as containerd reports it
			// for cgroup v2.
			SwapUsage:         mem.SwapOnlyUsage.Usage,
			SwapLimit:         mem.SwapOnlyUsage.Limit,
			Anon:              stat("anon"),
			File:              stat("file"),
			KernelStack:       stat("kernel_stack"),
			Slab:              stat("slab"),
			Sock:              stat("sock"),
			Shmem:             stat("shmem"),
			FileMapped:        stat("file_mapped"),
			FileDirty:         stat("file_dirty"),
			FileWriteback:     stat("file_writeback"),
			AnonThp:           stat("anon_thp"),
			InactiveAnon:      stat("inactive_anon"),
			ActiveAnon:        stat("active_anon"),
			InactiveFile:      stat("inactive_file"),
			ActiveFile:        stat("active_file"),
			Unevictable:       stat("unevictable"),
			SlabReclaimable:   stat("slab_reclaimable"),
			SlabUnreclaimable: stat("slab_unreclaimable"),
			Pgfault:           stat("pgfault"),
			Pgmajfault:        stat("pgmajfault"),
		},
	}, nil
}
