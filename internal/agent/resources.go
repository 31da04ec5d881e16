package agent

import specs "github.com/opencontainers/runtime-spec/specs-go"

// mergeResources returns base with every limit that update sets replaced, as
// runc update does: fields the update leaves unset keep their values.
func mergeResources(base, update *specs.LinuxResources) *specs.LinuxResources {
	out := specs.LinuxResources{}
	if base != nil {
		out = *base
	}
	if u := update.Memory; u != nil {
		m := specs.LinuxMemory{}
		if out.Memory != nil {
			m = *out.Memory
		}
		if u.Limit != nil {
			m.Limit = u.Limit
		}
		if u.Reservation != nil {
			m.Reservation = u.Reservation
		}
		if u.Swap != nil {
			m.Swap = u.Swap
		}
		if u.KernelTCP != nil {
			m.KernelTCP = u.KernelTCP
		}
		out.Memory = &m
	}
	if u := update.CPU; u != nil {
		c := specs.LinuxCPU{}
		if out.CPU != nil {
			c = *out.CPU
		}
		if u.Shares != nil {
			c.Shares = u.Shares
		}
		if u.Quota != nil {
			c.Quota = u.Quota
		}
		if u.Period != nil {
			c.Period = u.Period
		}
		if u.RealtimeRuntime != nil {
			c.RealtimeRuntime = u.RealtimeRuntime
		}
		if u.RealtimePeriod != nil {
			c.RealtimePeriod = u.RealtimePeriod
		}
		if u.Cpus != "" {
			c.Cpus = u.Cpus
		}
		if u.Mems != "" {
			c.Mems = u.Mems
		}
		out.CPU = &c
	}
	if update.Pids != nil {
		out.Pids = update.Pids
	}
	if update.BlockIO != nil {
		out.BlockIO = update.BlockIO
	}
	if update.Unified != nil {
		out.Unified = update.Unified
	}
	return &out
}
