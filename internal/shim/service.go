package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/mount"
	runtimeoptions "github.com/containerd/containerd/pkg/runtimeoptions/v1"
	"github.com/containerd/containerd/pkg/shutdown"
	"github.com/containerd/containerd/protobuf"
	"github.com/containerd/containerd/runtime"
	"github.com/containerd/containerd/runtime/v2/shim"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/husk-runtime/husk/internal/config"
	"github.com/husk-runtime/husk/internal/oci"
	"github.com/husk-runtime/husk/internal/sandbox"
	"github.com/husk-runtime/husk/internal/state"
)

// StateRoot holds one directory per sandbox a shim serves: the VM's
// sockets, console log and shared directory.
const StateRoot = "/run/husk/containerd"

var empty = &emptypb.Empty{}

// service is the Task API of one sandbox.
//
// Locks, outermost first: bootMu (one boot at a time), mu (the shim's
// records), then the sandbox's own lock, then startsMu and the event
// queue's, which nothing is called under. No lock is held across a FIFO open
// or, except bootMu, an agent call.
type service struct {
	namespace string
	events    *eventQueue
	shutdown  shutdown.Service
	log       *slog.Logger
	// address is the shim's socket, removed when the shim ends.
	address string

	bootMu sync.Mutex

	// vmPID is QEMU's pid, what the shim reports as every task's pid: the
	// containers' own processes live in the guest (Pids lists them).
	vmPID atomic.Uint32

	// startsMu guards started and pendingExits, which order each process's
	// exit event after its start event: a process whose start event is not
	// out yet has its exit held back. A process missing from started is one
	// the shim no longer knows (deleted), whose exit is not published.
	startsMu     sync.Mutex
	started      map[string]bool
	pendingExits map[string]*eventstypes.TaskExit

	mu        sync.Mutex
	sb        *sandbox.Sandbox
	sandboxID string
	dir       string
	// holder holds the sandbox's host-side network namespace when its
	// first container had create hooks (see oci.StartNetNSHolder).
	holder   state.Process
	tasks    map[string]*taskRecord
	creating map[string]bool
	// deleting counts the Deletes under way. containerd asks every task's
	// connection for a Shutdown after its Delete: one that comes while
	// another task's Delete is under way must not end the shim before that
	// Delete has answered (a pod whose VM died has all its tasks deleted
	// at once).
	deleting int
	// shutdownAsked: containerd asked for a Shutdown while the shim was
	// busy; it ends once idle. Dropping the request instead would leave a
	// shim whose Create failed as its caller's deadline passed: containerd
	// asks for the Shutdown as soon as the Create's call ends, which may be
	// before the Create itself has.
	shutdownAsked bool
}

// taskRecord is what the shim keeps of one container.
type taskRecord struct {
	id, bundle string
	io         ioPaths
	rootfs     string // where the shim mounted containerd's rootfs; "" if it did not
	netns      string // the host network namespace the spec names
	started    bool
	paused     bool
	execs      map[string]*execRecord
}

type execRecord struct {
	io       ioPaths
	process  json.RawMessage
	starting bool
	// running is closed once the exec has started, gone if it failed to
	// start or was deleted first: a Wait may come before either.
	running, gone chan struct{}
	goneOnce      sync.Once
}

func (e *execRecord) markGone() { e.goneOnce.Do(func() { close(e.gone) }) }

// processKey names a process in started and pendingExits.
func processKey(containerID, execID string) string { return containerID + "/" + execID }

func newService(ctx context.Context, namespace string, publisher shim.Publisher, sd shutdown.Service, log *slog.Logger) *service {
	s := &service{
		namespace: namespace, shutdown: sd, log: log,
		events:       newEventQueue(publisher, namespace, log),
		started:      map[string]bool{},
		pendingExits: map[string]*eventstypes.TaskExit{},
		tasks:        map[string]*taskRecord{},
		creating:     map[string]bool{},
	}
	// `start` wrote the address in the first bundle, the working directory
	// now; booting changes the working directory, so it is read once here.
	if address, err := shim.ReadAddress("address"); err == nil {
		s.address = address
	}
	// However the shim ends (Shutdown, or SIGTERM from containerd), the VM
	// goes, then the socket, and the last events are published.
	sd.RegisterCallback(func(context.Context) error {
		s.mu.Lock()
		s.stopSandbox()
		s.mu.Unlock()
		if s.address != "" {
			_ = shim.RemoveSocket(s.address)
		}
		s.events.close()
		return nil
	})
	return s
}

