package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"os/user"
	"strconv"
	"time"

	"github.com/containerd/console"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/husk-runtime/husk/internal/config"
	"github.com/husk-runtime/husk/internal/control"
	"github.com/husk-runtime/husk/internal/network"
	"github.com/husk-runtime/husk/internal/oci"
	"github.com/husk-runtime/husk/internal/state"
)

// callTimeout bounds a control call other than a wait.
const callTimeout = 60 * time.Second

// daemonExitTimeout bounds the wait for a daemon to power its guest off
// and remove its state after a shutdown request.
const daemonExitTimeout = 20 * time.Second

// createFlags are runc create's flags, shared by create and run.
type createFlags struct {
	bundle        string
	pidFile       string
	consoleSocket string
	noPivot       bool
	noNewKeyring  bool
	preserveFDs   int
}

func (f *createFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVarP(&f.bundle, "bundle", "b", ".", "path to the root of the bundle directory")
	fl.StringVar(&f.pidFile, "pid-file", "", "file to write the PID of the container's stand-in process to")
	fl.StringVar(&f.consoleSocket, "console-socket", "", "unix socket to send the terminal's master to")
	fl.BoolVar(&f.noPivot, "no-pivot", false, "accepted for compatibility; the guest always pivots")
	fl.BoolVar(&f.noNewKeyring, "no-new-keyring", false, "accepted for compatibility")
	fl.IntVar(&f.preserveFDs, "preserve-fds", 0, "not supported: file descriptors cannot cross into the VM")
}

func (f *createFlags) check() error {
	if f.preserveFDs != 0 {
		return errors.New("--preserve-fds is not supported: file descriptors cannot be passed into the VM")
	}
	return nil
}

func newRunCommand(g *globals) *cobra.Command {
	var f createFlags
	var detach bool
	cmd := &cobra.Command{
		Use:   "run [flags] ID",
		Short: "create and run a container inside its own VM",
		Args:  oneID,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.check(); err != nil {
				return err
			}
			if detach {
				if err := createContainer(g, args[0], &f); err != nil {
					return err
				}
				return startContainer(g, args[0])
			}
			return runContainer(g, args[0], &f)
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "detach from the container's process")
	return cmd
}

func newCreateCommand(g *globals) *cobra.Command {
	var f createFlags
	cmd := &cobra.Command{
		Use:   "create [flags] ID",
		Short: "create a container in its own VM, ready to start",
		Args:  oneID,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.check(); err != nil {
				return err
			}
			return createContainer(g, args[0], &f)
		},
	}
	f.register(cmd)
	return cmd
}

// createContainer is `husk create`: the sandbox, then the container created
// in it by a stand-in holding this command's stdio, then the pid file.
func createContainer(g *globals, id string, f *createFlags) (retErr error) {
	p, err := prepareSandbox(g, id, f.bundle, state.Process{})
	if err != nil {
		return err
	}
	defer func() {
		if retErr != nil {
			forceDelete(g, id)
		}
	}()
	terminal := p.bundle.Spec.Process.Terminal
	if terminal && f.consoleSocket == "" {
		return errors.New("cannot allocate tty if husk will detach without setting console socket")
	}
	if !terminal && f.consoleSocket != "" {
		return errors.New("cannot use console socket if husk will not detach or allocate tty")
	}
	pid, err := startStandIn(g, id, standInOptions{bundle: p.bundle.Dir, terminal: terminal}, f.consoleSocket)
	if err != nil {
		return err
	}
	if err := g.store().Update(id, func(st *state.State) error {
		st.StandIn = state.ProcessOf(pid)
		return nil
	}); err != nil {
		return err
	}
	topUpPool(g, p.cfg)
	return writePIDFile(f.pidFile, pid)
}

// prepared is a container whose sandbox is up, with nothing created in it yet.
type prepared struct {
	bundle *oci.Bundle
	cfg    *config.Config
	// daemon is the daemon started for the container; nil when the
	// sandbox came from the warm pool.
	daemon *daemonHandle
}

