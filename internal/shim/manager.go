package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd/mount"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/pkg/shutdown"
	"github.com/containerd/containerd/plugin"
	"github.com/containerd/containerd/runtime/v2/shim"
	"github.com/containerd/log"

	"github.com/husk-runtime/husk/internal/network"
	"github.com/husk-runtime/husk/internal/oci"
	"github.com/husk-runtime/husk/internal/state"
)

// RuntimeName is the runtime name containerd users give (ctr --runtime,
// the CRI runtime_type); containerd runs containerd-shim-husk-v2 for it.
const RuntimeName = "io.containerd.husk.v2"

// shimPIDFile, in a sandbox's state directory, names the shim that serves it.
const shimPIDFile = "shim.pid"

// Manager starts and cleans up shim processes: containerd's `start` and
// `delete` subcommands.
type Manager struct{}

// Name is the runtime's name.
func (Manager) Name() string { return RuntimeName }

// Start starts the shim that serves the container (or, for a pod's later
// containers, finds the pod's shim) and returns its address.
func (Manager) Start(ctx context.Context, id string, opts shim.StartOpts) (_ string, retErr error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return "", err
	}
	spec, err := oci.ReadSpec(".")
	if err != nil {
		return "", err
	}
	group := roleOf(id, spec.Annotations).sandboxID
	address, err := shim.SocketAddress(ctx, opts.Address, group)
	if err != nil {
		return "", err
	}
	socket, err := shim.NewSocket(address)
	if err != nil {
		if !shim.SocketEaddrinuse(err) {
			return "", fmt.Errorf("creating the shim's socket: %w", err)
		}
		// A pod's later container: its sandbox's shim serves it.
		if shim.CanConnect(address) {
			if err := shim.WriteAddress("address", address); err != nil {
				return "", err
			}
			return address, nil
		}
		// A socket left by a shim that died.
		if err := shim.RemoveSocket(address); err != nil {
			return "", fmt.Errorf("removing a stale shim socket: %w", err)
		}
		if socket, err = shim.NewSocket(address); err != nil {
			return "", fmt.Errorf("creating the shim's socket: %w", err)
		}
	}
	defer func() {
		if retErr != nil {
			socket.Close()
			_ = shim.RemoveSocket(address)
		}
	}()
	if err := shim.WriteAddress("address", address); err != nil {
		return "", err
	}
	f, err := socket.File()
	if err != nil {
		return "", err
	}
	defer f.Close()
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	cwd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	// The shim gets a mount namespace of its own, a slave of the host's:
	// the rootfs and share mounts it makes stay in it and die with it,
	// while mounts made later on the host (volumes) still reach it.
	args := []string{"--mount", "--propagation", "slave", "--", self, "-namespace", ns, "-id", id, "-address", opts.Address}
	if opts.Debug {
		args = append(args, "-debug")
	}
	cmd := exec.Command("unshare", args...)
	cmd.Dir = cwd
	cmd.ExtraFiles = []*os.File{f}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("starting the shim: %w", err)
	}
	go func() { _ = cmd.Wait() }()
	defer func() {
		if retErr != nil {
			_ = cmd.Process.Kill()
		}
	}()
	if err := shim.AdjustOOMScore(cmd.Process.Pid); err != nil {
		return "", fmt.Errorf("adjusting the shim's OOM score: %w", err)
	}
	return address, nil
}

