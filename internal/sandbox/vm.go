package sandbox

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/hashicorp/yamux"

	agentapi "github.com/husk-runtime/husk/api/agent/v1"
	"github.com/husk-runtime/husk/internal/admission"
	"github.com/husk-runtime/husk/internal/channel"
	"github.com/husk-runtime/husk/internal/config"
	"github.com/husk-runtime/husk/internal/qemu"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Files of a sandbox in its state directory (the front door's working
// directory, so that socket paths stay short whatever the id's length).
const (
	ConsoleLog = "console.log"
	QEMULog    = "qemu.log"
	// restoreLog keeps QEMU's log of a failed restore from a template.
	restoreLog  = "qemu-restore.log"
	DaemonLog   = "daemon.log"
	SharedDir   = "shared"
	agentSocket = "agent.sock"
	qmpSocket   = "qmp.sock"
)

// VM is a running guest: the QEMU process and the agent connection.
type VM struct {
	cmd     *exec.Cmd
	qmp     *qemu.QMP
	session *yamux.Session
	ttrpc   *ttrpc.Client
	Agent   agentapi.AgentService
	Accel   qemu.Accel

	// exited is closed when QEMU has exited; exitErr says how.
	exited  chan struct{}
	exitErr error

	sharedDir string // the share's root, a tmpfs mounted by StartVM

	// stopping is set once Stop began: the channel's end is expected then.
	stopping atomic.Bool
	// ChannelLost is set when the agent channel ended under a running
	// guest, which was then killed.
	ChannelLost atomic.Bool

	// Boot timings: QEMU started, agent connected; and the agent's own view.
	Started, Ready time.Time
	Guest          *agentapi.PingResponse
	// Restored says that the guest was restored from a template, not booted.
	Restored bool
	// turn is the guest's turn to start, which its sandbox ends once its
	// first container is created (see Sandbox.FinishStart).
	turn *admission.Turn
}

// VMOptions says what to boot.
type VMOptions struct {
	ID     string
	Dir    string // the sandbox's state directory, absolute
	Config *config.Config
	// Initrd, when set, replaces the configured guest image.
	Initrd string
	// Taps are the queues of tap devices QEMU gets as virtio-net devices.
	Taps []Tap
	// CPUs and MemoryMiB, when set, replace the configured size.
	CPUs, MemoryMiB int
	// Log, when set, gets what the boot has to say (a template made, or one
	// that could not be used).
	Log *slog.Logger
	// Context bounds the wait for the guest's turn to start (see
	// internal/admission): the request that asked for the sandbox, if it
	// has a deadline. Nothing of the VM's life is bound to it.
	Context context.Context
	// OnTurn, when set, is called when the guest's turn to start comes.
	OnTurn func()
}

func (o VMOptions) logger() *slog.Logger {
	if o.Log != nil {
		return o.Log
	}
	return slog.New(slog.DiscardHandler)
}

// Tap is a tap device's queue and the MAC address the guest's device on it
// takes.
type Tap struct {
	File *os.File
	MAC  string
}

// kernelArgs is the guest's command line: console on the ISA serial port;
// reboot=t makes a restart a triple fault, which -no-reboot turns into QEMU
// exiting (the agent's power-off), and panic=-1 does the same on a panic.
//
// Under TCG the guest runs without its local APIC timer (noapictimer) and
// ticks from the emulated PIT instead: the kernel then skips calibrating the
// APIC timer against the PIT, which under TCG takes about a quarter of a
// second, a third of the guest's boot. Under KVM the APIC timer is the fast
// path (TSC deadline, no calibration) and the PIT would cost exits, so it
// stays.
func kernelArgs(cfg *config.Config, accel qemu.Accel) string {
	args := []string{"console=ttyS0", "reboot=t", "panic=-1", "tsc=reliable", "no_timer_check", "i8042.noaux", "i8042.nokbd",
		"husk.msize=" + strconv.Itoa(cfg.SharedFS.MSize)}
	if accel == qemu.AccelTCG {
		args = append(args, "noapictimer")
	}
	if cfg.Runtime.Debug {
		args = append(args, "loglevel=7", "husk.debug=1")
	} else {
		args = append(args, "quiet")
	}
	if cfg.Runtime.DebugConsole {
		args = append(args, "husk.debug_console=1")
	}
	if cfg.Hypervisor.KernelParams != "" {
		args = append(args, cfg.Hypervisor.KernelParams)
	}
	return strings.Join(args, " ")
}

// vmPaths are where a VM's QEMU writes its console and finds its monitor
// and agent sockets and its share.
type vmPaths struct{ console, qmp, agent, shared string }

// sandboxPaths are a sandbox's: its sockets are named relative to its state
// directory, the front door's working directory, which keeps them short.
func sandboxPaths(dir string) vmPaths {
	return vmPaths{console: filepath.Join(dir, ConsoleLog), qmp: qmpSocket, agent: agentSocket, shared: filepath.Join(dir, SharedDir)}
}

// vmConfig builds QEMU's configuration for the sandbox. A template is made
// and restored with the same one (other paths, same devices in the same
// order), as QEMU can only restore a guest into the machine it was saved from.
func vmConfig(opts VMOptions, accel qemu.Accel, paths vmPaths) *qemu.Config {
	h := opts.Config.Hypervisor
	initrd := h.Initrd
	if opts.Initrd != "" {
		initrd = opts.Initrd
	}
	devices := []qemu.Device{
		qemu.SerialConsoleToFile{Path: paths.console},
		qemu.QMPClient{SocketPath: paths.qmp},
		qemu.VirtioSerialPort{ID: "agent", SocketPath: paths.agent, Name: channel.PortName},
		qemu.Virtio9P{ID: "shared", Path: paths.shared, Tag: channel.SharedTag},
		qemu.VirtioRNG{ID: "rng0"},
	}
	for i, tap := range opts.Taps {
		// The taps are QEMU's inherited descriptors from 3 on, in order.
		devices = append(devices, qemu.VirtioNetTap{ID: fmt.Sprintf("net%d", i), FD: 3 + i, MAC: tap.MAC})
	}
	return &qemu.Config{
		Binary:     h.Path,
		Name:       opts.ID,
		Kernel:     h.Kernel,
		Initrd:     initrd,
		KernelArgs: kernelArgs(opts.Config, accel),
		CPUs:       orDefault(opts.CPUs, h.VCPUs),
		MemoryMiB:  orDefault(opts.MemoryMiB, h.MemoryMiB),
		Accel:      accel,
		TBSizeMiB:  h.TCGTBSizeMiB,
		Devices:    devices,
	}
}

func orDefault(v, def int) int {
	if v > 0 {
		return v
	}
	return def
}

// maxVCPUs bounds a VM's vCPUs: QEMU's microvm takes no more, and more than
// the host has only adds contention.
func maxVCPUs() int { return min(runtime.NumCPU(), 64) }

// VMSize sizes the VM for a container's resources, so that its limits can
// be used: its memory limit is added to the configured memory, and its CPU
// quota (quota/period, rounded up) and the CPUs its cpuset names raise the
// vCPUs, up to the host's CPUs.
func VMSize(cfg *config.Config, res *specs.LinuxResources) (cpus, memoryMiB int) {
	cpus, memoryMiB = cfg.Hypervisor.VCPUs, cfg.Hypervisor.MemoryMiB
	if res == nil {
		return cpus, memoryMiB
	}
	if m := res.Memory; m != nil && m.Limit != nil && *m.Limit > 0 {
		memoryMiB += int((*m.Limit + (1<<20 - 1)) >> 20)
	}
	if c := res.CPU; c != nil && c.Quota != nil && *c.Quota > 0 && c.Period != nil && *c.Period > 0 {
		want := int((uint64(*c.Quota) + *c.Period - 1) / *c.Period)
		cpus = max(cpus, min(want, maxVCPUs()))
	}
	if c := res.CPU; c != nil {
		if highest, ok := highestCPU(c.Cpus); ok {
			cpus = max(cpus, min(highest+1, maxVCPUs()))
		}
	}
	return cpus, memoryMiB
}

// highestCPU is the highest CPU number in a cpuset list in the kernel's
// syntax ("0-1", "0,2-3", "0-7:2/4"), false when the list names none or is
// not one: the guest's cgroup then refuses it with its own error, as the
// host's would under runc.
func highestCPU(list string) (int, bool) {
	highest := -1
	for _, part := range strings.Split(list, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		part, _, _ = strings.Cut(part, ":") // a stride narrows the range, never raises it
		lo, hi, isRange := strings.Cut(part, "-")
		if !isRange {
			hi = lo
		}
		a, errA := strconv.Atoi(strings.TrimSpace(lo))
		b, errB := strconv.Atoi(strings.TrimSpace(hi))
		if errA != nil || errB != nil || a < 0 || b < a {
			return 0, false
		}
		highest = max(highest, b)
	}
	return highest, highest >= 0
}

// StartVM starts the guest and waits for its agent: restored from the
// configuration's template where one fits (made first if there is none),
// booted otherwise, or when the restore fails. The process's working
// directory must be opts.Dir. On error nothing of the VM is left running.
func StartVM(opts VMOptions) (*VM, error) {
	accel, _, err := qemu.ChooseAccel(opts.Config.Hypervisor.Accel)
	if err != nil {
		return nil, err
	}
	log := opts.logger()
	var tmpl *Template
	if why := templateMisfit(opts); why == "" {
		if tmpl, err = EnsureTemplate(opts, accel); err != nil {
			log.Warn("booting the guest: no template", "err", err)
		}
	} else if opts.Config.Hypervisor.Template {
		log.Debug("booting the guest: no template", "reason", why)
	}
	// The template is made, or waited for, before the turn: its maker
	// takes a turn of its own.
	turn, err := startTurn(opts)
	if err != nil {
		return nil, err
	}
	vm, err := restoreOrBoot(opts, accel, tmpl)
	if err != nil {
		endTurn(log, turn)
		return nil, err
	}
	vm.turn = turn
	return vm, nil
}

// startTurn waits for the guest's turn to start: at most
// runtime.concurrent_starts guests start at once on the host.
func startTurn(opts VMOptions) (*admission.Turn, error) {
	ctx := opts.Context
	if ctx == nil {
		ctx = context.Background()
	}
	slots := opts.Config.Runtime.ConcurrentStarts
	if slots == 0 {
		slots = admission.DefaultSlots()
	}
	turn, err := admission.Gate{Dir: admission.Dir, Slots: slots}.Enter(ctx)
	if err != nil {
		return nil, err
	}
	opts.logger().Info("start turn began", "ahead", turn.Ahead, "slots", slots, "waited", turn.Waited.Round(time.Millisecond).String())
	if opts.OnTurn != nil {
		opts.OnTurn()
	}
	return turn, nil
}

// endTurn ends a turn to start, once.
func endTurn(log *slog.Logger, turn *admission.Turn) {
	// The times, in nanoseconds, show that turns on the host never overlap
	// beyond the slots.
	if held := turn.Leave(); held > 0 {
		log.Info("start turn ended", "held", held.Round(time.Millisecond).String(),
			"began_ns", turn.Since.UnixNano(), "ended_ns", turn.Since.Add(held).UnixNano())
	}
}

// restoreOrBoot starts the guest from tmpl, or boots it when tmpl is nil
// or the restore fails.
func restoreOrBoot(opts VMOptions, accel qemu.Accel, tmpl *Template) (*VM, error) {
	log := opts.logger()
	if tmpl != nil {
		vm, err := launchVM(opts, accel, tmpl)
		if err == nil {
			return vm, nil
		}
		// QEMU refused the template, or the restored guest died: it would
		// for the next sandbox too. A restore that only ran out of time on
		// a loaded host keeps it.
		var restoreErr *RestoreError
		if errors.As(err, &restoreErr) || errors.Is(err, errQEMUExited) {
			tmpl.Discard(opts.Config.Agent.BootTimeout.Duration)
		}
		// The boot below starts QEMU's log afresh.
		_ = os.Rename(QEMULog, restoreLog)
		log.Warn("restoring the guest from its template failed; booting it", "err", err, "template", tmpl.Dir, "qemu_log", restoreLog)
	}
	return launchVM(opts, accel, nil)
}

// launchVM starts QEMU for the sandbox and waits for its agent: a guest
// restored from tmpl, or booted when tmpl is nil.
func launchVM(opts VMOptions, accel qemu.Accel, tmpl *Template) (_ *VM, retErr error) {
	cfg := opts.Config
	sharedDir := filepath.Join(opts.Dir, SharedDir)
	if err := os.MkdirAll(sharedDir, 0o711); err != nil {
		return nil, fmt.Errorf("creating the shared directory: %w", err)
	}
	if err := mountShareRoot(sharedDir); err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			unmountShareRoot(sharedDir)
		}
	}()
	machine := opts
	if tmpl != nil {
		machine = withPlaceholderMACs(opts)
	}
	qcfg := vmConfig(machine, accel, sandboxPaths(opts.Dir))
	if tmpl != nil {
		qcfg.Restore, qcfg.MemoryFile = true, tmpl.memoryFile()
	}
	args, err := qcfg.Args()
	if err != nil {
		return nil, fmt.Errorf("qemu configuration: %w", err)
	}
	// QEMU connects to these as a client at start-up, before the guest runs,
	// so nothing the guest writes can be lost to an absent listener.
	agentL, err := listenUnix(agentSocket)
	if err != nil {
		return nil, err
	}
	defer agentL.Close()
	qmpL, err := listenUnix(qmpSocket)
	if err != nil {
		return nil, err
	}
	defer qmpL.Close()

	logFile, err := os.OpenFile(QEMULog, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("creating %s: %w", QEMULog, err)
	}
	defer logFile.Close()

	vm := &VM{Accel: accel, exited: make(chan struct{}), sharedDir: sharedDir}
	var taps []*os.File
	for _, tap := range opts.Taps {
		taps = append(taps, tap.File)
	}
	if err := vm.start(cfg.Hypervisor.Path, args, "", logFile, taps); err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			vm.Kill()
		}
	}()

	deadline := vm.Started.Add(cfg.Agent.BootTimeout.Duration)
	qmpConn, err := vm.accept(qmpL, time.Until(deadline))
	if err == nil {
		err = vm.openQMP(qmpConn, deadline)
	}
	if err == nil && tmpl != nil {
		err = vm.restore(tmpl, deadline)
	}
	if err == nil {
		err = vm.connect(agentL, deadline, tmpl == nil)
	}
	if err != nil {
		var restoreErr *RestoreError
		if errors.As(err, &restoreErr) {
			return nil, err
		}
		return nil, &BootError{Timeout: cfg.Agent.BootTimeout.Duration, Cause: err}
	}
	vm.Ready = time.Now()
	vm.Restored = tmpl != nil
	go vm.watchChannel()
	return vm, nil
}

