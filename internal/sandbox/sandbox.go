package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentapi "github.com/husk-runtime/husk/api/agent/v1"
	"github.com/husk-runtime/husk/internal/channel"
	"github.com/husk-runtime/husk/internal/config"
	"github.com/husk-runtime/husk/internal/control"
	"github.com/husk-runtime/husk/internal/network"
	"github.com/husk-runtime/husk/internal/oci"
	"github.com/husk-runtime/husk/internal/pool"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// requestTimeout bounds one agent call other than a wait.
const requestTimeout = 30 * time.Second

// stopTimeout bounds the guest's orderly power-off.
const stopTimeout = 5 * time.Second

// exitStatusVMGone is the status reported for a container whose VM died
// under it: as if its process had been killed with SIGKILL.
const exitStatusVMGone = 128 + 9

// Sandbox is one running VM and the containers in it. It is what both front
// doors serve: the runc-style daemon (control socket) and the containerd
// shim (Task API). Errors it returns are *control.Error where the caller
// must tell them apart.
type Sandbox struct {
	vm  *VM
	log *slog.Logger

	// where guards dir, which a pooled sandbox's adoption changes.
	where sync.Mutex
	dir   string

	// netns is the host network namespace the sandbox was joined to;
	// network holds what joining it made (nil: loopback only).
	netns       string
	netnsForNew bool
	network     *network.Attachment

	// onExit, when set, is called once per process as it exits, before
	// anyone waiting on the process is released.
	onExit func(ExitEvent)

	mu         sync.Mutex
	containers map[string]*containerRecord
}

// ExitEvent is one process's end.
type ExitEvent struct {
	Container, Exec string
	GuestPID        int
	Status          int
	At              time.Time
	// OOMKilled: the kernel's OOM killer struck in the container's cgroup
	// (reported for a container's init process).
	OOMKilled bool
}

// containerRecord is the sandbox's view of one container.
type containerRecord struct {
	id    string
	init  *procRecord
	execs map[string]*procRecord // guarded by Sandbox.mu
}

// procRecord is one process of a container: its init or an exec.
type procRecord struct {
	guestPID int
	// exited is closed when the process has exited and its output has
	// reached the caller's files.
	exited     chan struct{}
	exitStatus int
	exitedAt   time.Time
	stdio      []io.Closer
	stdin      io.Closer // also in stdio; nil without one
}

func newProcRecord(stdio Stdio) *procRecord {
	p := &procRecord{exited: make(chan struct{}), stdio: stdio.closers()}
	if stdio.Stdin != nil {
		p.stdin = stdio.Stdin
	}
	return p
}

func (p *procRecord) hasExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// Options say what sandbox to boot.
type Options struct {
	ID string
	// Dir is the sandbox's state directory; it becomes the working
	// directory. Absolute, or "." for a pooled sandbox, whose directory is
	// renamed under it.
	Dir    string
	Config *config.Config
	Log    *slog.Logger
	OnExit func(ExitEvent)
	// NetNS is the network namespace the sandbox's containers were given
	// (a path); its interfaces are joined to the VM as Config.Network says.
	NetNS string
	// NetNSForNew says that NetNS was made on the host for a container
	// whose spec asks for a new network namespace: such a container gets
	// the guest's, where NetNS's interfaces are.
	NetNSForNew bool
	// Resources are the first container's: the VM is sized to them.
	Resources *specs.LinuxResources
	// Context bounds the wait for the guest's turn to start: the request
	// that asked for the sandbox. The sandbox's life is never bound to it.
	Context context.Context
	// OnTurn, when set, is called when the guest's turn to start comes
	// (see internal/admission).
	OnTurn func()
}