// RegisterTTRPC makes the service the shim's Task API.
func (s *service) RegisterTTRPC(server *ttrpc.Server) error {
	taskapi.RegisterTaskService(server, s)
	return nil
}

// task looks up a container; s.mu must be held.
func (s *service) task(id string) (*taskRecord, error) {
	t, ok := s.tasks[id]
	if !ok {
		return nil, errdefs.ToGRPCf(errdefs.ErrNotFound, "container %s", id)
	}
	return t, nil
}

// sandboxFor returns the sandbox after checking the container exists.
func (s *service) sandboxFor(id string) (*sandbox.Sandbox, *taskRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, err := s.task(id)
	if err != nil {
		return nil, nil, err
	}
	return s.sb, t, nil
}

// Create makes a container: the first one boots the sandbox's VM, a pod's
// later ones join it.
func (s *service) Create(ctx context.Context, r *taskapi.CreateTaskRequest) (_ *taskapi.CreateTaskResponse, retErr error) {
	if err := oci.ValidateID(r.ID); err != nil {
		return nil, errdefs.ToGRPCf(errdefs.ErrInvalidArgument, "%v", err)
	}
	if r.Checkpoint != "" || r.ParentCheckpoint != "" {
		return nil, errdefs.ToGRPCf(errdefs.ErrNotImplemented, "restoring from a checkpoint is not supported by husk")
	}
	s.mu.Lock()
	if _, exists := s.tasks[r.ID]; exists || s.creating[r.ID] {
		s.mu.Unlock()
		return nil, errdefs.ToGRPCf(errdefs.ErrAlreadyExists, "container %s", r.ID)
	}
	s.creating[r.ID] = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.creating, r.ID)
		s.mu.Unlock()
		s.shutdownIfAsked()
	}()

	spec, err := oci.ReadSpec(r.Bundle)
	if err != nil {
		return nil, errdefs.ToGRPCf(errdefs.ErrInvalidArgument, "%v", err)
	}
	role := roleOf(r.ID, spec.Annotations)
	t := &taskRecord{id: r.ID, bundle: r.Bundle, netns: oci.NetworkNamespacePath(spec), execs: map[string]*execRecord{},
		io: ioPaths{stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal}}
	var join map[specs.LinuxNamespaceType]string
	if role.inPod {
		s.mu.Lock()
		sandboxTask, ok := s.tasks[role.sandboxID]
		booted := s.sb != nil && s.sandboxID == role.sandboxID
		s.mu.Unlock()
		if !ok || !booted {
			return nil, errdefs.ToGRPCf(errdefs.ErrFailedPrecondition, "the pod's sandbox %s is not running in this shim", role.sandboxID)
		}
		join = podNamespaces(spec, role.sandboxID, int(s.vmPID.Load()), sandboxTask.netns)
	}
	bundle, err := mountRootfs(r, spec, t)
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			unmountRootfs(t)
		}
	}()
	var resources *specs.LinuxResources
	if spec.Linux != nil {
		resources = spec.Linux.Resources
	}
	netns, forNew, holder, err := s.runCreateHooks(r.ID, r.Bundle, spec, t.netns)
	if err != nil {
		return nil, errdefs.ToGRPCf(errdefs.ErrFailedPrecondition, "%v", err)
	}
	sb, err := s.ensureSandbox(ctx, role.sandboxID, netns, forNew, holder, resources, r.Options)
	if err != nil {
		oci.StopNetNSHolder(holder)
		return nil, errdefs.ToGRPC(err)
	}
	stdio, err := openStdio(ctx, t.io, r.ID, s.namespace)
	if err != nil {
		return nil, errdefs.ToGRPCf(errdefs.ErrInvalidArgument, "%v", err)
	}
	s.know(processKey(r.ID, ""))
	if _, err := sb.Create(r.ID, bundle, stdio, join); err != nil {
		stdio.Close()
		s.forgetContainer(r.ID)
		return nil, grpcError(err)
	}
	s.mu.Lock()
	s.tasks[r.ID] = t
	s.mu.Unlock()
	pid := s.vmPID.Load()
	s.events.publish(runtime.TaskCreateEventTopic, &eventstypes.TaskCreate{
		ContainerID: r.ID, Bundle: r.Bundle, Rootfs: r.Rootfs, Pid: pid,
		IO: &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
	})
	return &taskapi.CreateTaskResponse{Pid: pid}, nil
}

