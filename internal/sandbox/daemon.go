package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentapi "github.com/husk-runtime/husk/api/agent/v1"
	"github.com/husk-runtime/husk/internal/config"
	"github.com/husk-runtime/husk/internal/control"
	"github.com/husk-runtime/husk/internal/oci"
	"github.com/husk-runtime/husk/internal/state"
)

// requestTimeout bounds one agent call other than a wait.
const requestTimeout = 30 * time.Second

// stopTimeout bounds the guest's orderly power-off.
const stopTimeout = 5 * time.Second

// exitStatusVMGone is the status reported for a container whose VM died
// under it: as if its process had been killed with SIGKILL.
const exitStatusVMGone = 128 + 9

// Daemon serves one sandbox.
type Daemon struct {
	id    string
	dir   string
	store state.Store
	cfg   *config.Config
	vm    *VM
	log   *slog.Logger

	listener *net.UnixListener
	stopOnce sync.Once
	stopped  chan struct{}

	mu         sync.Mutex
	containers map[string]*containerRecord
}

// containerRecord is the daemon's view of one container.
type containerRecord struct {
	id    string
	init  *procRecord
	execs map[string]*procRecord // guarded by Daemon.mu
}

// procRecord is one process of a container: its init or an exec.
type procRecord struct {
	guestPID int
	// exited is closed when the process has exited and its output has
	// reached the caller's files.
	exited     chan struct{}
	exitStatus int
	stdio      []*os.File
}

func newProcRecord(stdio []*os.File) *procRecord {
	return &procRecord{exited: make(chan struct{}), stdio: stdio}
}

func (p *procRecord) hasExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// RunDaemon is the daemon's main. It boots the VM, reports on ready (one
// line: "ok" or the error), then serves until the sandbox is shut down.
func RunDaemon(store state.Store, id string, cfg *config.Config, ready io.WriteCloser) error {
	d := &Daemon{
		id: id, dir: store.Dir(id), store: store, cfg: cfg,
		stopped:    make(chan struct{}),
		containers: map[string]*containerRecord{},
		log:        slog.New(slog.NewTextHandler(os.Stderr, nil)).With("sandbox", id),
	}
	err := d.boot()
	var bootErr *BootError
	if errors.As(err, &bootErr) {
		bootErr.ConsoleLog = keepConsoleLog(d.dir, id)
	}
	if err != nil {
		fmt.Fprintf(ready, "%v\n", err)
		ready.Close()
		d.cleanup()
		return err
	}
	// The parent gone (killed, or interrupted while the guest booted) means
	// nobody will ever use this sandbox: end it rather than serve forever.
	_, err = fmt.Fprintln(ready, "ok")
	ready.Close()
	if err != nil {
		d.log.Warn("the sandbox's creator is gone; ending the sandbox", "err", err)
		d.cleanup()
		return err
	}
	go d.watchVM()
	go func() { _ = control.Serve(d.listener, d.handle) }()
	<-d.stopped
	return nil
}

func (d *Daemon) boot() error {
	if err := os.Chdir(d.dir); err != nil {
		return fmt.Errorf("entering the state directory: %w", err)
	}
	l, err := control.Listen(control.SocketName)
	if err != nil {
		return err
	}
	d.listener = l
	vm, err := StartVM(VMOptions{ID: d.id, Dir: d.dir, Config: d.cfg})
	if err != nil {
		return err
	}
	d.vm = vm
	d.log.Info("guest ready", "accel", vm.Accel, "boot", vm.Ready.Sub(vm.Started).String(),
		"guest_ready_ns", vm.Guest.GetReadyNs(), "kernel", vm.Guest.GetKernelRelease())
	return d.store.Update(d.id, func(st *state.State) error {
		st.Daemon = state.Self()
		st.QEMU = state.ProcessOf(vm.PID())
		return nil
	})
}

