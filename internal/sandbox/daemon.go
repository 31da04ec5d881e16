package sandbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/husk-runtime/husk/internal/config"
	"github.com/husk-runtime/husk/internal/control"
	"github.com/husk-runtime/husk/internal/oci"
	"github.com/husk-runtime/husk/internal/pool"
	"github.com/husk-runtime/husk/internal/state"
)

// Daemon is the runc-style front door of a sandbox: it serves the control
// API on a unix socket in the container's state directory and keeps the
// container's state file true.
type Daemon struct {
	store state.Store
	sb    *Sandbox
	log   *slog.Logger

	// mu guards id and dir, which change once for a pooled daemon: id is
	// "" until a create adopts it, and dir moves from the pool slot to the
	// container's state directory.
	mu  sync.Mutex
	id  string
	dir string

	listener *net.UnixListener
	stopOnce sync.Once
	stopped  chan struct{}

	// idle returns the daemon's free memory to the system once no request
	// has come for idleAfter (see releaseWhenIdle).
	idle *time.Timer
}

// idleAfter is how long the daemon waits without a request before it
// returns its free memory.
const idleAfter = 2 * time.Second

// releaseWhenIdle starts returning the daemon's free memory to the system
// whenever it has been idle for idleAfter. Go's runtime gives memory back
// only gradually: 10 s after a sandbox's start its daemon still held about
// 2 MiB of heap left from the boot and the create, in every sandbox.
func (d *Daemon) releaseWhenIdle() {
	d.idle = time.AfterFunc(idleAfter, debug.FreeOSMemory)
}

// RunDaemon is the daemon's main. It boots the VM, reports on ready (a line
// TurnReport when its turn to start the guest came, then one line: "ok" or
// the error), then serves until the sandbox is shut down.
// Its log lines carry the sandbox's id, and the container's where they
// are about one.
func RunDaemon(store state.Store, id string, cfg *config.Config, ready *os.File, log *slog.Logger) error {
	d := &Daemon{
		id: id, dir: store.Dir(id), store: store,
		stopped: make(chan struct{}),
		log:     log.With("sandbox", id),
	}
	opts := d.bootOptions(cfg)
	// The creator bounds the boot from here: the wait for the turn depends
	// on the other sandboxes starting on the host.
	opts.OnTurn = func() { fmt.Fprintln(ready, TurnReport) }
	// A creator that is gone (its own caller's deadline passed) takes this
	// daemon out of the queue at once.
	ctx, creatorGone := whileReaderLives(ready)
	opts.Context = ctx
	err := d.boot(cfg, opts)
	creatorGone()
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
	d.releaseWhenIdle()
	go func() { _ = control.Serve(d.listener, d.handle) }()
	<-d.stopped
	return nil
}

// whileReaderLives returns a context that ends when the pipe's reading end
// is closed, until stop is called.
func whileReaderLives(pipe *os.File) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	raw, err := pipe.SyscallConn()
	if err != nil {
		return ctx, cancel
	}
	go func() {
		for ctx.Err() == nil {
			// A pipe's writing end polls POLLERR once no reader is left.
			var revents int16
			_ = raw.Control(func(fd uintptr) {
				fds := []unix.PollFd{{Fd: int32(fd)}}
				if n, _ := unix.Poll(fds, 100); n > 0 {
					revents = fds[0].Revents
				}
			})
			if revents&(unix.POLLERR|unix.POLLHUP) != 0 {
				cancel()
			}
		}
	}()
	return ctx, cancel
}

// TurnReport is the line a daemon writes to its creator when its turn to
// start the guest came (see internal/admission).
const TurnReport = "turn"