// mountRootfs mounts the rootfs containerd passes (a snapshot's mounts) at
// the bundle's rootfs, in the shim's own mount namespace, and returns the
// bundle to create from.
func mountRootfs(r *taskapi.CreateTaskRequest, spec *specs.Spec, t *taskRecord) (*oci.Bundle, error) {
	if len(r.Rootfs) > 0 {
		target := filepath.Join(r.Bundle, "rootfs")
		if err := os.MkdirAll(target, 0o711); err != nil {
			return nil, errdefs.ToGRPC(err)
		}
		var mounts []mount.Mount
		for _, m := range r.Rootfs {
			mounts = append(mounts, mount.Mount{Type: m.Type, Source: m.Source, Options: m.Options})
		}
		if err := mount.All(mounts, target); err != nil {
			// Some of the mounts may have been made.
			_ = mount.UnmountAll(target, 0)
			return nil, errdefs.ToGRPCf(errdefs.ErrInvalidArgument, "mounting the rootfs: %v", err)
		}
		t.rootfs = target
	}
	bundle, err := oci.NewBundle(r.Bundle, spec)
	if err != nil {
		unmountRootfs(t)
		return nil, errdefs.ToGRPCf(errdefs.ErrInvalidArgument, "%v", err)
	}
	return bundle, nil
}

// configPath is the configuration file a new sandbox is made with: the
// ConfigPath of containerd's runtime options where the caller gives one (a
// CRI runtime's options.ConfigPath, ctr's --runtime-config-path), so that
// one containerd can offer husk runtimes configured differently; otherwise
// HUSK_CONFIG or the default path, as for the CLI.
func configPath(options typeurl.Any) (path string, explicit bool, err error) {
	if options == nil || len(options.GetValue()) == 0 {
		path, explicit = config.Path("")
		return path, explicit, nil
	}
	decoded, err := typeurl.UnmarshalAny(options)
	if err != nil {
		return "", false, fmt.Errorf("%w: runtime options: %v", errdefs.ErrInvalidArgument, err)
	}
	opts, ok := decoded.(*runtimeoptions.Options)
	if !ok {
		return "", false, fmt.Errorf("%w: runtime options of type %s: husk reads only %s (ConfigPath)",
			errdefs.ErrInvalidArgument, options.GetTypeUrl(), "runtimeoptions.v1.Options")
	}
	path, explicit = config.Path(opts.ConfigPath)
	return path, explicit, nil
}

func unmountRootfs(t *taskRecord) {
	if t.rootfs != "" {
		_ = mount.UnmountAll(t.rootfs, 0)
		t.rootfs = ""
	}
}

// ensureSandbox boots the sandbox's VM, joined to the network namespace
// netns and sized for resources, with the configuration options name,
// unless it runs. ctx, containerd's request, bounds the wait for the guest's
// turn to start.
func (s *service) ensureSandbox(ctx context.Context, sandboxID, netns string, netnsForNew bool, holder state.Process, resources *specs.LinuxResources, options typeurl.Any) (*sandbox.Sandbox, error) {
	s.bootMu.Lock()
	defer s.bootMu.Unlock()
	s.mu.Lock()
	sb := s.sb
	s.mu.Unlock()
	if sb != nil {
		return sb, nil
	}
	path, explicit, err := configPath(options)
	if err != nil {
		return nil, err
	}
	cfg, err := config.Load(path, explicit)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(StateRoot, s.namespace, sandboxID)
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return nil, fmt.Errorf("creating the sandbox's state directory: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, shimPIDFile), []byte(fmt.Sprint(os.Getpid())), 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("recording the shim's pid: %w", err)
	}
	if err := writeNetworkRecord(dir, networkRecord{NetNS: netns, Holder: holder}); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	sb, err = sandbox.Boot(sandbox.Options{ID: sandboxID, Dir: dir, Config: cfg,
		Log: s.log.With("sandbox", sandboxID), OnExit: s.exited, NetNS: netns, NetNSForNew: netnsForNew, Resources: resources,
		Context: ctx})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s.vmPID.Store(uint32(sb.VMPID()))
	s.mu.Lock()
	s.sb, s.sandboxID, s.dir, s.holder = sb, sandboxID, dir, holder
	s.mu.Unlock()
	return sb, nil
}