// start runs QEMU. QEMU must never outlive its front door (daemon or
// shim): the kernel kills it when the thread that started it ends, so that
// thread stays locked and alive for as long as QEMU runs. QEMU gets a
// network namespace of its own, empty: it needs none (its sockets are
// paths, a tap comes as a descriptor), and a caller that takes the task's
// pid for a container's (ctr run --cni) must not reach the host's network.
// QEMU runs in dir, or in husk's working directory if dir is "".
func (vm *VM) start(binary string, args []string, dir string, logFile *os.File, extraFiles []*os.File) error {
	vm.cmd = exec.Command(binary, args...)
	vm.cmd.Dir = dir
	vm.cmd.Stdout, vm.cmd.Stderr = logFile, logFile
	vm.cmd.ExtraFiles = extraFiles
	vm.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Cloneflags: syscall.CLONE_NEWNET}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := vm.cmd.Start(); err != nil {
			started <- err
			close(vm.exited)
			return
		}
		started <- nil
		vm.exitErr = vm.cmd.Wait()
		close(vm.exited)
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("starting qemu: %w", err)
	}
	vm.Started = time.Now()
	return nil
}

// watchChannel ends QEMU when the agent channel ends while QEMU runs: a
// guest nobody can reach anymore would leave its containers' callers
// waiting for ever, and ending it reports them dead instead.
func (vm *VM) watchChannel() {
	select {
	case <-vm.session.CloseChan():
	case <-vm.exited:
		return
	}
	// QEMU's own end closes the channel too: give its exit a moment to
	// be seen before calling the channel lost.
	select {
	case <-vm.exited:
		return
	case <-time.After(200 * time.Millisecond):
	}
	if vm.stopping.Load() {
		return
	}
	vm.ChannelLost.Store(true)
	if vm.cmd.Process != nil {
		_ = vm.cmd.Process.Kill()
	}
}