// bootOptions says what sandbox to boot for the container: the VM gets its
// network devices and its size at boot, from the bundle that create named.
func (d *Daemon) bootOptions(cfg *config.Config) Options {
	opts := Options{ID: d.id, Dir: d.dir, Config: cfg, Log: d.log, OnExit: d.saveExit}
	if st, err := d.store.Load(d.id); err == nil {
		if spec, err := oci.ReadSpec(st.Bundle); err == nil {
			opts.NetNS = oci.NetworkNamespacePath(spec)
			if spec.Linux != nil {
				opts.Resources = spec.Linux.Resources
			}
			// A spec that asks for a new network namespace and has create
			// hooks got one on the host, held by the hooks' process, which
			// the hooks may have filled (Docker's networking does).
			if opts.NetNS == "" && st.NetNSHolder.Alive() && oci.AsksNewNetNS(spec) {
				opts.NetNS = oci.NetNSOf(st.NetNSHolder.PID)
				opts.NetNSForNew = true
			}
		}
	}
	return opts
}

func (d *Daemon) boot(cfg *config.Config, opts Options) error {
	if err := os.Chdir(opts.Dir); err != nil {
		return fmt.Errorf("entering the state directory: %w", err)
	}
	l, err := control.Listen(control.SocketName)
	if err != nil {
		return err
	}
	d.listener = l
	sb, err := Boot(opts)
	if err != nil {
		return err
	}
	d.sb = sb
	if d.id == "" {
		return nil // pooled: no container's state yet
	}
	return d.recordProcesses()
}

// recordProcesses writes the daemon and QEMU into the container's state.
func (d *Daemon) recordProcesses() error {
	return d.store.Update(d.id, func(st *state.State) error {
		st.Daemon = state.Self()
		st.QEMU = state.ProcessOf(d.sb.VMPID())
		return nil
	})
}

// RunPoolDaemon is a pooled daemon's main: it boots a VM of the configured
// size with no network in the pool slot dir, says so in the slot's
// description, and serves until a create adopts it, then as RunDaemon
// does. If its guest ends before, or it is shut down, it removes the slot.
func RunPoolDaemon(store state.Store, dir, fingerprint string, cfg *config.Config, log *slog.Logger) error {
	cfg = cfg.ForPool()
	d := &Daemon{
		dir: dir, store: store,
		stopped: make(chan struct{}),
		log:     log.With("pool_slot", filepath.Base(dir)),
	}
	// The slot is renamed when a create claims it, or when it is taken out
	// of the pool to be ended, maybe while the guest boots: from here on
	// the daemon names its files relative to its working directory, which
	// follows the rename, never by the slot's path.
	if err := os.Chdir(dir); err != nil {
		d.cleanup()
		return fmt.Errorf("entering the pool slot: %w", err)
	}
	info := pool.Info{Fingerprint: fingerprint, Daemon: state.Self()}
	if err := pool.WriteInfo(".", info); err != nil {
		d.cleanup()
		return err
	}
	opts := Options{ID: PooledID(filepath.Base(dir)), Dir: ".", Config: cfg, Log: d.log, OnExit: d.saveExit}
	// A failed slot's directory goes; its log is kept for `pool fill` to
	// point at.
	fail := func(what string, err error) error {
		d.log.Error(what, "err", err)
		keepLog(DaemonLog, KeptPoolDaemonLog(filepath.Base(dir)))
		keepConsoleLog(".", opts.ID)
		d.cleanup()
		return err
	}
	if err := d.boot(cfg, opts); err != nil {
		return fail("booting a pooled sandbox", err)
	}
	// A guest that cannot make the warm-up container would fail a real
	// one as well: such a sandbox is ended rather than offered.
	err := d.sb.WarmUp(cfg.Agent.BootTimeout.Duration)
	d.sb.FinishStart()
	if err != nil {
		return fail("warming up the pooled sandbox", err)
	}
	d.releaseWhenIdle()
	go func() { _ = control.Serve(d.listener, d.handle) }()
	go func() {
		<-d.sb.VMExited()
		d.mu.Lock()
		pooled := d.id == ""
		d.mu.Unlock()
		if pooled {
			d.log.Error("the pooled sandbox's guest ended before a container took it")
			d.stop()
		}
	}()
	go d.endIfClaimedAndLeft()
	info.QEMU, info.Ready = state.ProcessOf(d.sb.VMPID()), true
	if err := pool.WriteInfo(".", info); err != nil {
		d.log.Error("announcing the pooled sandbox", "err", err)
		d.stop()
	}
	d.log.Info("pooled sandbox ready")
	<-d.stopped
	return nil
}