// runCreateHooks runs a container's prestart and createRuntime hooks on
// the host, as the command line does (see internal/cli/hooks.go). For the
// sandbox's first container it starts the holder of its host-side network
// namespace, which the hooks' state names and which the sandbox then boots
// joined to (forNew says the spec asked for a new namespace); for a later
// one, the hooks get the sandbox's holder, or QEMU's pid. It returns the
// namespace to boot with.
func (s *service) runCreateHooks(id, bundle string, spec *specs.Spec, netns string) (bootNetNS string, forNew bool, holder state.Process, err error) {
	if !oci.HasCreateHooks(spec) {
		return netns, false, state.Process{}, nil
	}
	s.mu.Lock()
	booted, pid := s.sb != nil, int(s.vmPID.Load())
	if s.holder.PID != 0 {
		pid = s.holder.PID
	}
	s.mu.Unlock()
	if !booted {
		if holder, err = oci.StartNetNSHolder(spec); err != nil {
			return "", false, state.Process{}, err
		}
		pid = holder.PID
		if oci.AsksNewNetNS(spec) {
			netns, forNew = oci.NetNSOf(holder.PID), true
		}
	}
	hookState := specs.State{Version: specs.Version, ID: id, Status: specs.StateCreating, Pid: pid, Bundle: bundle, Annotations: spec.Annotations}
	if err := oci.RunCreateHooks(spec, hookState); err != nil {
		oci.StopNetNSHolder(holder)
		return "", false, state.Process{}, err
	}
	return netns, forNew, holder, nil
}

// runHooksWarning runs a container's poststart or poststop hooks, whose
// failure is a warning.
func (s *service) runHooksWarning(t *taskRecord, point oci.HookPoint, status specs.ContainerState, pid int) {
	spec, err := oci.ReadSpec(t.bundle)
	if err != nil || len(oci.Hooks(spec, point)) == 0 {
		return
	}
	hookState := specs.State{Version: specs.Version, ID: t.id, Status: status, Pid: pid, Bundle: t.bundle, Annotations: spec.Annotations}
	if err := oci.RunHooks(spec, point, hookState); err != nil {
		s.log.Warn("hook failed", "container", t.id, "err", err)
	}
}

// stopSandbox powers the VM off and removes its state. s.mu must be held.
func (s *service) stopSandbox() {
	if s.sb == nil {
		return
	}
	s.sb.Stop()
	oci.StopNetNSHolder(s.holder)
	s.holder = state.Process{}
	if err := os.RemoveAll(s.dir); err != nil {
		s.log.Error("removing the sandbox's state", "err", err)
	}
	s.sb = nil
}

// know registers a process whose events the shim publishes.
func (s *service) know(key string) {
	s.startsMu.Lock()
	defer s.startsMu.Unlock()
	s.started[key] = false
}

// forgetContainer drops a container's processes: their exits are no
// longer published.
func (s *service) forgetContainer(containerID string) {
	s.startsMu.Lock()
	defer s.startsMu.Unlock()
	prefix := processKey(containerID, "")
	for key := range s.started {
		if strings.HasPrefix(key, prefix) {
			delete(s.started, key)
			delete(s.pendingExits, key)
		}
	}
}

// forgetProcess drops one process.
func (s *service) forgetProcess(key string) {
	s.startsMu.Lock()
	defer s.startsMu.Unlock()
	delete(s.started, key)
	delete(s.pendingExits, key)
}

// startPublished publishes a process's start event, then its exit if that
// came first.
func (s *service) startPublished(key, topic string, event any) {
	s.startsMu.Lock()
	defer s.startsMu.Unlock()
	s.events.publish(topic, event)
	s.started[key] = true
	if exit := s.pendingExits[key]; exit != nil {
		delete(s.pendingExits, key)
		s.events.publish(runtime.TaskExitEventTopic, exit)
	}
}

// exited publishes a process's exit, or holds it until its start event is
// out. The sandbox calls it with its own lock held, before anyone waiting on
// the process is released, so the exit event precedes what they do next.
func (s *service) exited(e sandbox.ExitEvent) {
	id := e.Exec
	if id == "" {
		id = e.Container
	}
	exit := &eventstypes.TaskExit{ContainerID: e.Container, ID: id, Pid: s.vmPID.Load(),
		ExitStatus: uint32(e.Status), ExitedAt: protobuf.ToTimestamp(e.At)}
	key := processKey(e.Container, e.Exec)
	s.startsMu.Lock()
	defer s.startsMu.Unlock()
	started, known := s.started[key]
	switch {
	case !known:
		return
	case !started:
		s.pendingExits[key] = exit
		return
	}
	if e.OOMKilled {
		s.events.publish(runtime.TaskOOMEventTopic, &eventstypes.TaskOOM{ContainerID: e.Container})
	}
	s.events.publish(runtime.TaskExitEventTopic, exit)
}