// BootError is a guest that did not come up; ConsoleLog names the kept copy
// of its console output.
type BootError struct {
	Timeout    time.Duration
	Cause      error
	ConsoleLog string
}

func (e *BootError) Error() string {
	msg := fmt.Sprintf("the guest did not come up within %s: %v", e.Timeout, e.Cause)
	if e.ConsoleLog != "" {
		msg += "; see the console log " + e.ConsoleLog
	}
	return msg
}

func (e *BootError) Unwrap() error { return e.Cause }

// openQMP takes QEMU's monitor connection.
func (vm *VM) openQMP(conn net.Conn, deadline time.Time) error {
	_ = conn.SetDeadline(deadline)
	var err error
	if vm.qmp, err = qemu.NewQMP(conn); err != nil {
		return fmt.Errorf("qemu's monitor: %w", err)
	}
	return nil
}

// connect takes QEMU's agent connection, greets the agent (after its ready
// token when the guest booted: a restored guest said it to the template's
// host), and waits for the agent's first stream, all before deadline.
func (vm *VM) connect(agentL *net.UnixListener, deadline time.Time, booted bool) error {
	agentConn, err := vm.accept(agentL, time.Until(deadline))
	if err != nil {
		return fmt.Errorf("qemu's agent channel: %w", err)
	}
	_ = agentConn.SetDeadline(deadline)
	if booted {
		if err := vm.awaitReady(agentConn); err != nil {
			return err
		}
	}
	if err := channel.WriteHello(agentConn, newHello()); err != nil {
		return err
	}
	_ = agentConn.SetDeadline(time.Time{})
	if vm.session, err = channel.Host(agentConn); err != nil {
		return err
	}
	control, err := vm.acceptStream(time.Until(deadline))
	if err != nil {
		return err
	}
	vm.ttrpc = ttrpc.NewClient(control)
	vm.Agent = agentapi.NewAgentClient(vm.ttrpc)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if vm.Guest, err = vm.Agent.Ping(ctx, &agentapi.PingRequest{}); err != nil {
		return fmt.Errorf("pinging the agent: %w", err)
	}
	return nil
}