// PooledID is the sandbox id of a pooled sandbox in the named slot, which
// names its logs kept in KeptLogDir.
func PooledID(slot string) string { return "pool-" + slot }

// KeptPoolDaemonLog is where a pooled sandbox in the named slot that failed
// keeps its daemon's log.
func KeptPoolDaemonLog(slot string) string {
	return filepath.Join(KeptLogDir, PooledID(slot)+"."+DaemonLog)
}

// unadoptedGrace is how long a pooled sandbox waits, once a create has
// renamed its slot out of the pool, for that create's adopt request.
const unadoptedGrace = 10 * time.Second

// endIfClaimedAndLeft ends a pooled sandbox whose slot a create renamed out
// of the pool (claimed) but never adopted: the create died between the two
// steps, and nobody will ever use or end this sandbox otherwise. It also
// removes the directory, which is now named as that container's.
func (d *Daemon) endIfClaimedAndLeft() {
	poolDir := pool.Of(d.store.Root).Dir
	var leftAt time.Time
	for {
		select {
		case <-d.stopped:
			return
		case <-time.After(time.Second):
		}
		if !d.pooled() {
			return
		}
		wd, err := os.Getwd()
		switch {
		case err == nil && sameDirectory(filepath.Dir(wd), poolDir) == nil:
			leftAt = time.Time{}
		case leftAt.IsZero():
			leftAt = time.Now()
		case time.Since(leftAt) > unadoptedGrace:
			d.mu.Lock()
			if err == nil && d.id == "" {
				d.dir = wd
			}
			d.mu.Unlock()
			d.log.Error("claimed from the pool but never adopted; ending the sandbox", "dir", wd)
			d.stop()
			return
		}
	}
}

// adopt makes a pooled sandbox the container's. The caller has renamed the
// slot directory (this process's working directory) to the container's
// state directory and written its state there.
func (d *Daemon) adopt(req *control.Request) (*control.Reply, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.id != "" {
		return nil, &control.Error{Code: control.CodeInvalid, Message: "this sandbox is " + d.id + "'s, not pooled"}
	}
	dir := d.store.Dir(req.Container)
	if err := sameDirectory(".", dir); err != nil {
		return nil, &control.Error{Code: control.CodeInvalid, Message: err.Error()}
	}
	d.id, d.dir = req.Container, dir
	d.sb.Relocate(dir)
	if err := pool.RemoveInfo(dir); err != nil {
		d.log.Warn("removing the pool slot's description", "err", err)
	}
	if err := d.recordProcesses(); err != nil {
		return nil, err
	}
	d.log.Info("pooled sandbox adopted", "sandbox", d.id)
	return &control.Reply{}, nil
}

// sameDirectory checks that two paths name one directory.
func sameDirectory(a, b string) error {
	fa, err := os.Stat(a)
	if err != nil {
		return err
	}
	fb, err := os.Stat(b)
	if err != nil {
		return err
	}
	if !os.SameFile(fa, fb) {
		return fmt.Errorf("%s is not this pooled sandbox's directory", b)
	}
	return nil
}

// pooled says whether the daemon still waits in the pool.
func (d *Daemon) pooled() bool { return d.owner() == "" }

// saveExit records a container's end. It runs before any waiter is
// released: a stand-in exits as its wait returns, and its caller's next step
// is often delete.
func (d *Daemon) saveExit(e ExitEvent) {
	if e.Exec != "" {
		return
	}
	err := d.store.Update(e.Container, func(st *state.State) error {
		st.Status = state.Stopped
		st.ExitStatus = &e.Status
		return nil
	})
	if err != nil {
		d.log.Error("saving state", "container", e.Container, "err", err)
	}
}

// setStatus moves a container's saved status on, never away from stopped,
// which is final (the process may have exited meanwhile).
func (d *Daemon) setStatus(id string, next state.Status, guestPID int) error {
	return d.store.Update(id, func(st *state.State) error {
		if st.Status != state.Stopped {
			st.Status = next
		}
		if guestPID != 0 {
			st.GuestPID = guestPID
		}
		return nil
	})
}