// watchVM marks every container stopped when QEMU exits, so that waiters are
// released and `state` tells the truth.
func (d *Daemon) watchVM() {
	<-d.vm.Exited()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range d.containers {
		for _, p := range c.execs {
			if p != nil && !p.hasExited() {
				p.exitStatus = exitStatusVMGone
				close(p.exited)
			}
		}
		if !c.init.hasExited() {
			c.init.exitStatus = exitStatusVMGone
			d.saveExit(c)
			close(c.init.exited)
			d.log.Warn("guest exited under a running container", "container", c.id)
		}
	}
}

func (d *Daemon) saveExit(c *containerRecord) {
	status := c.init.exitStatus
	err := d.store.Update(c.id, func(st *state.State) error {
		st.Status = state.Stopped
		st.ExitStatus = &status
		return nil
	})
	if err != nil {
		d.log.Error("saving state", "container", c.id, "err", err)
	}
}

func (d *Daemon) handle(req *control.Request, files []*os.File, gone <-chan struct{}) (*control.Reply, error) {
	switch req.Op {
	case control.OpCreate:
		return d.create(req, files)
	case control.OpExec:
		return d.exec(req, files)
	}
	for _, f := range files {
		f.Close()
	}
	switch req.Op {
	case control.OpStart:
		return d.start(req)
	case control.OpWait:
		return d.wait(req, gone)
	case control.OpKill:
		return d.kill(req)
	case control.OpResize:
		return d.resize(req)
	case control.OpShutdown:
		return d.shutdown(req)
	case control.OpPs:
		return d.ps(req)
	case control.OpPause:
		return d.pause(req, true)
	case control.OpResume:
		return d.pause(req, false)
	case control.OpUpdate:
		return d.update(req)
	case control.OpStats:
		return d.stats(req)
	}
	return nil, &control.Error{Code: control.CodeInvalid, Message: fmt.Sprintf("unknown request %q", req.Op)}
}

