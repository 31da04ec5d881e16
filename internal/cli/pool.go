package cli

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"text/tabwriter"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/husk-runtime/husk/internal/config"
	"github.com/husk-runtime/husk/internal/control"
	"github.com/husk-runtime/husk/internal/network"
	"github.com/husk-runtime/husk/internal/oci"
	"github.com/husk-runtime/husk/internal/pool"
	"github.com/husk-runtime/husk/internal/qemu"
	"github.com/husk-runtime/husk/internal/sandbox"
	"github.com/husk-runtime/husk/internal/state"
	"github.com/husk-runtime/husk/internal/version"
)

// poolDaemonCommand is the hidden entry point of a pooled sandbox's daemon.
const poolDaemonCommand = "pool-daemon"

// unclaimedBootGrace is how long a slot may lack its daemon's description
// before it counts as dead: the daemon writes it first thing.
const unclaimedBootGrace = time.Minute

func newPoolDaemonCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:    poolDaemonCommand + " SLOT",
		Short:  "run a pooled sandbox's daemon (started by husk itself)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := g.config()
			if err != nil {
				return err
			}
			dir := filepath.Join(pool.Of(g.root).Dir, filepath.Base(args[0]))
			return sandbox.RunPoolDaemon(g.store(), dir, poolFingerprint(cfg), cfg, g.daemonLogger())
		},
	}
}