// Boot starts the sandbox's VM and waits for its agent. The process's
// working directory becomes opts.Dir: QEMU's sockets are named relative to
// it, which keeps them short whatever the directory's length.
func Boot(opts Options) (*Sandbox, error) {
	if err := os.Chdir(opts.Dir); err != nil {
		return nil, fmt.Errorf("entering the state directory: %w", err)
	}
	s := &Sandbox{dir: opts.Dir, log: opts.Log, onExit: opts.OnExit,
		containers: map[string]*containerRecord{}, netns: opts.NetNS, netnsForNew: opts.NetNSForNew}
	vmOpts := VMOptions{ID: opts.ID, Dir: opts.Dir, Config: opts.Config, Log: s.log, Context: opts.Context, OnTurn: opts.OnTurn}
	vmOpts.CPUs, vmOpts.MemoryMiB = VMSize(opts.Config, opts.Resources)
	if opts.Config.Runtime.DebugConsole {
		image, err := writeDebugInitrd(opts.Dir, opts.Config.Hypervisor.Initrd)
		if err != nil {
			return nil, err
		}
		vmOpts.Initrd = image
	}
	if opts.NetNS != "" && opts.Config.Network.Mode != config.NetworkNone {
		mode := network.TC
		if opts.Config.Network.Mode == config.NetworkMacvtap {
			mode = network.Macvtap
		}
		att, err := network.Attach(opts.NetNS, mode, opts.ID)
		switch {
		case errors.Is(err, network.ErrOwnNamespace):
			// Nothing of the host's network is handed to a guest.
			s.log.Warn("the spec names the host's network namespace; the container gets loopback only", "netns", opts.NetNS)
			att = &network.Attachment{}
		case err != nil:
			return nil, fmt.Errorf("joining network namespace %s: %w", opts.NetNS, err)
		}
		if len(att.Endpoints) > 0 {
			s.network = att
		}
		for _, ep := range att.Endpoints {
			vmOpts.Taps = append(vmOpts.Taps, Tap{File: ep.TapFile, MAC: ep.Interface.MAC.String()})
		}
	}
	vm, err := StartVM(vmOpts)
	var bootErr *BootError
	if errors.As(err, &bootErr) {
		bootErr.ConsoleLog = keepConsoleLog(opts.Dir, opts.ID)
	}
	if err != nil {
		// A boot that failed before there was a VM may have left the share.
		unmountShareRoot(filepath.Join(opts.Dir, SharedDir))
		s.network.Detach()
		return nil, err
	}
	s.vm = vm
	if err := s.configureNetwork(); err != nil {
		vm.Kill()
		endTurn(s.log, vm.turn)
		s.network.Detach()
		return nil, err
	}
	// A first container that never comes must not hold the host's starts.
	time.AfterFunc(startTurnLimit, s.FinishStart)
	s.log.Info("guest ready", "accel", vm.Accel, "vcpus", vmOpts.CPUs, "memory_mib", vmOpts.MemoryMiB, "boot", vm.Ready.Sub(vm.Started).String(), "restored", vm.Restored,
		"guest_ready_ns", vm.Guest.GetReadyNs(), "kernel", vm.Guest.GetKernelRelease())
	go s.watchVM()
	return s, nil
}

// startTurnLimit bounds how long a started sandbox keeps its turn waiting
// for its first container.
const startTurnLimit = 10 * time.Second

// FinishStart ends the sandbox's turn to start (see internal/admission),
// letting the next guest on the host start: once its first container is
// created, once a pooled sandbox is warmed up, or startTurnLimit after its
// guest was ready.
func (s *Sandbox) FinishStart() { endTurn(s.log, s.vm.turn) }