// Stop is containerd's clean-up after its connection to the shim for a
// task closed: after every task's delete, and when the shim died or hangs.
// A shim that still answers serves other containers of its pod and is left
// alone; otherwise it is ended (its VM dies with it) and what the sandbox
// left is removed.
func (Manager) Stop(ctx context.Context, id string) (shim.StopStatus, error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return shim.StopStatus{}, err
	}
	cwd, err := os.Getwd()
	if err != nil {
		return shim.StopStatus{}, err
	}
	// The shim mounted the rootfs in its own namespace; nothing should be
	// mounted here, but a rootfs containerd mounted itself goes too.
	if err := mount.UnmountAll(filepath.Join(cwd, "rootfs"), 0); err != nil {
		log.G(ctx).WithError(err).Warn("unmounting the rootfs")
	}
	stopped := shim.StopStatus{ExitedAt: time.Now(), ExitStatus: 128 + int(syscall.SIGKILL)}
	group := id
	if spec, err := oci.ReadSpec(cwd); err == nil {
		group = roleOf(id, spec.Annotations).sandboxID
	}
	if group != id {
		// A pod's container: the pod's sandbox task owns the shim.
		return stopped, nil
	}
	dir := filepath.Join(StateRoot, ns, id)
	pid := shimPID(filepath.Join(dir, shimPIDFile))
	address, addressErr := shim.ReadAddress(filepath.Join(cwd, "address"))
	if pid > 0 && addressErr == nil && shim.CanConnect(address) {
		// It still serves: other containers of its pod.
		return stopped, nil
	}
	if pid > 0 {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	// A shim that died left its sandbox's network as it was: the holder of
	// its namespace still runs, and the taps' redirects (or macvtaps) are
	// still in the namespace.
	if rec, err := readNetworkRecord(dir); err == nil {
		// A namespace named by its holder's pid is gone with the holder
		// (and the pid may be another process's by now).
		heldOnly := rec.Holder.PID != 0 && rec.NetNS == oci.NetNSOf(rec.Holder.PID)
		if rec.NetNS != "" && (!heldOnly || rec.Holder.Alive()) {
			if err := network.Clear(rec.NetNS, id); err != nil && !errors.Is(err, network.ErrOwnNamespace) {
				log.G(ctx).WithError(err).Warn("clearing the sandbox's network namespace")
			}
		}
		oci.StopNetNSHolder(rec.Holder)
	}
	if addressErr == nil {
		_ = shim.RemoveSocket(address)
	}
	if err := os.RemoveAll(dir); err != nil {
		log.G(ctx).WithError(err).Warn("removing the sandbox's state")
	}
	return stopped, nil
}

// networkFile, in a sandbox's state directory, records what its shim
// made of the host's network, for clean-up after the shim's death.
const networkFile = "network.json"

// networkRecord is what networkFile holds.
type networkRecord struct {
	// NetNS is the host-side network namespace the sandbox joined.
	NetNS string `json:"netns,omitempty"`
	// Holder holds that namespace for the hooks, when they ran.
	Holder state.Process `json:"holder"`
}

func writeNetworkRecord(dir string, rec networkRecord) error {
	data, err := json.Marshal(rec)
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, networkFile), data, 0o644)
	}
	if err != nil {
		return fmt.Errorf("recording the sandbox's network: %w", err)
	}
	return nil
}

func readNetworkRecord(dir string) (networkRecord, error) {
	var rec networkRecord
	data, err := os.ReadFile(filepath.Join(dir, networkFile))
	if err == nil {
		err = json.Unmarshal(data, &rec)
	}
	return rec, err
}

// shimPID is the pid of the live husk shim a pid file names, or 0.
func shimPID(pidFile string) int {
	data, err := os.ReadFile(pidFile)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		return 0
	}
	// The binary may have been replaced (upgraded) since the shim started.
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	exe = strings.TrimSuffix(exe, " (deleted)")
	if err != nil || filepath.Base(exe) != filepath.Base(os.Args[0]) {
		return 0
	}
	return pid
}

// Register makes the Task API the shim's ttrpc service.
func Register() {
	plugin.Register(&plugin.Registration{
		Type:     plugin.TTRPCPlugin,
		ID:       "task",
		Requires: []plugin.Type{plugin.EventPlugin, plugin.InternalPlugin},
		InitFn: func(ic *plugin.InitContext) (interface{}, error) {
			pub, err := ic.GetByID(plugin.EventPlugin, "publisher")
			if err != nil {
				return nil, err
			}
			sd, err := ic.GetByID(plugin.InternalPlugin, "shutdown")
			if err != nil {
				return nil, err
			}
			ns, err := namespaces.NamespaceRequired(ic.Context)
			if err != nil {
				return nil, err
			}
			logger := slog.New(slog.NewTextHandler(log.G(ic.Context).Logger.Out, nil))
			return newService(ic.Context, ns, pub.(shim.Publisher), sd.(shutdown.Service), logger), nil
		},
	})
}