// poolFingerprint identifies what a pooled sandbox was booted with: the
// effective configuration, this husk (its version and its binary file), the
// accelerator, and the QEMU, kernel and initrd files as they are now. A sandbox booted before any of them changed is not
// handed out.
func poolFingerprint(cfg *config.Config) string {
	h := sha256.New()
	c := *cfg.ForPool()
	c.Source = ""
	c.Pool.Size = 0 // the pool's size says nothing of its sandboxes
	data, _ := json.Marshal(&c)
	h.Write(data)
	fmt.Fprintf(h, "\x00%s", version.Version)
	// The accelerator auto would choose now: a pool booted under TCG while
	// KVM was not available is not handed out once it is.
	if accel, _, err := qemu.ChooseAccel(cfg.Hypervisor.Accel); err == nil {
		fmt.Fprintf(h, "\x00%s", accel)
	}
	self, _ := os.Executable()
	for _, path := range []string{self, cfg.Hypervisor.Path, cfg.Hypervisor.Kernel, cfg.Hypervisor.Initrd} {
		if fi, err := os.Stat(path); err == nil {
			fmt.Fprintf(h, "\x00%s %d %d", path, fi.Size(), fi.ModTime().UnixNano())
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// poolMisfit says why a pooled sandbox cannot serve the bundle's container,
// whose host-side network namespace is netns, or "" if it can. A pooled VM was booted at the configured size with no
// network device, and a microvm takes neither more memory, CPUs nor devices
// later.
func poolMisfit(cfg *config.Config, spec *specs.Spec, netns string) string {
	if spec.Linux != nil {
		cpus, memoryMiB := sandbox.VMSize(cfg, spec.Linux.Resources)
		if cpus != cfg.Hypervisor.VCPUs || memoryMiB != cfg.Hypervisor.MemoryMiB {
			return "its limits need a larger VM"
		}
	}
	if netns == "" || cfg.Network.Mode == config.NetworkNone {
		return ""
	}
	has, err := network.HasInterfaces(netns)
	switch {
	case errors.Is(err, network.ErrOwnNamespace):
		return "" // the host's namespace: loopback only, as a cold boot gives
	case err != nil:
		return fmt.Sprintf("its network namespace cannot be read: %v", err)
	case has:
		return "its network namespace has interfaces to join to the VM"
	}
	return ""
}

// claimPooled gives the container a pooled sandbox if one fits: it renames
// a ready slot to the container's state directory, writes the container's
// state there and has the daemon adopt it. It returns false when the
// container must boot its own.
func claimPooled(g *globals, cfg *config.Config, spec *specs.Spec, st *state.State) (bool, error) {
	if cfg.Pool.Size == 0 {
		return false, nil
	}
	if reason := poolMisfit(cfg, spec, hostNetNS(st, spec)); reason != "" {
		logrus.Debugf("warm pool not used for %s: %s", st.ID, reason)
		return false, nil
	}
	store := g.store()
	if err := os.MkdirAll(store.Root, 0o711); err != nil {
		return false, fmt.Errorf("creating state root: %w", err)
	}
	info, err := pool.Of(g.root).Claim(poolFingerprint(cfg), store.Dir(st.ID))
	switch {
	case errors.Is(err, fs.ErrExist):
		return false, fmt.Errorf("container with id %s already exists", st.ID)
	case errors.Is(err, pool.ErrEmpty):
		logrus.Debugf("warm pool empty for %s", st.ID)
		return false, nil
	case err != nil:
		logrus.Warnf("warm pool not used for %s: %v", st.ID, err)
		return false, nil
	}
	st.Version = state.Version
	st.Daemon, st.QEMU = info.Daemon, info.QEMU
	err = sourcesVisibleTo(info.Daemon.PID, spec, st.Rootfs)
	if err == nil {
		err = store.Save(st)
	}
	if err == nil {
		_, err = call(g, st.ID, &control.Request{Op: control.OpAdopt}, nil, callTimeout)
	}
	if err != nil {
		// The pooled sandbox is unusable (its daemon died after the
		// claim, say): end it and boot as if the pool were empty.
		logrus.Warnf("pooled sandbox for %s failed, booting one: %v", st.ID, err)
		endDaemon(store.Dir(st.ID), st.ID, true, info.Daemon, info.QEMU)
		_ = store.Remove(st.ID)
		return false, nil
	}
	return true, nil
}

// sourcesVisibleTo checks that the container's rootfs and bind-mount
// sources, mounted on the host after the pooled daemon started, reached
// its mount namespace: they do where the host's mounts propagate (shared,
// as systemd makes /), not where they are private.
func sourcesVisibleTo(pid int, spec *specs.Spec, rootfs string) error {
	paths := []string{rootfs}
	for _, m := range spec.Mounts {
		if oci.IsBind(m) {
			paths = append(paths, m.Source)
		}
	}
	for _, path := range paths {
		var host, daemon unix.Stat_t
		if err := unix.Stat(path, &host); err != nil {
			return nil // the create's own checks report it
		}
		if err := unix.Stat(fmt.Sprintf("/proc/%d/root%s", pid, path), &daemon); err != nil || host.Dev != daemon.Dev || host.Ino != daemon.Ino {
			return fmt.Errorf("%s, mounted after the pooled sandbox started, does not reach its mount namespace (the host's mounts do not propagate there)", path)
		}
	}
	return nil
}

// fillPool brings the pool to the configured size: it ends slots that no
// longer match the configuration or whose daemon is gone, and starts
// daemons for the missing ones. With wait it returns once they are ready.
func fillPool(g *globals, cfg *config.Config, wait bool) error {
	p := pool.Of(g.root)
	unlock, err := p.Lock()
	if err != nil {
		return err
	}
	fingerprint := poolFingerprint(cfg)
	slots, err := p.Slots()
	if err != nil {
		unlock()
		return err
	}
	live := 0
	var stale []*pool.Slot
	for _, slot := range slots {
		switch {
		case slot.Ending && (slot.Info == nil || !slot.Info.Daemon.Alive()):
			stale = append(stale, slot) // an earlier ending that did not finish
		case slot.Ending:
		case slot.Info == nil && time.Since(slot.Made) < unclaimedBootGrace:
			live++ // its daemon is starting
		case slot.Info == nil, !slot.Info.Daemon.Alive(), slot.Info.Fingerprint != fingerprint, live >= cfg.Pool.Size:
			stale = append(stale, slot)
		default:
			live++
		}
	}
	var spawnErr error
	var spawned []string
	started := time.Now()
	for ; live < cfg.Pool.Size; live++ {
		var name string
		if name, spawnErr = spawnPoolDaemon(g, p, fingerprint); spawnErr != nil {
			break
		}
		spawned = append(spawned, name)
	}
	unlock()
	for _, slot := range stale {
		endSlot(g, p, slot)
	}
	if spawnErr != nil || !wait {
		return spawnErr
	}
	// A pooled sandbox boots and then warms up, each within boot_timeout.
	err = waitPoolReady(p, fingerprint, cfg.Pool.Size, 2*cfg.Agent.BootTimeout.Duration+15*time.Second, spawned, started)
	if err != nil {
		// As after a drain, a pool with nothing left in it leaves no
		// directory.
		if unlock, lockErr := p.Lock(); lockErr == nil {
			_ = os.Remove(p.Dir)
			unlock()
		}
	}
	return err
}

// topUpPool refills the pool after a create, in a `husk pool fill` of its
// own that it does not wait for: the create is done, and filling may wait
// for the pool's lock (a drain) or end stale sandboxes first. With the pool
// turned off, a pool left from before is drained the same way.
func topUpPool(g *globals, cfg *config.Config) {
	op := "fill"
	if cfg.Pool.Size == 0 {
		if _, err := os.Stat(pool.Of(g.root).Dir); err != nil {
			return
		}
		op = "drain"
	}
	self, err := os.Executable()
	if err != nil {
		logrus.Warnf("refilling the warm pool: %v", err)
		return
	}
	args := []string{"--root", g.root}
	if g.configPath != "" {
		args = append(args, "--config", g.configPath)
	}
	if g.debug {
		args = append(args, "--debug")
	}
	cmd := exec.Command(self, append(args, "pool", op)...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		logrus.Warnf("refilling the warm pool: %v", err)
		return
	}
	go func() { _ = cmd.Wait() }()
}

// waitPoolReady waits until the pool holds size ready sandboxes. It gives
// up at once when one of the sandboxes this fill started (spawned, at
// started) failed, with the end of its log.
func waitPoolReady(p pool.Pool, fingerprint string, size int, timeout time.Duration, spawned []string, started time.Time) error {
	deadline := time.Now().Add(timeout)
	for {
		slots, err := p.Slots()
		if err != nil {
			return err
		}
		ready := 0
		present := map[string]bool{}
		for _, slot := range slots {
			present[slot.Name] = true
			if !slot.Ending && slot.Info != nil && slot.Info.Ready && slot.Info.Fingerprint == fingerprint && slot.Info.Daemon.Alive() {
				ready++
			}
		}
		if ready >= size {
			return nil
		}
		for _, name := range spawned {
			if present[name] {
				continue
			}
			// Gone: claimed by a create, ended by a drain, or failed, in
			// which case its daemon kept its log.
			kept := sandbox.KeptPoolDaemonLog(name)
			if fi, err := os.Stat(kept); err == nil && !fi.ModTime().Before(started) {
				return fmt.Errorf("a pooled sandbox failed: %s (its log: %s)", lastLines(kept, 1), kept)
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the warm pool has %d of %d sandboxes ready after %s (see the daemon.log and console.log of the slots in %s, and %s/pool-slot-*.daemon.log and console.log of those that failed)", ready, size, timeout, p.Dir, sandbox.KeptLogDir)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// spawnPoolDaemon starts a pooled daemon in a new slot and leaves it to
// boot: in its own session and mount namespace, as startDaemon does, with
// its output in the slot's daemon log.
func spawnPoolDaemon(g *globals, p pool.Pool, fingerprint string) (name string, err error) {
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("finding the husk binary: %w", err)
	}
	slot, err := p.NewSlot()
	if err != nil {
		return "", err
	}
	logFile, err := os.OpenFile(filepath.Join(slot.Dir, sandbox.DaemonLog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		os.RemoveAll(slot.Dir)
		return "", fmt.Errorf("creating the pooled daemon's log: %w", err)
	}
	defer logFile.Close()
	cmd := daemonProcess(g, self, logFile, poolDaemonCommand, slot.Name)
	if err := cmd.Start(); err != nil {
		os.RemoveAll(slot.Dir)
		return "", fmt.Errorf("starting a pooled sandbox: %w", err)
	}
	// Recorded at once (unshare execs the daemon in the same process), so
	// that whoever ends the slot finds its daemon even before the daemon
	// has written anything itself.
	if err := pool.RecordSpawn(slot.Dir, pool.Info{Fingerprint: fingerprint, Daemon: state.ProcessOf(cmd.Process.Pid)}); err != nil {
		logrus.Warnf("recording pooled daemon %d: %v", cmd.Process.Pid, err)
	}
	// Reaped if this process is still there when it ends; it is not waited
	// for.
	go func() { _ = cmd.Wait() }()
	return slot.Name, nil
}

// endSlot takes a slot out of the pool and ends its daemon and QEMU.
func endSlot(g *globals, p pool.Pool, slot *pool.Slot) {
	dir, err := p.Take(slot)
	if err != nil {
		logrus.Warnf("ending pooled sandbox %s: %v", slot.Name, err)
		return
	}
	if dir == "" {
		return // a create took it
	}
	// What the slot says now: its daemon may have become ready since the
	// listing.
	info := slot.Info
	if now, err := pool.ReadInfo(dir); err == nil {
		info = now
	}
	// A ready daemon serves its socket: asked, it powers the guest off and
	// removes what it made. One still booting is killed; QEMU dies with
	// it, and its mounts with its mount namespace.
	if info != nil {
		endDaemon(dir, "", info.Ready, info.Daemon, info.QEMU)
	}
	if err := os.RemoveAll(dir); err != nil {
		logrus.Warnf("removing pooled sandbox %s: %v", slot.Name, err)
	}
}

func newPoolCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pool",
		Short: "show, fill or drain the warm pool of booted sandboxes (pool.size in the configuration)",
	}
	var wait bool
	fill := &cobra.Command{
		Use:   "fill",
		Short: "start sandboxes until the pool holds pool.size, ending those booted with another configuration",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := g.config()
			if err != nil {
				return err
			}
			if err := cfg.CheckAssets(); err != nil {
				return err
			}
			if cfg.Pool.Size == 0 {
				return fmt.Errorf("pool.size is 0 in %s: the warm pool is off", configSource(cfg))
			}
			return fillPool(g, cfg, wait)
		},
	}
	fill.Flags().BoolVar(&wait, "wait", false, "return once every pooled sandbox is ready")
	drain := &cobra.Command{
		Use:   "drain",
		Short: "end every pooled sandbox (containers running in sandboxes taken from the pool are not touched)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			p := pool.Of(g.root)
			unlock, err := p.Lock()
			if err != nil {
				return err
			}
			defer unlock()
			slots, err := p.Slots()
			if err != nil {
				return err
			}
			for _, slot := range slots {
				endSlot(g, p, slot)
			}
			// The pool's directory goes too when nothing is left in it.
			_ = os.Remove(p.Dir)
			return nil
		},
	}
	var format string
	status := &cobra.Command{
		Use:   "status",
		Short: "list the pooled sandboxes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if format != "table" && format != "json" {
				return fmt.Errorf("invalid format %q: want table or json", format)
			}
			return poolStatus(g, format)
		},
	}
	status.Flags().StringVarP(&format, "format", "f", "table", "table or json")
	cmd.AddCommand(fill, drain, status)
	return cmd
}

// poolSlotStatus is one line of `husk pool status`.
type poolSlotStatus struct {
	Slot    string `json:"slot"`
	Status  string `json:"status"`
	Daemon  int    `json:"daemon_pid,omitempty"`
	QEMU    int    `json:"qemu_pid,omitempty"`
	Current bool   `json:"current"`
}

func poolStatus(g *globals, format string) error {
	cfg, err := g.config()
	if err != nil {
		return err
	}
	fingerprint := poolFingerprint(cfg)
	slots, err := pool.Of(g.root).Slots()
	if err != nil {
		return err
	}
	lines := []poolSlotStatus{}
	for _, slot := range slots {
		line := poolSlotStatus{Slot: slot.Name, Status: "starting"}
		if info := slot.Info; info != nil {
			line.Daemon, line.QEMU = info.Daemon.PID, info.QEMU.PID
			line.Current = info.Fingerprint == fingerprint
			switch {
			case !info.Daemon.Alive():
				line.Status = "dead"
			case info.Ready:
				line.Status = "ready"
			default:
				line.Status = "booting"
			}
		}
		if slot.Ending {
			line.Status = "ending"
		}
		lines = append(lines, line)
	}
	if format == "json" {
		return json.NewEncoder(os.Stdout).Encode(lines)
	}
	fmt.Printf("pool.size = %d (%s)\n", cfg.Pool.Size, configSource(cfg))
	w := tabwriter.NewWriter(os.Stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(w, "SLOT\tSTATUS\tDAEMON\tQEMU\tCURRENT CONFIG")
	for _, l := range lines {
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%t\n", l.Slot, l.Status, l.Daemon, l.QEMU, l.Current)
	}
	return w.Flush()
}

func configSource(cfg *config.Config) string {
	if cfg.Source == "" {
		return "built-in defaults"
	}
	return cfg.Source
}