// prepareSandbox checks the input, records the container and boots its
// sandbox. Bad input is rejected before anything is created; on a later
// error everything made so far is removed.
func prepareSandbox(g *globals, id, bundleDir string, standIn state.Process) (*prepared, error) {
	if err := oci.ValidateID(id); err != nil {
		return nil, err
	}
	bundle, err := oci.LoadBundle(bundleDir)
	if err != nil {
		return nil, err
	}
	cfg, err := g.config()
	if err != nil {
		return nil, err
	}
	if err := cfg.CheckAssets(); err != nil {
		return nil, err
	}
	st := &state.State{
		ID: id, Bundle: bundle.Dir, Rootfs: bundle.Rootfs, Created: time.Now().UTC(),
		Owner: ownerName(), Annotations: bundle.Spec.Annotations, Status: state.Creating, StandIn: standIn,
	}
	store := g.store()
	if owner := sandboxToJoin(g, bundle.Spec); owner != nil {
		return joinSandbox(g, st, owner, bundle, cfg)
	}
	// The hooks run before the sandbox is chosen: they may fill the
	// container's network namespace, which decides whether a pooled
	// sandbox can serve it. An id known to be taken fails first.
	if _, err := os.Stat(store.Dir(id)); err == nil {
		return nil, fmt.Errorf("container with id %s already exists", id)
	}
	if err := runCreateHooks(st, bundle.Spec); err != nil {
		return nil, err
	}
	pooled, err := claimPooled(g, cfg, bundle.Spec, st)
	if err != nil {
		oci.StopNetNSHolder(st.NetNSHolder)
		return nil, err
	}
	if pooled {
		return &prepared{bundle: bundle, cfg: cfg}, nil
	}
	if err := store.Create(st); err != nil {
		oci.StopNetNSHolder(st.NetNSHolder)
		if errors.Is(err, state.ErrExist) {
			return nil, fmt.Errorf("container with id %s already exists", id)
		}
		return nil, err
	}
	daemon, err := startDaemon(g, id, cfg.Agent.BootTimeout.Duration)
	if err != nil {
		oci.StopNetNSHolder(st.NetNSHolder)
		_ = store.Remove(id)
		return nil, err
	}
	return &prepared{bundle: bundle, cfg: cfg, daemon: daemon}, nil
}

func ownerName() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return strconv.Itoa(os.Getuid())
}

// stdioRequest fills a create or exec request with this process's stdio:
// with a terminal, its input and output; otherwise stdin, stdout and stderr.
// Output goes to the daemon as it is; input through a pipe this process
// fills (see stdinPipe). The returned files are this process's to close
// once the request has been sent.
func stdioRequest(req *control.Request, terminal bool) ([]*os.File, error) {
	in, err := stdinPipe()
	if err != nil {
		return nil, err
	}
	if terminal {
		req.Terminal = true
		if c, err := console.ConsoleFromFile(os.Stdin); err == nil {
			if size, err := c.Size(); err == nil {
				req.Rows, req.Cols = size.Height, size.Width
			}
		}
		return []*os.File{in, os.Stdout}, nil
	}
	req.Stdin, req.Stdout, req.Stderr = true, true, true
	return []*os.File{in, os.Stdout, os.Stderr}, nil
}

// stdinPipe returns the read end of a pipe that this process fills from its
// stdin. The daemon outlives the process, and a read it made on the caller's
// stdin (a terminal, say) could not be interrupted: it would swallow what the
// user types next. The pipe ends when this process does.
func stdinPipe() (*os.File, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("stdin pipe: %w", err)
	}
	go func() {
		_, _ = io.Copy(w, os.Stdin)
		w.Close()
	}()
	return r, nil
}

// runContainer is `husk run`: this process stands in for the container's
// process until it exits, then the sandbox is removed and its status returned.
func runContainer(g *globals, id string, f *createFlags) (retErr error) {
	p, err := prepareSandbox(g, id, f.bundle, state.Self())
	if err != nil {
		return err
	}
	defer func() {
		if retErr != nil {
			var exit *ExitError
			if !errors.As(retErr, &exit) {
				forceDelete(g, id)
			}
		}
	}()

	terminal := p.bundle.Spec.Process.Terminal
	req := &control.Request{Op: control.OpCreate, Bundle: p.bundle.Dir}
	files, err := stdioRequest(req, terminal)
	if err != nil {
		return err
	}
	if terminal {
		defer makeRaw()()
	}
	_, err = call(g, id, req, files, callTimeout)
	files[0].Close()
	if err != nil {
		return err
	}
	topUpPool(g, p.cfg)
	if err := writePIDFile(f.pidFile, os.Getpid()); err != nil {
		return err
	}
	// Only now is there a process for signals to reach.
	stopSignals := forwardSignals(g, id, "", terminal)
	defer stopSignals()
	if _, err := call(g, id, &control.Request{Op: control.OpStart}, nil, callTimeout); err != nil {
		return err
	}
	st, err := g.store().Load(id)
	if err != nil {
		return err
	}
	runHooksWarning(st, oci.Poststart, specs.StateRunning)
	reply, err := call(g, id, &control.Request{Op: control.OpWait, StandIn: true}, nil, 0)
	if err != nil {
		return err
	}
	if err := deleteSandbox(g, id, true); err != nil {
		return err
	}
	runHooksWarning(st, oci.Poststop, specs.StateStopped)
	return &ExitError{Status: reply.ExitStatus}
}

