package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"time"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/runc/types"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-spec/specs-go/features"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/husk-runtime/husk/internal/control"
)

// runcStats maps the guest's cgroup figures to runc's events format.
func runcStats(cg *cgroups.Stats) *types.Stats {
	var s types.Stats
	s.Pids.Current, s.Pids.Limit = cg.PidsStats.Current, cg.PidsStats.Limit
	u := cg.CpuStats.CpuUsage
	s.CPU.Usage = types.CpuUsage{Total: u.TotalUsage, Percpu: u.PercpuUsage, Kernel: u.UsageInKernelmode, User: u.UsageInUsermode}
	t := cg.CpuStats.ThrottlingData
	s.CPU.Throttling = types.Throttling{Periods: t.Periods, ThrottledPeriods: t.ThrottledPeriods, ThrottledTime: t.ThrottledTime}
	mem := func(e cgroups.MemoryData) types.MemoryEntry {
		return types.MemoryEntry{Limit: e.Limit, Usage: e.Usage, Max: e.MaxUsage, Failcnt: e.Failcnt}
	}
	s.Memory.Cache = cg.MemoryStats.Cache
	s.Memory.Usage = mem(cg.MemoryStats.Usage)
	s.Memory.Swap = mem(cg.MemoryStats.SwapUsage)
	s.Memory.Kernel = mem(cg.MemoryStats.KernelUsage)
	s.Memory.Raw = cg.MemoryStats.Stats
	for _, e := range cg.BlkioStats.IoServiceBytesRecursive {
		s.Blkio.IoServiceBytesRecursive = append(s.Blkio.IoServiceBytesRecursive,
			types.BlkioEntry{Major: e.Major, Minor: e.Minor, Op: e.Op, Value: e.Value})
	}
	return &s
}

func statsEvent(g *globals, id string) (*types.Event, error) {
	reply, err := call(g, id, &control.Request{Op: control.OpStats}, nil, callTimeout)
	if err != nil {
		return nil, err
	}
	var cg cgroups.Stats
	if err := json.Unmarshal(reply.Stats, &cg); err != nil {
		return nil, fmt.Errorf("decoding the guest's stats: %w", err)
	}
	return &types.Event{Type: "stats", ID: id, Data: runcStats(&cg)}, nil
}

func newEventsCommand(g *globals) *cobra.Command {
	var stats bool
	var interval time.Duration
	cmd := &cobra.Command{
		Use:   "events [--stats] [--interval 5s] ID",
		Short: "display container statistics (runc's events JSON)",
		Args:  oneID,
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if _, err := liveContainer(g, id); err != nil {
				return err
			}
			if interval <= 0 {
				return fmt.Errorf("interval %s must be positive", interval)
			}
			enc := json.NewEncoder(os.Stdout)
			if stats {
				ev, err := statsEvent(g, id)
				if err != nil {
					return err
				}
				return enc.Encode(ev)
			}
			stop := make(chan struct{})
			sigs := make(chan os.Signal, 1)
			signal.Notify(sigs, unix.SIGINT, unix.SIGTERM)
			go func() { <-sigs; close(stop) }()
			for {
				ev, err := statsEvent(g, id)
				if err != nil {
					// The container is gone: the stream ends, as runc's does.
					return nil
				}
				if err := enc.Encode(ev); err != nil {
					return err
				}
				if !sleepOr(interval, stop) {
					return nil
				}
			}
		},
	}
	cmd.Flags().BoolVar(&stats, "stats", false, "display the container's stats once, then exit")
	cmd.Flags().DurationVar(&interval, "interval", 5*time.Second, "interval between stats events")
	return cmd
}

func newFeaturesCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "features",
		Short: "show the enabled features (runc's JSON)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			yes := true
			f := features.Features{
				OCIVersionMin: "1.0.0",
				OCIVersionMax: specs.Version,
				// Hooks run in the host's namespaces under runc; husk drops
				// them rather than run host code for a guest.
				Hooks: []string{},
				MountOptions: []string{"bind", "rbind", "ro", "rw", "nosuid", "nodev", "noexec", "relatime",
					"strictatime", "private", "rprivate", "slave", "rslave", "shared", "rshared"},
				Linux: &features.Linux{
					Namespaces: []string{"cgroup", "ipc", "mount", "network", "pid", "user", "uts", "time"},
					Cgroup:     &features.Cgroup{V1: &yes, V2: &yes, Systemd: &yes},
					Seccomp:    &features.Seccomp{Enabled: &yes},
					Apparmor:   &features.Apparmor{Enabled: new(bool)},
					Selinux:    &features.Selinux{Enabled: new(bool)},
				},
				Annotations: map[string]string{"io.github.husk.runtime": "vm"},
			}
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "    ")
			return enc.Encode(f)
		},
	}
}

// sleepOr waits d unless stop closes first; it reports whether to go on.
func sleepOr(d time.Duration, stop <-chan struct{}) bool {
	select {
	case <-time.After(d):
		return true
	case <-stop:
		return false
	}
}