// awaitReady reads the agent's ready token; QEMU's exit ends the wait with
// its error rather than a bare end of file.
func (vm *VM) awaitReady(conn net.Conn) error {
	err := channel.ReadReady(conn)
	if err != nil && vm.exitedWithin(100*time.Millisecond) {
		return vm.exitError()
	}
	return err
}

// exitedWithin says whether QEMU has exited or does within d: a broken
// connection is often QEMU's end, whose own error says more.
func (vm *VM) exitedWithin(d time.Duration) bool {
	select {
	case <-vm.exited:
		return true
	case <-time.After(d):
		return false
	}
}

// newHello is the host's hello: its clock and fresh entropy.
func newHello() channel.Hello {
	h := channel.Hello{RealtimeNs: time.Now().UnixNano()}
	_, _ = rand.Read(h.Entropy[:]) // never fails on Linux
	return h
}

func listenUnix(name string) (*net.UnixListener, error) {
	_ = os.Remove(name)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: name, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", name, err)
	}
	return l, nil
}

// errQEMUExited is returned when QEMU ends while the front door waits on it.
var errQEMUExited = errors.New("qemu exited")

func (vm *VM) exitError() error {
	if vm.exitErr != nil {
		return fmt.Errorf("%w: %v; see %s", errQEMUExited, vm.exitErr, QEMULog)
	}
	return fmt.Errorf("%w; see %s", errQEMUExited, QEMULog)
}