func (d *Daemon) lookup(id string) (*containerRecord, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	c, ok := d.containers[id]
	if !ok {
		return nil, &control.Error{Code: control.CodeNotFound, Message: "container does not exist"}
	}
	return c, nil
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

func (d *Daemon) create(req *control.Request, files []*os.File) (_ *control.Reply, retErr error) {
	c := &containerRecord{id: req.Container, init: newProcRecord(files), execs: map[string]*procRecord{}}
	defer func() {
		if retErr != nil {
			closeFiles(files)
		}
	}()
	bundle, err := oci.LoadBundle(req.Bundle)
	if err != nil {
		return nil, &control.Error{Code: control.CodeInvalid, Message: err.Error()}
	}
	d.mu.Lock()
	if _, exists := d.containers[c.id]; exists {
		d.mu.Unlock()
		return nil, &control.Error{Code: control.CodeInvalid, Message: "container with given ID already exists"}
	}
	d.containers[c.id] = c
	d.mu.Unlock()
	defer func() {
		if retErr != nil {
			d.mu.Lock()
			delete(d.containers, c.id)
			d.mu.Unlock()
		}
	}()

	sharedDir := filepath.Join(d.dir, SharedDir)
	shared, err := shareContainer(sharedDir, c.id, bundle)
	if err != nil {
		unshareContainer(sharedDir, c.id)
		return nil, &control.Error{Code: control.CodeInvalid, Message: err.Error()}
	}
	defer func() {
		if retErr != nil {
			unshareContainer(sharedDir, c.id)
		}
	}()
	specJSON, err := oci.GuestSpec(bundle.Spec, shared.guestRoot, shared.guestSources)
	if err != nil {
		return nil, err
	}
	copies, err := d.connectStdio(c.id, "", req, files)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	resp, err := d.vm.Agent.CreateContainer(ctx, &agentapi.CreateContainerRequest{
		ContainerId: c.id, SpecJson: specJSON,
		Stdin: req.Stdin, Stdout: req.Stdout, Stderr: req.Stderr, Terminal: req.Terminal,
		Rows: uint32(req.Rows), Cols: uint32(req.Cols),
	})
	if err != nil {
		copies.abort()
		return nil, agentError(err)
	}
	c.init.guestPID = int(resp.GetPid())
	if err := d.store.Update(c.id, func(st *state.State) error {
		st.Status = state.Created
		st.GuestPID = c.init.guestPID
		return nil
	}); err != nil {
		d.log.Error("saving state", "container", c.id, "err", err)
	}
	go d.waitExit(c, "", c.init, copies)
	d.log.Info("container created", "container", c.id, "guest_pid", c.init.guestPID)
	return &control.Reply{GuestPID: c.init.guestPID}, nil
}

// waitExit waits for a process to exit in the guest and for its output to
// be copied, then records the exit.
func (d *Daemon) waitExit(c *containerRecord, execID string, p *procRecord, copies *stdioCopies) {
	resp, err := d.vm.Agent.WaitProcess(context.Background(), &agentapi.ProcessRequest{ContainerId: c.id, ExecId: execID})
	if err != nil {
		// The VM went away; watchVM reports the exit.
		copies.abort()
		closeFiles(p.stdio)
		return
	}
	copies.wait()
	closeFiles(p.stdio)
	d.mu.Lock()
	defer d.mu.Unlock()
	if p.hasExited() {
		return
	}
	p.exitStatus = int(resp.GetExitStatus())
	// Stopped is on disk before any waiter is released: a stand-in exits
	// as its wait returns, and its caller's next step is often delete.
	if execID == "" {
		d.saveExit(c)
	}
	close(p.exited)
	d.log.Info("process exited", "container", c.id, "exec", execID, "status", p.exitStatus)
}

// exec starts an additional process in a running container.
func (d *Daemon) exec(req *control.Request, files []*os.File) (_ *control.Reply, retErr error) {
	defer func() {
		if retErr != nil {
			closeFiles(files)
		}
	}()
	c, err := d.lookup(req.Container)
	if err != nil {
		return nil, err
	}
	if req.ExecID == "" {
		return nil, &control.Error{Code: control.CodeInvalid, Message: "exec id must be set"}
	}
	p := newProcRecord(files)
	d.mu.Lock()
	if _, exists := c.execs[req.ExecID]; exists {
		d.mu.Unlock()
		return nil, &control.Error{Code: control.CodeInvalid, Message: fmt.Sprintf("exec %s already exists", req.ExecID)}
	}
	c.execs[req.ExecID] = p
	d.mu.Unlock()
	defer func() {
		if retErr != nil {
			d.mu.Lock()
			delete(c.execs, req.ExecID)
			d.mu.Unlock()
		}
	}()
	copies, err := d.connectStdio(c.id, req.ExecID, req, files)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	resp, err := d.vm.Agent.ExecProcess(ctx, &agentapi.ExecProcessRequest{
		ContainerId: c.id, ExecId: req.ExecID, ProcessJson: req.Process,
		Stdin: req.Stdin, Stdout: req.Stdout, Stderr: req.Stderr, Terminal: req.Terminal,
		Rows: uint32(req.Rows), Cols: uint32(req.Cols),
	})
	if err != nil {
		copies.abort()
		return nil, agentError(err)
	}
	p.guestPID = int(resp.GetPid())
	go d.waitExit(c, req.ExecID, p, copies)
	return &control.Reply{GuestPID: p.guestPID}, nil
}

// proc finds a container's process: its init for an empty exec id.
func (d *Daemon) proc(containerID, execID string) (*containerRecord, *procRecord, error) {
	c, err := d.lookup(containerID)
	if err != nil {
		return nil, nil, err
	}
	if execID == "" {
		return c, c.init, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	p, ok := c.execs[execID]
	if !ok || p == nil {
		return nil, nil, &control.Error{Code: control.CodeNotFound, Message: fmt.Sprintf("exec %s does not exist", execID)}
	}
	return c, p, nil
}

// agentCall makes one agent request, bounded by requestTimeout, and
// converts the agent's error at this edge.
func agentCall(call func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	if err := call(ctx); err != nil {
		return agentError(err)
	}
	return nil
}

func (d *Daemon) ps(req *control.Request) (*control.Reply, error) {
	c, err := d.lookup(req.Container)
	if err != nil {
		return nil, err
	}
	reply := &control.Reply{PIDs: []int{}}
	err = agentCall(func(ctx context.Context) error {
		resp, err := d.vm.Agent.ListProcesses(ctx, &agentapi.ContainerRequest{ContainerId: c.id})
		for _, pid := range resp.GetPids() {
			reply.PIDs = append(reply.PIDs, int(pid))
		}
		return err
	})
	return reply, err
}

// pause freezes (or thaws) every process of a container.
func (d *Daemon) pause(req *control.Request, freeze bool) (*control.Reply, error) {
	c, err := d.lookup(req.Container)
	if err != nil {
		return nil, err
	}
	if c.init.hasExited() {
		return nil, &control.Error{Code: control.CodeNotRunning, Message: "container not running"}
	}
	next := state.Running
	err = agentCall(func(ctx context.Context) error {
		r := &agentapi.ContainerRequest{ContainerId: c.id}
		if freeze {
			next = state.Paused
			_, err := d.vm.Agent.PauseContainer(ctx, r)
			return err
		}
		_, err := d.vm.Agent.ResumeContainer(ctx, r)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &control.Reply{}, d.store.Update(c.id, func(st *state.State) error {
		// The process may have exited meanwhile; stopped is final.
		if st.Status != state.Stopped {
			st.Status = next
		}
		return nil
	})
}

func (d *Daemon) update(req *control.Request) (*control.Reply, error) {
	c, err := d.lookup(req.Container)
	if err != nil {
		return nil, err
	}
	return &control.Reply{}, agentCall(func(ctx context.Context) error {
		_, err := d.vm.Agent.UpdateContainer(ctx, &agentapi.UpdateContainerRequest{ContainerId: c.id, ResourcesJson: req.Resources})
		return err
	})
}

func (d *Daemon) stats(req *control.Request) (*control.Reply, error) {
	c, err := d.lookup(req.Container)
	if err != nil {
		return nil, err
	}
	reply := &control.Reply{}
	err = agentCall(func(ctx context.Context) error {
		resp, err := d.vm.Agent.StatsContainer(ctx, &agentapi.ContainerRequest{ContainerId: c.id})
		reply.Stats = resp.GetStatsJson()
		return err
	})
	return reply, err
}

func (d *Daemon) start(req *control.Request) (*control.Reply, error) {
	c, err := d.lookup(req.Container)
	if err != nil {
		return nil, err
	}
	err = agentCall(func(ctx context.Context) error {
		_, err := d.vm.Agent.StartContainer(ctx, &agentapi.ContainerRequest{ContainerId: c.id})
		return err
	})
	if err != nil {
		return nil, err
	}
	err = d.store.Update(c.id, func(st *state.State) error {
		if st.Status == state.Created {
			st.Status = state.Running
		}
		return nil
	})
	return &control.Reply{GuestPID: c.init.guestPID}, err
}

// wait replies when the process has exited. A stand-in that goes away first
// (killed) takes its process with it: to its caller the process has died.
func (d *Daemon) wait(req *control.Request, gone <-chan struct{}) (*control.Reply, error) {
	c, p, err := d.proc(req.Container, req.ExecID)
	if err != nil {
		return nil, err
	}
	select {
	case <-p.exited:
	case <-gone:
		if req.StandIn && !p.hasExited() {
			d.log.Warn("stand-in gone; killing its process", "container", c.id, "exec", req.ExecID)
			_ = agentCall(func(ctx context.Context) error {
				_, err := d.vm.Agent.SignalProcess(ctx, &agentapi.SignalProcessRequest{
					ContainerId: c.id, ExecId: req.ExecID, Signal: 9})
				return err
			})
		}
		return nil, errors.New("the waiter went away")
	}
	return &control.Reply{ExitStatus: p.exitStatus}, nil
}

func (d *Daemon) kill(req *control.Request) (*control.Reply, error) {
	c, p, err := d.proc(req.Container, req.ExecID)
	if err != nil {
		return nil, err
	}
	if p.hasExited() {
		return nil, &control.Error{Code: control.CodeNotRunning, Message: "container not running"}
	}
	return &control.Reply{}, agentCall(func(ctx context.Context) error {
		_, err := d.vm.Agent.SignalProcess(ctx, &agentapi.SignalProcessRequest{
			ContainerId: c.id, ExecId: req.ExecID, Signal: uint32(req.Signal), All: req.All})
		return err
	})
}

func (d *Daemon) resize(req *control.Request) (*control.Reply, error) {
	c, _, err := d.proc(req.Container, req.ExecID)
	if err != nil {
		return nil, err
	}
	return &control.Reply{}, agentCall(func(ctx context.Context) error {
		_, err := d.vm.Agent.ResizeTerminal(ctx, &agentapi.ResizeTerminalRequest{
			ContainerId: c.id, ExecId: req.ExecID, Rows: uint32(req.Rows), Cols: uint32(req.Cols)})
		return err
	})
}

// shutdown ends the sandbox: it replies, then powers the guest off, removes
// the state directory and lets RunDaemon return. Without force it refuses
// while a container still runs.
func (d *Daemon) shutdown(req *control.Request) (*control.Reply, error) {
	if !req.Force {
		d.mu.Lock()
		for _, c := range d.containers {
			if !c.init.hasExited() {
				d.mu.Unlock()
				return nil, &control.Error{Code: control.CodeNotRunning,
					Message: fmt.Sprintf("cannot delete container %s that is not stopped", c.id)}
			}
		}
		d.mu.Unlock()
	}
	go d.stop()
	return &control.Reply{}, nil
}

func (d *Daemon) stop() {
	d.stopOnce.Do(func() {
		// Give the reply time to leave before the socket goes.
		time.Sleep(10 * time.Millisecond)
		d.cleanup()
		close(d.stopped)
	})
}

// cleanup powers the VM off and removes everything the sandbox made. Mounts
// need no undoing: they die with the daemon's mount namespace; they are
// undone here anyway so that the shared directory can be removed.
func (d *Daemon) cleanup() {
	if d.listener != nil {
		d.listener.Close()
	}
	if d.vm != nil {
		d.vm.Stop(stopTimeout)
	}
	d.mu.Lock()
	for id, c := range d.containers {
		closeFiles(c.init.stdio)
		for _, p := range c.execs {
			if p != nil {
				closeFiles(p.stdio)
			}
		}
		unshareContainer(filepath.Join(d.dir, SharedDir), id)
	}
	d.mu.Unlock()
	// The VM's teardown detached the share; this catches a boot that failed
	// before there was a VM.
	unmountShareRoot(filepath.Join(d.dir, SharedDir))
	if err := d.store.Remove(d.id); err != nil {
		d.log.Error("removing state", "err", err)
	}
}

// KeptLogDir keeps the console logs of guests that failed to boot, which
// would otherwise go with the state directory.
const KeptLogDir = "/var/log/husk"

func keepConsoleLog(dir, id string) string {
	// A guest that failed before QEMU opened the log leaves an empty one.
	data, _ := os.ReadFile(filepath.Join(dir, ConsoleLog))
	kept := filepath.Join(KeptLogDir, id+".console.log")
	if err := os.MkdirAll(KeptLogDir, 0o755); err != nil {
		return ""
	}
	if err := os.WriteFile(kept, data, 0o644); err != nil {
		return ""
	}
	return kept
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