// forwardSignals passes the signals this process receives to the container's
// process (execID "" for its init), and window size changes to its terminal.
func forwardSignals(g *globals, id, execID string, terminal bool) (stop func()) {
	sigs := make(chan os.Signal, 64)
	signal.Notify(sigs)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case s := <-sigs:
				sig, ok := s.(unix.Signal)
				if !ok {
					continue
				}
				switch sig {
				case unix.SIGCHLD, unix.SIGURG, unix.SIGPIPE:
				case unix.SIGWINCH:
					if terminal {
						resizeFromStdin(g, id, execID)
					}
				default:
					_, _ = call(g, id, &control.Request{Op: control.OpKill, ExecID: execID, Signal: int(sig)}, nil, callTimeout)
				}
			}
		}
	}()
	return func() {
		signal.Stop(sigs)
		close(done)
	}
}

func resizeFromStdin(g *globals, id, execID string) {
	c, err := console.ConsoleFromFile(os.Stdin)
	if err != nil {
		return
	}
	size, err := c.Size()
	if err != nil {
		return
	}
	_, _ = call(g, id, &control.Request{Op: control.OpResize, ExecID: execID, Rows: size.Height, Cols: size.Width}, nil, callTimeout)
}

// deleteSandbox asks the daemon to end the sandbox and waits until it has.
func deleteSandbox(g *globals, id string, force bool) error {
	st, err := g.store().Load(id)
	if err != nil {
		return err
	}
	if _, err := call(g, id, &control.Request{Op: control.OpShutdown, Force: force}, nil, callTimeout); err != nil {
		return err
	}
	if st.Sandbox != "" {
		return nil // the sandbox's daemon removed it and goes on
	}
	if !waitGone(st.Daemon, daemonExitTimeout) {
		forceDelete(g, id)
	}
	return nil
}

// endDaemon ends the daemon and QEMU of the sandbox in dir, which belongs
// to container id ("" for a pooled one): asked first through its control
// socket (with ask, for a daemon that serves it), then killed, QEMU last.
func endDaemon(dir, id string, ask bool, daemon, qemu state.Process) {
	if daemon.Alive() && ask {
		if sock, closeDir, err := controlSocketIn(dir); err == nil {
			_, _ = control.Call(sock, &control.Request{Op: control.OpShutdown, Container: id, Force: true}, nil, 5*time.Second)
			closeDir()
		}
		waitGone(daemon, daemonExitTimeout)
	}
	if daemon.Alive() {
		_ = unix.Kill(daemon.PID, unix.SIGKILL)
		waitGone(daemon, 5*time.Second)
	}
	if qemu.Alive() {
		_ = unix.Kill(qemu.PID, unix.SIGKILL)
		waitGone(qemu, 5*time.Second)
	}
}

// forceDelete removes a container by any means: the daemon is asked, then
// killed (QEMU dies with it), then QEMU is killed, then the state removed.
// A container that joined another's sandbox is only taken out of it.
func forceDelete(g *globals, id string) {
	store := g.store()
	st, err := store.Load(id)
	if err != nil {
		_ = store.Remove(id)
		return
	}
	if st.Sandbox != "" {
		if st.Daemon.Alive() {
			_, _ = call(g, id, &control.Request{Op: control.OpShutdown, Force: true}, nil, 5*time.Second)
		}
		_ = store.Remove(id)
		return
	}
	// A daemon still booting its guest serves no requests yet; killing it
	// takes QEMU and the daemon's mounts with it.
	endDaemon(store.Dir(id), id, st.Status != state.Creating, st.Daemon, st.QEMU)
	// A daemon that died (or was just killed) never undid its network:
	// its taps' redirects, or its macvtaps, are still in the namespace.
	if netns := sandboxNetNS(st); netns != "" {
		_ = network.Clear(netns, id)
	}
	oci.StopNetNSHolder(st.NetNSHolder)
	_ = store.Remove(id)
}

// makeRaw puts this process's terminal, if stdin is one, in raw mode, so
// that keys reach the container's terminal as typed; it returns the undo.
func makeRaw() (restore func()) {
	c, err := console.ConsoleFromFile(os.Stdin)
	if err != nil {
		return func() {}
	}
	if err := c.SetRaw(); err != nil {
		return func() {}
	}
	return func() { _ = c.Reset() }
}