// stdioOf makes a request's passed files into a process's stdio. Files come
// in the order stdin, stdout, stderr of those requested; with a terminal,
// input then output.
func stdioOf(req *control.Request, files []*os.File) (Stdio, error) {
	stdio := Stdio{Terminal: req.Terminal, Rows: req.Rows, Cols: req.Cols}
	wantIn, wantOut, wantErr := req.Stdin, req.Stdout, req.Stderr
	if req.Terminal {
		wantIn, wantOut, wantErr = true, true, false
	}
	needed := 0
	for _, w := range []bool{wantIn, wantOut, wantErr} {
		if w {
			needed++
		}
	}
	if len(files) != needed {
		return Stdio{}, &control.Error{Code: control.CodeInvalid, Message: fmt.Sprintf("stdio: %d files passed, %d expected", len(files), needed)}
	}
	next := func() *os.File { f := files[0]; files = files[1:]; return f }
	if wantIn {
		stdio.Stdin = next()
	}
	if wantOut {
		stdio.Stdout = next()
	}
	if wantErr {
		stdio.Stderr = next()
	}
	return stdio, nil
}

func (d *Daemon) handle(req *control.Request, files []*os.File, gone <-chan struct{}) (*control.Reply, error) {
	d.log.Debug("request", "op", req.Op, "container", req.Container, "exec", req.ExecID)
	d.idle.Reset(idleAfter)
	if d.pooled() && req.Op != control.OpAdopt && req.Op != control.OpShutdown {
		closeFiles(files)
		return nil, &control.Error{Code: control.CodeInvalid, Message: "a pooled sandbox takes no request before a create adopts it"}
	}
	switch req.Op {
	case control.OpCreate, control.OpExec, control.OpDebugConsole:
		reply, err := d.withStdio(req, files, gone)
		if err != nil {
			closeFiles(files)
		}
		return reply, err
	}
	closeFiles(files)
	switch req.Op {
	case control.OpStart:
		pid, err := d.sb.Start(req.Container)
		if err != nil {
			return nil, err
		}
		return &control.Reply{GuestPID: pid}, d.setStatus(req.Container, state.Running, 0)
	case control.OpWait:
		return d.wait(req, gone)
	case control.OpKill:
		return &control.Reply{}, d.sb.Kill(req.Container, req.ExecID, req.Signal, req.All)
	case control.OpResize:
		return &control.Reply{}, d.sb.Resize(req.Container, req.ExecID, req.Rows, req.Cols)
	case control.OpShutdown:
		return d.shutdown(req)
	case control.OpAdopt:
		return d.adopt(req)
	case control.OpPs:
		pids, err := d.sb.Processes(req.Container)
		return &control.Reply{PIDs: pids}, err
	case control.OpPause, control.OpResume:
		freeze := req.Op == control.OpPause
		if err := d.sb.Freeze(req.Container, freeze); err != nil {
			return nil, err
		}
		next := state.Running
		if freeze {
			next = state.Paused
		}
		return &control.Reply{}, d.setStatus(req.Container, next, 0)
	case control.OpUpdate:
		return &control.Reply{}, d.sb.Update(req.Container, req.Resources)
	case control.OpStats:
		stats, err := d.sb.Stats(req.Container)
		return &control.Reply{Stats: stats}, err
	}
	return nil, &control.Error{Code: control.CodeInvalid, Message: fmt.Sprintf("unknown request %q", req.Op)}
}