// accept waits for QEMU to connect to l, for QEMU to exit, or for timeout.
func (vm *VM) accept(l *net.UnixListener, timeout time.Duration) (net.Conn, error) {
	_ = l.SetDeadline(time.Now().Add(timeout))
	return vm.awaitConn(l.Accept, timeout)
}

// acceptStream waits for the agent to open its control stream.
func (vm *VM) acceptStream(timeout time.Duration) (net.Conn, error) {
	return vm.awaitConn(vm.session.Accept, timeout)
}

// awaitConn runs accept until it returns, QEMU exits, or timeout passes.
func (vm *VM) awaitConn(accept func() (net.Conn, error), timeout time.Duration) (net.Conn, error) {
	type result struct {
		conn net.Conn
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := accept()
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		return r.conn, r.err
	case <-vm.exited:
		return nil, vm.exitError()
	case <-time.After(timeout):
		return nil, errors.New("timed out waiting for a connection from the guest")
	}
}

// Exited is closed when QEMU has exited.
func (vm *VM) Exited() <-chan struct{} { return vm.exited }

// PID is QEMU's process id.
func (vm *VM) PID() int { return vm.cmd.Process.Pid }

// OpenStream opens a stdio stream to the agent.
func (vm *VM) OpenStream(h *agentapi.StreamHeader) (net.Conn, error) {
	s, err := vm.session.Open()
	if err != nil {
		return nil, fmt.Errorf("opening a stream to the agent: %w", err)
	}
	if err := channel.WriteHeader(s, h); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Stop shuts the guest down: the agent powers it off, or QEMU is told to
// quit, or it is killed; Stop returns once QEMU has exited.
func (vm *VM) Stop(timeout time.Duration) {
	vm.stopping.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// Once the agent has answered, the guest holds nothing the host still
	// needs (it synced before answering), so QEMU is asked to quit rather
	// than waited for while the guest's kernel powers off.
	if vm.Agent != nil {
		if _, err := vm.Agent.Shutdown(ctx, &agentapi.Empty{}); err == nil && vm.qmp != nil {
			_ = vm.qmp.Quit(ctx)
		}
	}
	select {
	case <-vm.exited:
	case <-ctx.Done():
		if vm.qmp != nil {
			qctx, qcancel := context.WithTimeout(context.Background(), time.Second)
			_ = vm.qmp.Quit(qctx)
			qcancel()
		}
		select {
		case <-vm.exited:
		case <-time.After(time.Second):
			vm.Kill()
		}
	}
	vm.closeConns()
}

// Kill ends QEMU at once and waits for it.
func (vm *VM) Kill() {
	if vm.cmd.Process != nil {
		_ = vm.cmd.Process.Kill()
	}
	<-vm.exited
	vm.closeConns()
}

func (vm *VM) closeConns() {
	unmountShareRoot(vm.sharedDir)
	if vm.ttrpc != nil {
		vm.ttrpc.Close()
	}
	if vm.session != nil {
		vm.session.Close()
	}
	if vm.qmp != nil {
		vm.qmp.Close()
	}
}

// Stopping says whether Stop has begun: the guest's end is then asked for,
// not a crash.
func (vm *VM) Stopping() bool { return vm.stopping.Load() }