// Start starts a created container's process or an exec added to it.
func (s *service) Start(ctx context.Context, r *taskapi.StartRequest) (*taskapi.StartResponse, error) {
	sb, t, err := s.sandboxFor(r.ID)
	if err != nil {
		return nil, err
	}
	pid := s.vmPID.Load()
	if r.ExecID == "" {
		if _, err := sb.Start(r.ID); err != nil {
			return nil, grpcError(err)
		}
		s.mu.Lock()
		t.started = true
		s.mu.Unlock()
		s.startPublished(processKey(r.ID, ""), runtime.TaskStartEventTopic, &eventstypes.TaskStart{ContainerID: r.ID, Pid: pid})
		s.runHooksWarning(t, oci.Poststart, specs.StateRunning, int(pid))
		return &taskapi.StartResponse{Pid: pid}, nil
	}
	s.mu.Lock()
	e, ok := t.execs[r.ExecID]
	if ok && e.starting {
		s.mu.Unlock()
		return nil, errdefs.ToGRPCf(errdefs.ErrFailedPrecondition, "exec %s has already started", r.ExecID)
	}
	if ok {
		e.starting = true
	}
	s.mu.Unlock()
	if !ok {
		return nil, errdefs.ToGRPCf(errdefs.ErrNotFound, "exec %s", r.ExecID)
	}
	stdio, err := openStdio(ctx, e.io, r.ID, s.namespace)
	if err == nil {
		if _, err = sb.Exec(r.ID, r.ExecID, e.process, stdio); err != nil {
			stdio.Close()
			err = grpcError(err)
		}
	} else {
		err = errdefs.ToGRPCf(errdefs.ErrInvalidArgument, "%v", err)
	}
	if err != nil {
		// Waiters learn that it will never run.
		e.markGone()
		return nil, err
	}
	close(e.running)
	s.startPublished(processKey(r.ID, r.ExecID), runtime.TaskExecStartedEventTopic,
		&eventstypes.TaskExecStarted{ContainerID: r.ID, ExecID: r.ExecID, Pid: pid})
	return &taskapi.StartResponse{Pid: pid}, nil
}

