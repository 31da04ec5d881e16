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
		m := copyOf(out.Memory)
		override(&m.Limit, u.Limit)
		override(&m.Reservation, u.Reservation)
		override(&m.Swap, u.Swap)
		override(&m.KernelTCP, u.KernelTCP)
		out.Memory = m
	}
	if u := update.CPU; u != nil {
		c := copyOf(out.CPU)
		override(&c.Shares, u.Shares)
		override(&c.Quota, u.Quota)
		override(&c.Period, u.Period)
		override(&c.RealtimeRuntime, u.RealtimeRuntime)
		override(&c.RealtimePeriod, u.RealtimePeriod)
		if u.Cpus != "" {
			c.Cpus = u.Cpus
		}
		if u.Mems != "" {
			c.Mems = u.Mems
		}
		out.CPU = c
	}
	override(&out.Pids, update.Pids)
	override(&out.BlockIO, update.BlockIO)
	if update.Unified != nil {
		out.Unified = update.Unified
	}
	return &out
}

// copyOf returns a copy of *p, or a zero value when p is nil, so that a
// merge never writes into the caller's structs.
func copyOf[T any](p *T) *T {
	var v T
	if p != nil {
		v = *p
	}
	return &v
}

// override sets *dst to src when the update sets it.
func override[T any](dst **T, src *T) {
	if src != nil {
		*dst = src
	}
}