// configureNetwork gives the guest the joined namespace's interfaces and
// routes.
func (s *Sandbox) configureNetwork() error {
	if s.network == nil {
		return nil
	}
	req := &agentapi.ConfigureNetworkRequest{}
	for i, ep := range s.network.Endpoints {
		iface := &agentapi.NetworkInterface{Name: ep.Interface.Name, Mac: ep.Interface.MAC.String(), Mtu: uint32(ep.Interface.MTU)}
		if s.vm.Restored {
			iface.DeviceMac = placeholderMAC(i)
		}
		for _, a := range ep.Interface.Addresses {
			iface.Addresses = append(iface.Addresses, a.String())
		}
		req.Interfaces = append(req.Interfaces, iface)
	}
	for _, r := range s.network.Routes {
		route := &agentapi.NetworkRoute{Device: r.Device, Scope: uint32(r.Scope)}
		if r.Destination != nil {
			route.Destination = r.Destination.String()
		}
		if r.Gateway != nil {
			route.Gateway = r.Gateway.String()
		}
		req.Routes = append(req.Routes, route)
	}
	err := agentCall(func(ctx context.Context) error {
		_, err := s.vm.Agent.ConfigureNetwork(ctx, req)
		return err
	})
	if err != nil {
		return fmt.Errorf("configuring the guest's network: %w", err)
	}
	s.log.Info("network joined", "netns", s.netns, "interfaces", len(req.Interfaces), "routes", len(req.Routes))
	return nil
}

// Relocate gives a pooled sandbox, whose state directory was renamed to
// dir, the directory of the container that took it. QEMU and the
// daemon hold their files and sockets open, so they follow the rename;
// only the paths the sandbox names from now on change.
func (s *Sandbox) Relocate(dir string) {
	s.where.Lock()
	defer s.where.Unlock()
	s.dir = dir
}

// sharedDir is the directory shared with the guest.
func (s *Sandbox) sharedDir() string {
	s.where.Lock()
	defer s.where.Unlock()
	return filepath.Join(s.dir, SharedDir)
}

// VMExited is closed when QEMU has ended.
func (s *Sandbox) VMExited() <-chan struct{} { return s.vm.Exited() }

// VMPID is QEMU's process id.
func (s *Sandbox) VMPID() int { return s.vm.PID() }