// Exec adds a process to a running container; Start starts it.
func (s *service) Exec(ctx context.Context, r *taskapi.ExecProcessRequest) (*emptypb.Empty, error) {
	if err := oci.ValidateID(r.ExecID); err != nil {
		return nil, errdefs.ToGRPCf(errdefs.ErrInvalidArgument, "exec id: %v", err)
	}
	if r.Spec == nil {
		return nil, errdefs.ToGRPCf(errdefs.ErrInvalidArgument, "exec %s: no process spec", r.ExecID)
	}
	var process specs.Process
	if err := json.Unmarshal(r.Spec.GetValue(), &process); err != nil {
		return nil, errdefs.ToGRPCf(errdefs.ErrInvalidArgument, "exec %s: process spec: %v", r.ExecID, err)
	}
	sb, t, err := s.sandboxFor(r.ID)
	if err != nil {
		return nil, err
	}
	if st, err := sb.Status(r.ID, ""); err != nil || st.Exited {
		return nil, errdefs.ToGRPCf(errdefs.ErrFailedPrecondition, "container %s is not running", r.ID)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !t.started {
		return nil, errdefs.ToGRPCf(errdefs.ErrFailedPrecondition, "container %s is not running", r.ID)
	}
	if _, exists := t.execs[r.ExecID]; exists {
		return nil, errdefs.ToGRPCf(errdefs.ErrAlreadyExists, "exec %s", r.ExecID)
	}
	t.execs[r.ExecID] = &execRecord{process: r.Spec.GetValue(), running: make(chan struct{}), gone: make(chan struct{}),
		io: ioPaths{stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal}}
	s.know(processKey(r.ID, r.ExecID))
	s.events.publish(runtime.TaskExecAddedEventTopic, &eventstypes.TaskExecAdded{ContainerID: r.ID, ExecID: r.ExecID})
	return empty, nil
}

// State reports on a container's process or an exec.
func (s *service) State(ctx context.Context, r *taskapi.StateRequest) (*taskapi.StateResponse, error) {
	s.mu.Lock()
	t, err := s.task(r.ID)
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	sb := s.sb
	resp := &taskapi.StateResponse{ID: r.ID, Bundle: t.bundle, Pid: s.vmPID.Load()}
	paths, started, paused := t.io, t.started, t.paused
	if r.ExecID != "" {
		e, ok := t.execs[r.ExecID]
		if !ok {
			s.mu.Unlock()
			return nil, errdefs.ToGRPCf(errdefs.ErrNotFound, "exec %s", r.ExecID)
		}
		resp.ID = r.ExecID
		paths, started, paused = e.io, e.starting, false
	}
	s.mu.Unlock()
	resp.Stdin, resp.Stdout, resp.Stderr, resp.Terminal = paths.stdin, paths.stdout, paths.stderr, paths.terminal
	resp.Status = task.Status_CREATED
	if !started {
		return resp, nil
	}
	st, err := sb.Status(r.ID, r.ExecID)
	if err != nil {
		if r.ExecID != "" {
			// Its start failed: it never ran.
			resp.Status = task.Status_STOPPED
			return resp, nil
		}
		return nil, grpcError(err)
	}
	switch {
	case st.Exited:
		resp.Status = task.Status_STOPPED
		resp.ExitStatus = uint32(st.ExitStatus)
		resp.ExitedAt = protobuf.ToTimestamp(st.ExitedAt)
	case paused:
		resp.Status = task.Status_PAUSED
	default:
		resp.Status = task.Status_RUNNING
	}
	return resp, nil
}

// Delete removes an exited (or never started) container, or an exec.
func (s *service) Delete(ctx context.Context, r *taskapi.DeleteRequest) (*taskapi.DeleteResponse, error) {
	s.mu.Lock()
	s.deleting++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.deleting--
		s.mu.Unlock()
		s.shutdownIfAsked()
	}()
	sb, t, err := s.sandboxFor(r.ID)
	if err != nil {
		return nil, err
	}
	pid := s.vmPID.Load()
	if r.ExecID != "" {
		return s.deleteExec(sb, t, r.ExecID)
	}
	st, err := sb.Status(r.ID, "")
	if err != nil {
		return nil, grpcError(err)
	}
	s.mu.Lock()
	started := t.started
	s.mu.Unlock()
	if started && !st.Exited {
		return nil, errdefs.ToGRPCf(errdefs.ErrFailedPrecondition, "cannot delete container %s: it is running", r.ID)
	}
	// A never-started container is killed here; its exit is not news.
	s.forgetContainer(r.ID)
	if err := sb.Remove(r.ID, true); err != nil {
		return nil, grpcError(err)
	}
	s.mu.Lock()
	unmountRootfs(t)
	delete(s.tasks, r.ID)
	for _, e := range t.execs {
		e.markGone()
	}
	s.mu.Unlock()
	if !st.Exited {
		st.ExitStatus, st.ExitedAt = 128+9, time.Now()
	}
	s.runHooksWarning(t, oci.Poststop, specs.StateStopped, 0)
	s.endPodWith(sb, r.ID)
	s.events.publish(runtime.TaskDeleteEventTopic, &eventstypes.TaskDelete{ContainerID: r.ID, Pid: pid,
		ExitStatus: uint32(st.ExitStatus), ExitedAt: protobuf.ToTimestamp(st.ExitedAt)})
	return &taskapi.DeleteResponse{Pid: pid, ExitStatus: uint32(st.ExitStatus), ExitedAt: protobuf.ToTimestamp(st.ExitedAt)}, nil
}

// endPodWith kills the pod's other containers when deleted is its sandbox
// container: the pod's VM serves the pod as long as its sandbox container
// exists, as a VM-per-pod runtime is expected to. The kubelet deletes a
// pod's containers first, so this is for other callers. Their exits are
// published as usual, and the VM ends once containerd has deleted them.
func (s *service) endPodWith(sb *sandbox.Sandbox, deleted string) {
	s.mu.Lock()
	if deleted != s.sandboxID {
		s.mu.Unlock()
		return
	}
	var running []string
	for id, t := range s.tasks {
		if t.started {
			running = append(running, id)
		}
	}
	s.mu.Unlock()
	for _, id := range running {
		if st, err := sb.Status(id, ""); err == nil && !st.Exited {
			if err := sb.Kill(id, "", int(unix.SIGKILL), true); err != nil && !isNotRunning(err) {
				s.log.Warn("ending a container of the pod whose sandbox container was deleted", "container", id, "err", err)
			}
		}
	}
}