// withStdio serves the requests that carry a process's stdio.
func (d *Daemon) withStdio(req *control.Request, files []*os.File, gone <-chan struct{}) (*control.Reply, error) {
	if req.Op == control.OpDebugConsole {
		req.Terminal = true
	}
	stdio, err := stdioOf(req, files)
	if err != nil {
		return nil, err
	}
	if req.Op == control.OpDebugConsole {
		done, err := d.sb.DebugConsole(stdio)
		if err != nil {
			return nil, err
		}
		select {
		case <-done:
		case <-gone:
		}
		return &control.Reply{}, nil
	}
	if req.Op == control.OpExec {
		pid, err := d.sb.Exec(req.Container, req.ExecID, req.Process, stdio)
		return &control.Reply{GuestPID: pid}, err
	}
	bundle, err := oci.LoadBundle(req.Bundle)
	if err != nil {
		return nil, &control.Error{Code: control.CodeInvalid, Message: err.Error()}
	}
	// A container other than the sandbox's own joined its network.
	var join map[specs.LinuxNamespaceType]string
	if owner := d.owner(); req.Container != owner {
		join = map[specs.LinuxNamespaceType]string{specs.NetworkNamespace: owner}
	}
	pid, err := d.sb.Create(req.Container, bundle, stdio, join)
	if err != nil {
		return nil, err
	}
	if err := d.setStatus(req.Container, state.Created, pid); err != nil {
		d.log.Error("saving state", "container", req.Container, "err", err)
	}
	return &control.Reply{GuestPID: pid}, nil
}

// wait replies when the process has exited. A stand-in that goes away first
// (killed) takes its process with it: to its caller the process has died.
func (d *Daemon) wait(req *control.Request, gone <-chan struct{}) (*control.Reply, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-gone:
			cancel()
		case <-ctx.Done():
		}
	}()
	st, err := d.sb.Wait(ctx, req.Container, req.ExecID)
	if errors.Is(err, context.Canceled) {
		if req.StandIn {
			d.log.Warn("stand-in gone; killing its process", "container", req.Container, "exec", req.ExecID)
			_ = d.sb.Kill(req.Container, req.ExecID, 9, false)
		}
		return nil, errors.New("the waiter went away")
	}
	if err != nil {
		return nil, err
	}
	return &control.Reply{ExitStatus: st.ExitStatus}, nil
}

// shutdown ends the sandbox: it replies, then powers the guest off, removes
// the state directory and lets RunDaemon return. Without force it refuses
// while a container still runs.
func (d *Daemon) shutdown(req *control.Request) (*control.Reply, error) {
	owner := d.owner()
	if owner != "" && req.Container != owner {
		// A container that joined this sandbox leaves it; the sandbox
		// goes on.
		if err := d.sb.Remove(req.Container, req.Force); err != nil {
			return nil, err
		}
		return &control.Reply{}, d.store.Remove(req.Container)
	}
	// The sandbox ends with the container that made it: containers that
	// joined it are stopped with it.
	for _, id := range d.sb.Running() {
		if id == owner && !req.Force {
			return nil, &control.Error{Code: control.CodeNotRunning,
				Message: fmt.Sprintf("cannot delete container %s that is not stopped", id)}
		}
	}
	go d.stop()
	return &control.Reply{}, nil
}

// owner is the container whose sandbox this is ("" while pooled).
func (d *Daemon) owner() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.id
}

func (d *Daemon) stop() {
	d.stopOnce.Do(func() {
		// Give the reply time to leave before the socket goes.
		time.Sleep(10 * time.Millisecond)
		d.cleanup()
		close(d.stopped)
	})
}

// cleanup powers the VM off and removes everything the sandbox made.
func (d *Daemon) cleanup() {
	d.mu.Lock()
	id, dir := d.id, d.dir
	if id == "" {
		// A pooled daemon's slot is renamed when it is taken out of the
		// pool to be ended; its working directory followed.
		if wd, err := os.Getwd(); err == nil && sameDirectory(filepath.Dir(wd), pool.Of(d.store.Root).Dir) == nil {
			dir = wd
		}
	}
	d.mu.Unlock()
	if d.listener != nil {
		d.listener.Close()
	}
	if d.sb != nil {
		d.sb.Relocate(dir)
		d.sb.Stop()
	}
	// The holder of the container's network namespace lives as long as
	// the sandbox.
	if id != "" {
		if st, err := d.store.Load(id); err == nil && st.NetNSHolder.Alive() {
			_ = syscall.Kill(st.NetNSHolder.PID, syscall.SIGKILL)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		d.log.Error("removing state", "err", err)
	}
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