// watchVM ends every process when QEMU exits, so that waiters are released
// and callers see the truth.
func (s *Sandbox) watchVM() {
	<-s.vm.Exited()
	if s.vm.ChannelLost.Load() {
		s.log.Error("the agent channel ended under a running guest; QEMU was killed")
	}
	// A guest that ends when nobody asked it to, under a running
	// container, has crashed: its console log holds its last words (a
	// panic, the agent's crash), and the state directory, with the log,
	// goes at delete. A forced stop kills the containers just before the
	// guest powers off, so their exits may not have arrived: that is no
	// crash.
	crashed := false
	if !s.vm.Stopping() {
		s.mu.Lock()
		for _, c := range s.containers {
			crashed = crashed || !c.init.hasExited()
		}
		s.mu.Unlock()
	}
	kept := ""
	if crashed {
		kept = s.keepConsoleLog()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	for _, c := range s.containers {
		for execID, p := range c.execs {
			s.markExited(c, execID, p, exitStatusVMGone, now, false)
		}
		if crashed && !c.init.hasExited() {
			s.log.Error("the guest ended under a running container", "container", c.id, "console_log", kept)
		}
		s.markExited(c, "", c.init, exitStatusVMGone, now, false)
	}
}

// keepConsoleLog copies the guest's console log to KeptLogDir, named by the
// sandbox's state directory (its id), and returns the copy's path.
func (s *Sandbox) keepConsoleLog() string {
	s.where.Lock()
	dir := s.dir
	s.where.Unlock()
	return keepConsoleLog(dir, filepath.Base(dir))
}

// markExited records a process's exit once. s.mu must be held.
func (s *Sandbox) markExited(c *containerRecord, execID string, p *procRecord, status int, at time.Time, oomKilled bool) {
	if p.hasExited() {
		return
	}
	p.exitStatus, p.exitedAt = status, at
	if s.onExit != nil {
		s.onExit(ExitEvent{Container: c.id, Exec: execID, GuestPID: p.guestPID, Status: status, At: at, OOMKilled: oomKilled})
	}
	close(p.exited)
}

func (s *Sandbox) lookup(id string) (*containerRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[id]
	if !ok {
		return nil, &control.Error{Code: control.CodeNotFound, Message: "container does not exist"}
	}
	return c, nil
}

// proc finds a container's process: its init for an empty exec id.
func (s *Sandbox) proc(containerID, execID string) (*containerRecord, *procRecord, error) {
	c, err := s.lookup(containerID)
	if err != nil {
		return nil, nil, err
	}
	if execID == "" {
		return c, c.init, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := c.execs[execID]
	if !ok {
		return nil, nil, &control.Error{Code: control.CodeNotFound, Message: fmt.Sprintf("exec %s does not exist", execID)}
	}
	return c, p, nil
}

// agentError converts an agent's RPC error at the edge into the control API's codes.
func agentError(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	code := control.CodeInternal
	switch st.Code() {
	case codes.NotFound:
		code = control.CodeNotFound
	case codes.FailedPrecondition:
		code = control.CodeNotRunning
	case codes.InvalidArgument:
		code = control.CodeInvalid
	}
	return &control.Error{Code: code, Message: st.Message()}
}

// agentCall makes one agent request, bounded by requestTimeout, and
// converts the agent's error at this edge.
func agentCall(call func(ctx context.Context) error) error {
	return agentCallWithin(requestTimeout, call)
}

// agentCallWithin is agentCall bounded by timeout.
func agentCallWithin(timeout time.Duration, call func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := call(ctx); err != nil {
		return agentError(err)
	}
	return nil
}

// WarmUp has the guest create, run and remove a throwaway container, so
// that under TCG the code a container's creation runs is translated
// before a real container comes (the warm pool's sandboxes). It gives up
// after timeout.
func (s *Sandbox) WarmUp(timeout time.Duration) error {
	started := time.Now()
	if err := agentCallWithin(timeout, func(ctx context.Context) error {
		_, err := s.vm.Agent.WarmUp(ctx, &agentapi.Empty{})
		return err
	}); err != nil {
		return fmt.Errorf("warming up the guest: %w", err)
	}
	s.log.Info("guest warmed up", "took", time.Since(started))
	return nil
}

// Create shares the bundle's rootfs and volumes with the guest and creates
// the container there, its process waiting for Start. join names, for each
// namespace type to share, the container of this sandbox whose namespace
// the new one joins (a pod's containers join its sandbox container's). On
// success the sandbox owns stdio; on error the caller still does.
func (s *Sandbox) Create(id string, bundle *oci.Bundle, stdio Stdio, join map[specs.LinuxNamespaceType]string) (guestPID int, retErr error) {
	defer s.FinishStart()
	guestNamespaces, err := s.guestNamespaces(join)
	if err != nil {
		return 0, err
	}
	// The network namespace the sandbox joined is, in the guest, the
	// guest's own: its interfaces are there.
	netns := oci.NetworkNamespacePath(bundle.Spec)
	if s.network != nil && (netns == s.netns || netns == "" && s.netnsForNew) {
		guestNamespaces[specs.NetworkNamespace] = channel.GuestNetNS
	}
	c := &containerRecord{id: id, init: newProcRecord(stdio), execs: map[string]*procRecord{}}
	s.mu.Lock()
	if _, exists := s.containers[id]; exists {
		s.mu.Unlock()
		return 0, &control.Error{Code: control.CodeExists, Message: "container with given ID already exists"}
	}
	s.containers[id] = c
	s.mu.Unlock()
	defer func() {
		if retErr != nil {
			s.mu.Lock()
			delete(s.containers, id)
			s.mu.Unlock()
		}
	}()

	sharedDir := s.sharedDir()
	shared, err := shareContainer(sharedDir, id, bundle)
	if err != nil {
		unshareContainer(sharedDir, id)
		return 0, &control.Error{Code: control.CodeInvalid, Message: err.Error()}
	}
	defer func() {
		if retErr != nil {
			unshareContainer(sharedDir, id)
		}
	}()
	specJSON, err := oci.GuestSpec(bundle.Spec, shared.guest, guestNamespaces)
	if err != nil {
		return 0, err
	}
	copies, err := s.connectStdio(id, "", stdio)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	resp, err := s.vm.Agent.CreateContainer(ctx, &agentapi.CreateContainerRequest{
		ContainerId: id, SpecJson: specJSON,
		Stdin: stdio.Stdin != nil, Stdout: stdio.Stdout != nil, Stderr: stdio.Stderr != nil, Terminal: stdio.Terminal,
		Rows: uint32(stdio.Rows), Cols: uint32(stdio.Cols),
	})
	if err != nil {
		copies.abort()
		return 0, agentError(err)
	}
	s.mu.Lock()
	c.init.guestPID = int(resp.GetPid())
	s.mu.Unlock()
	go s.waitExit(c, "", c.init, copies)
	s.log.Info("container created", "container", id, "guest_pid", c.init.guestPID)
	return c.init.guestPID, nil
}

// NamespaceFile names a namespace type's file under /proc/PID/ns.
func NamespaceFile(typ specs.LinuxNamespaceType) (string, bool) {
	file, ok := nsFiles[typ]
	return file, ok
}

var nsFiles = map[specs.LinuxNamespaceType]string{
	specs.PIDNamespace: "pid", specs.NetworkNamespace: "net", specs.MountNamespace: "mnt",
	specs.IPCNamespace: "ipc", specs.UTSNamespace: "uts", specs.UserNamespace: "user",
	specs.CgroupNamespace: "cgroup", specs.TimeNamespace: "time",
}

// guestNamespaces resolves join into the guest's /proc paths of the named
// containers' namespaces. A container that has exited has none to join.
func (s *Sandbox) guestNamespaces(join map[specs.LinuxNamespaceType]string) (map[specs.LinuxNamespaceType]string, error) {
	paths := map[specs.LinuxNamespaceType]string{}
	for typ, id := range join {
		c, err := s.lookup(id)
		if err != nil {
			return nil, &control.Error{Code: control.CodeNotFound, Message: fmt.Sprintf("joining the %s namespace of container %s: it does not exist", typ, id)}
		}
		s.mu.Lock()
		pid := c.init.guestPID
		s.mu.Unlock()
		if c.init.hasExited() || pid == 0 {
			return nil, &control.Error{Code: control.CodeNotRunning, Message: fmt.Sprintf("joining the %s namespace of container %s: it is not running", typ, id)}
		}
		file, ok := nsFiles[typ]
		if !ok {
			return nil, &control.Error{Code: control.CodeInvalid, Message: fmt.Sprintf("unknown namespace type %q", typ)}
		}
		paths[typ] = fmt.Sprintf("/proc/%d/ns/%s", pid, file)
	}
	return paths, nil
}

// waitExit waits for a process to exit in the guest and for its output to
// be copied, then records the exit.
func (s *Sandbox) waitExit(c *containerRecord, execID string, p *procRecord, copies *stdioCopies) {
	resp, err := s.vm.Agent.WaitProcess(context.Background(), &agentapi.ProcessRequest{ContainerId: c.id, ExecId: execID})
	if err != nil {
		// The VM went away; watchVM reports the exit.
		copies.abort()
		closeAll(p.stdio)
		return
	}
	copies.wait()
	closeAll(p.stdio)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.markExited(c, execID, p, int(resp.GetExitStatus()), time.Now(), resp.GetOomKills() > 0)
	s.log.Info("process exited", "container", c.id, "exec", execID, "status", p.exitStatus)
}

// Start runs a created container's process.
func (s *Sandbox) Start(id string) (guestPID int, err error) {
	c, err := s.lookup(id)
	if err != nil {
		return 0, err
	}
	err = agentCall(func(ctx context.Context) error {
		_, err := s.vm.Agent.StartContainer(ctx, &agentapi.ContainerRequest{ContainerId: c.id})
		return err
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	return c.init.guestPID, err
}

// Exec starts an additional process in a running container. On success the
// sandbox owns stdio; on error the caller still does.
func (s *Sandbox) Exec(containerID, execID string, process json.RawMessage, stdio Stdio) (guestPID int, retErr error) {
	c, err := s.lookup(containerID)
	if err != nil {
		return 0, err
	}
	if execID == "" {
		return 0, &control.Error{Code: control.CodeInvalid, Message: "exec id must be set"}
	}
	p := newProcRecord(stdio)
	s.mu.Lock()
	if _, exists := c.execs[execID]; exists {
		s.mu.Unlock()
		return 0, &control.Error{Code: control.CodeExists, Message: fmt.Sprintf("exec %s already exists", execID)}
	}
	c.execs[execID] = p
	s.mu.Unlock()
	defer func() {
		if retErr != nil {
			s.mu.Lock()
			delete(c.execs, execID)
			s.mu.Unlock()
		}
	}()
	if c.init.hasExited() {
		return 0, &control.Error{Code: control.CodeNotRunning, Message: "cannot exec in a stopped container"}
	}
	copies, err := s.connectStdio(c.id, execID, stdio)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	resp, err := s.vm.Agent.ExecProcess(ctx, &agentapi.ExecProcessRequest{
		ContainerId: c.id, ExecId: execID, ProcessJson: process,
		Stdin: stdio.Stdin != nil, Stdout: stdio.Stdout != nil, Stderr: stdio.Stderr != nil, Terminal: stdio.Terminal,
		Rows: uint32(stdio.Rows), Cols: uint32(stdio.Cols),
	})
	if err != nil {
		copies.abort()
		return 0, agentError(err)
	}
	s.mu.Lock()
	p.guestPID = int(resp.GetPid())
	s.mu.Unlock()
	go s.waitExit(c, execID, p, copies)
	return int(resp.GetPid()), nil
}

// ProcessStatus is what the sandbox knows of one process.
type ProcessStatus struct {
	GuestPID   int
	Exited     bool
	ExitStatus int
	ExitedAt   time.Time
}

// Status reports on a process (the init for an empty exec id).
func (s *Sandbox) Status(containerID, execID string) (ProcessStatus, error) {
	_, p, err := s.proc(containerID, execID)
	if err != nil {
		return ProcessStatus{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := ProcessStatus{GuestPID: p.guestPID, Exited: p.hasExited()}
	if st.Exited {
		st.ExitStatus, st.ExitedAt = p.exitStatus, p.exitedAt
	}
	return st, nil
}

// Wait returns the process's exit status once it has exited and its output
// has been delivered, or an error when ctx ends first.
func (s *Sandbox) Wait(ctx context.Context, containerID, execID string) (ProcessStatus, error) {
	_, p, err := s.proc(containerID, execID)
	if err != nil {
		return ProcessStatus{}, err
	}
	select {
	case <-p.exited:
		s.mu.Lock()
		defer s.mu.Unlock()
		return ProcessStatus{GuestPID: p.guestPID, Exited: true, ExitStatus: p.exitStatus, ExitedAt: p.exitedAt}, nil
	case <-ctx.Done():
		return ProcessStatus{}, ctx.Err()
	}
}

// Kill signals a process, or with all every process of the container.
func (s *Sandbox) Kill(containerID, execID string, signal int, all bool) error {
	c, p, err := s.proc(containerID, execID)
	if err != nil {
		return err
	}
	if p.hasExited() {
		return &control.Error{Code: control.CodeNotRunning, Message: "container not running"}
	}
	return agentCall(func(ctx context.Context) error {
		_, err := s.vm.Agent.SignalProcess(ctx, &agentapi.SignalProcessRequest{
			ContainerId: c.id, ExecId: execID, Signal: uint32(signal), All: all})
		return err
	})
}

// Resize sets a process's terminal size.
func (s *Sandbox) Resize(containerID, execID string, rows, cols uint16) error {
	c, _, err := s.proc(containerID, execID)
	if err != nil {
		return err
	}
	return agentCall(func(ctx context.Context) error {
		_, err := s.vm.Agent.ResizeTerminal(ctx, &agentapi.ResizeTerminalRequest{
			ContainerId: c.id, ExecId: execID, Rows: uint32(rows), Cols: uint32(cols)})
		return err
	})
}

// Processes lists the guest PIDs of a container's processes.
func (s *Sandbox) Processes(containerID string) ([]int, error) {
	c, err := s.lookup(containerID)
	if err != nil {
		return nil, err
	}
	pids := []int{}
	err = agentCall(func(ctx context.Context) error {
		resp, err := s.vm.Agent.ListProcesses(ctx, &agentapi.ContainerRequest{ContainerId: c.id})
		for _, pid := range resp.GetPids() {
			pids = append(pids, int(pid))
		}
		return err
	})
	return pids, err
}

// Freeze freezes (or thaws) every process of a container.
func (s *Sandbox) Freeze(containerID string, freeze bool) error {
	c, err := s.lookup(containerID)
	if err != nil {
		return err
	}
	if c.init.hasExited() {
		return &control.Error{Code: control.CodeNotRunning, Message: "container not running"}
	}
	return agentCall(func(ctx context.Context) error {
		r := &agentapi.ContainerRequest{ContainerId: c.id}
		if freeze {
			_, err := s.vm.Agent.PauseContainer(ctx, r)
			return err
		}
		_, err := s.vm.Agent.ResumeContainer(ctx, r)
		return err
	})
}

// Update applies new OCI linux.resources (JSON) to a container's cgroup.
func (s *Sandbox) Update(containerID string, resources json.RawMessage) error {
	c, err := s.lookup(containerID)
	if err != nil {
		return err
	}
	return agentCall(func(ctx context.Context) error {
		_, err := s.vm.Agent.UpdateContainer(ctx, &agentapi.UpdateContainerRequest{ContainerId: c.id, ResourcesJson: resources})
		return err
	})
}

// Stats returns the guest's cgroup statistics for a container as JSON
// (libcontainer's cgroups.Stats).
func (s *Sandbox) Stats(containerID string) (json.RawMessage, error) {
	c, err := s.lookup(containerID)
	if err != nil {
		return nil, err
	}
	var stats json.RawMessage
	err = agentCall(func(ctx context.Context) error {
		resp, err := s.vm.Agent.StatsContainer(ctx, &agentapi.ContainerRequest{ContainerId: c.id})
		stats = resp.GetStatsJson()
		return err
	})
	return stats, err
}

// CloseStdin ends a process's input: the process reads EOF.
func (s *Sandbox) CloseStdin(containerID, execID string) error {
	_, p, err := s.proc(containerID, execID)
	if err != nil {
		return err
	}
	if p.stdin != nil {
		return p.stdin.Close()
	}
	return nil
}

// RemoveExec forgets an exec'd process that has exited.
func (s *Sandbox) RemoveExec(containerID, execID string) error {
	c, p, err := s.proc(containerID, execID)
	if err != nil {
		return err
	}
	if !p.hasExited() {
		return &control.Error{Code: control.CodeNotRunning, Message: fmt.Sprintf("exec %s is still running", execID)}
	}
	s.mu.Lock()
	delete(c.execs, execID)
	s.mu.Unlock()
	closeAll(p.stdio)
	return nil
}

// Remove takes a container out of the sandbox: out of the guest and out of
// the share. Without force a running container is refused.
func (s *Sandbox) Remove(containerID string, force bool) error {
	c, err := s.lookup(containerID)
	if err != nil {
		return err
	}
	if !force && !c.init.hasExited() {
		return &control.Error{Code: control.CodeNotRunning,
			Message: fmt.Sprintf("cannot delete container %s that is not stopped", c.id)}
	}
	select {
	case <-s.vm.Exited():
	default:
		err = agentCall(func(ctx context.Context) error {
			_, err := s.vm.Agent.RemoveContainer(ctx, &agentapi.RemoveContainerRequest{ContainerId: c.id, Force: force})
			return err
		})
		if err != nil && !control.IsCode(err, control.CodeNotFound) {
			return err
		}
	}
	s.mu.Lock()
	delete(s.containers, c.id)
	s.mu.Unlock()
	s.release(c)
	return nil
}

// release closes a removed container's files and unshares it.
func (s *Sandbox) release(c *containerRecord) {
	closeAll(c.init.stdio)
	for _, p := range c.execs {
		closeAll(p.stdio)
	}
	unshareContainer(s.sharedDir(), c.id)
}

// Running lists the containers whose init process has not exited.
func (s *Sandbox) Running() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids []string
	for id, c := range s.containers {
		if !c.init.hasExited() {
			ids = append(ids, id)
		}
	}
	return ids
}

// Stop powers the VM off and undoes every share. Mounts would die with the
// front door's mount namespace anyway; they are undone here so that the
// state directory can be removed.
func (s *Sandbox) Stop() {
	s.FinishStart()
	s.vm.Stop(stopTimeout)
	s.mu.Lock()
	records := s.containers
	s.containers = map[string]*containerRecord{}
	s.mu.Unlock()
	for _, c := range records {
		s.release(c)
	}
	// The VM's teardown detached the share's root; this catches the rest.
	unmountShareRoot(s.sharedDir())
	s.network.Detach()
}

// KeptLogDir keeps the console logs of guests that failed to boot or ended
// under a running container, and the logs of pooled sandboxes that failed,
// which would otherwise go with the state directory.
const KeptLogDir = "/var/log/husk"

func keepConsoleLog(dir, id string) string {
	// A guest that failed before QEMU opened the log leaves an empty one.
	return keepLog(filepath.Join(dir, ConsoleLog), filepath.Join(KeptLogDir, id+".console.log"))
}

// keepLog copies a log file to kept, in KeptLogDir, and returns the copy's
// path, or "" if it could not be made.
func keepLog(path, kept string) string {
	data, _ := os.ReadFile(path)
	if err := os.MkdirAll(KeptLogDir, 0o755); err != nil {
		return ""
	}
	if err := os.WriteFile(kept, data, 0o644); err != nil {
		return ""
	}
	pruneKeptLogs(KeptLogDir)
	return kept
}

// How many kept logs dir holds, the newest: a guest that always fails
// would otherwise add files with every create, and a failing warm pool
// with every refill (its own, smaller share, so that it cannot push out
// the logs of other sandboxes).
const (
	keptPoolLogs = 16
	keptLogs     = 64
)

// pruneKeptLogs removes the oldest kept logs in dir beyond those bounds.
func pruneKeptLogs(dir string) {
	paths, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	var pooled, others []string
	for _, p := range paths {
		if strings.HasPrefix(filepath.Base(p), PooledID(pool.SlotPrefix)) {
			pooled = append(pooled, p)
		} else {
			others = append(others, p)
		}
	}
	removeAllButNewest(pooled, keptPoolLogs)
	removeAllButNewest(others, keptLogs)
}

func removeAllButNewest(paths []string, keep int) {
	if len(paths) <= keep {
		return
	}
	modified := map[string]time.Time{}
	for _, p := range paths {
		if fi, err := os.Stat(p); err == nil {
			modified[p] = fi.ModTime()
		}
	}
	sort.Slice(paths, func(i, j int) bool { return modified[paths[i]].After(modified[paths[j]]) })
	for _, p := range paths[keep:] {
		os.Remove(p)
	}
}

func closeAll(files []io.Closer) {
	for _, f := range files {
		f.Close()
	}
}