func (s *service) deleteExec(sb *sandbox.Sandbox, t *taskRecord, execID string) (*taskapi.DeleteResponse, error) {
	s.mu.Lock()
	e, ok := t.execs[execID]
	s.mu.Unlock()
	if !ok {
		return nil, errdefs.ToGRPCf(errdefs.ErrNotFound, "exec %s", execID)
	}
	resp := &taskapi.DeleteResponse{Pid: s.vmPID.Load()}
	if st, err := sb.Status(t.id, execID); err == nil {
		// It ran: the sandbox forgets it once it has exited.
		if err := sb.RemoveExec(t.id, execID); err != nil {
			return nil, grpcError(err)
		}
		resp.ExitStatus, resp.ExitedAt = uint32(st.ExitStatus), protobuf.ToTimestamp(st.ExitedAt)
	}
	s.forgetProcess(processKey(t.id, execID))
	s.mu.Lock()
	delete(t.execs, execID)
	s.mu.Unlock()
	e.markGone()
	return resp, nil
}

// Pids lists the container's processes by their guest PIDs.
func (s *service) Pids(ctx context.Context, r *taskapi.PidsRequest) (*taskapi.PidsResponse, error) {
	sb, _, err := s.sandboxFor(r.ID)
	if err != nil {
		return nil, err
	}
	pids, err := sb.Processes(r.ID)
	if err != nil {
		return nil, grpcError(err)
	}
	resp := &taskapi.PidsResponse{}
	for _, pid := range pids {
		resp.Processes = append(resp.Processes, &task.ProcessInfo{Pid: uint32(pid)})
	}
	return resp, nil
}

// Pause freezes the container's processes.
func (s *service) Pause(ctx context.Context, r *taskapi.PauseRequest) (*emptypb.Empty, error) {
	return s.freeze(r.ID, true)
}

// Resume thaws them.
func (s *service) Resume(ctx context.Context, r *taskapi.ResumeRequest) (*emptypb.Empty, error) {
	return s.freeze(r.ID, false)
}

func (s *service) freeze(id string, freeze bool) (*emptypb.Empty, error) {
	sb, t, err := s.sandboxFor(id)
	if err != nil {
		return nil, err
	}
	if err := sb.Freeze(id, freeze); err != nil {
		return nil, grpcError(err)
	}
	s.mu.Lock()
	t.paused = freeze
	s.mu.Unlock()
	if freeze {
		s.events.publish(runtime.TaskPausedEventTopic, &eventstypes.TaskPaused{ContainerID: id})
	} else {
		s.events.publish(runtime.TaskResumedEventTopic, &eventstypes.TaskResumed{ContainerID: id})
	}
	return empty, nil
}

// Checkpoint is not supported: the container's state lives in a VM.
func (s *service) Checkpoint(ctx context.Context, r *taskapi.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, errdefs.ToGRPCf(errdefs.ErrNotImplemented, "checkpoint is not supported by husk")
}

// Kill signals the container's init process, an exec, or with All every
// process of the container.
func (s *service) Kill(ctx context.Context, r *taskapi.KillRequest) (*emptypb.Empty, error) {
	sb, _, err := s.sandboxFor(r.ID)
	if err != nil {
		return nil, err
	}
	if err := sb.Kill(r.ID, r.ExecID, int(r.Signal), r.All); err != nil {
		if st, _ := sb.Status(r.ID, r.ExecID); isNotRunning(err) || st.Exited {
			// What containerd's callers (the CRI's StopContainer) take for
			// a process that is already gone.
			return nil, errdefs.ToGRPCf(errdefs.ErrNotFound, "process already finished")
		}
		return nil, grpcError(err)
	}
	return empty, nil
}

// ResizePty sets a process's terminal size.
func (s *service) ResizePty(ctx context.Context, r *taskapi.ResizePtyRequest) (*emptypb.Empty, error) {
	sb, _, err := s.sandboxFor(r.ID)
	if err != nil {
		return nil, err
	}
	if err := sb.Resize(r.ID, r.ExecID, uint16(r.Height), uint16(r.Width)); err != nil {
		return nil, grpcError(err)
	}
	return empty, nil
}

// CloseIO closes a process's stdin.
func (s *service) CloseIO(ctx context.Context, r *taskapi.CloseIORequest) (*emptypb.Empty, error) {
	sb, _, err := s.sandboxFor(r.ID)
	if err != nil {
		return nil, err
	}
	if r.Stdin {
		if err := sb.CloseStdin(r.ID, r.ExecID); err != nil {
			return nil, grpcError(err)
		}
	}
	return empty, nil
}

// Update applies new resources to the container's cgroup in the guest.
func (s *service) Update(ctx context.Context, r *taskapi.UpdateTaskRequest) (*emptypb.Empty, error) {
	sb, _, err := s.sandboxFor(r.ID)
	if err != nil {
		return nil, err
	}
	if r.Resources == nil {
		return nil, errdefs.ToGRPCf(errdefs.ErrInvalidArgument, "no resources given")
	}
	// Decoded here only to refuse what is not OCI resources with a clear
	// error; the guest applies the JSON as it came.
	var resources specs.LinuxResources
	if err := json.Unmarshal(r.Resources.GetValue(), &resources); err != nil {
		return nil, errdefs.ToGRPCf(errdefs.ErrInvalidArgument, "resources: %v", err)
	}
	if err := sb.Update(r.ID, r.Resources.GetValue()); err != nil {
		return nil, grpcError(err)
	}
	return empty, nil
}

// Wait returns when the process has exited. An exec may be waited for
// before it starts (the CRI does so).
func (s *service) Wait(ctx context.Context, r *taskapi.WaitRequest) (*taskapi.WaitResponse, error) {
	sb, t, err := s.sandboxFor(r.ID)
	if err != nil {
		return nil, err
	}
	if r.ExecID != "" {
		s.mu.Lock()
		e, ok := t.execs[r.ExecID]
		s.mu.Unlock()
		if !ok {
			return nil, errdefs.ToGRPCf(errdefs.ErrNotFound, "exec %s", r.ExecID)
		}
		select {
		case <-e.running:
		case <-e.gone:
			return nil, errdefs.ToGRPCf(errdefs.ErrNotFound, "exec %s did not start", r.ExecID)
		case <-ctx.Done():
			return nil, errdefs.ToGRPC(ctx.Err())
		}
	}
	st, err := sb.Wait(ctx, r.ID, r.ExecID)
	if err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return nil, errdefs.ToGRPC(err)
		}
		return nil, grpcError(err)
	}
	return &taskapi.WaitResponse{ExitStatus: uint32(st.ExitStatus), ExitedAt: protobuf.ToTimestamp(st.ExitedAt)}, nil
}

// Stats returns the container's cgroup figures from the guest.
func (s *service) Stats(ctx context.Context, r *taskapi.StatsRequest) (*taskapi.StatsResponse, error) {
	sb, _, err := s.sandboxFor(r.ID)
	if err != nil {
		return nil, err
	}
	raw, err := sb.Stats(r.ID)
	if err != nil {
		return nil, grpcError(err)
	}
	metrics, err := metricsOf(raw)
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	any, err := typeurl.MarshalAny(metrics)
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return &taskapi.StatsResponse{Stats: protobuf.FromAny(any)}, nil
}

// Connect tells containerd the shim's and the task's pids.
func (s *service) Connect(ctx context.Context, r *taskapi.ConnectRequest) (*taskapi.ConnectResponse, error) {
	return &taskapi.ConnectResponse{ShimPid: uint32(os.Getpid()), TaskPid: s.vmPID.Load()}, nil
}

// Shutdown ends the shim once it serves no container and no Create or
// Delete is under way, at once or when the last of them ends: the shutdown
// callback powers the VM off and removes its state and the shim's socket.
func (s *service) Shutdown(ctx context.Context, r *taskapi.ShutdownRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	s.shutdownAsked = true
	s.mu.Unlock()
	s.shutdownIfAsked()
	return empty, nil
}

// shutdownIfAsked ends the shim if containerd asked for it and it is idle.
func (s *service) shutdownIfAsked() {
	s.mu.Lock()
	end := s.shutdownAsked && len(s.tasks) == 0 && len(s.creating) == 0 && s.deleting == 0
	s.mu.Unlock()
	if end {
		s.shutdown.Shutdown()
	}
}
