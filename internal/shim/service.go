package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/events"
	"github.com/containerd/containerd/mount"
	"github.com/containerd/containerd/pkg/shutdown"
	"github.com/containerd/containerd/protobuf"
	"github.com/containerd/containerd/runtime"
	"github.com/containerd/containerd/runtime/v2/shim"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/husk-runtime/husk/internal/config"
	"github.com/husk-runtime/husk/internal/oci"
	"github.com/husk-runtime/husk/internal/sandbox"
)

// StateRoot holds one directory per sandbox a shim serves: the VM's
// sockets, console log and shared directory.
const StateRoot = "/run/husk/containerd"

var empty = &emptypb.Empty{}

// service is the Task API of one sandbox.
type service struct {
	ctx       context.Context // carries containerd's namespace
	namespace string
	publisher shim.Publisher
	shutdown  shutdown.Service
	log       *slog.Logger
	// address is the file in which `start` wrote the shim's socket address.
	addressFile string

	eventsMu     sync.Mutex
	events       chan publishedEvent
	eventsClosed bool

	// lifecycle orders a process's exit event after its start event.
	lifecycle sync.Mutex

	mu        sync.Mutex
	sb        *sandbox.Sandbox
	sandboxID string
	dir       string
	tasks     map[string]*taskRecord
}

type publishedEvent struct {
	topic string
	event events.Event
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
	io      ioPaths
	process json.RawMessage
	started bool
	// running is closed once the exec has started: a Wait may come first.
	running chan struct{}
}

func newService(ctx context.Context, namespace string, publisher shim.Publisher, sd shutdown.Service, log *slog.Logger) *service {
	cwd, _ := os.Getwd()
	s := &service{
		ctx: ctx, namespace: namespace, publisher: publisher, shutdown: sd, log: log,
		addressFile: filepath.Join(cwd, "address"),
		events:      make(chan publishedEvent, 128),
		tasks:       map[string]*taskRecord{},
	}
	go s.forward()
	// The shim's main waits for the publisher to close: the last events
	// are out by then.
	sd.RegisterCallback(func(context.Context) error {
		s.eventsMu.Lock()
		defer s.eventsMu.Unlock()
		s.eventsClosed = true
		close(s.events)
		return nil
	})
	return s
}

// RegisterTTRPC makes the service the shim's Task API.
func (s *service) RegisterTTRPC(server *ttrpc.Server) error {
	taskapi.RegisterTaskService(server, s)
	return nil
}

// forward publishes events to containerd in order, until shutdown.
func (s *service) forward() {
	defer s.publisher.Close()
	for e := range s.events {
		ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
		if err := s.publisher.Publish(ctx, e.topic, e.event); err != nil {
			s.log.Warn("publishing an event", "topic", e.topic, "err", err)
		}
		cancel()
	}
}

func (s *service) publish(topic string, event events.Event) {
	s.eventsMu.Lock()
	defer s.eventsMu.Unlock()
	if s.eventsClosed {
		s.log.Warn("event after shutdown dropped", "topic", topic)
		return
	}
	s.events <- publishedEvent{topic, event}
}

// task looks up a container; s.mu must be held.
func (s *service) task(id string) (*taskRecord, error) {
	t, ok := s.tasks[id]
	if !ok {
		return nil, errdefs.ToGRPCf(errdefs.ErrNotFound, "container %s", id)
	}
	return t, nil
}

// vmPID is the host process that runs every task of the sandbox: it is what
// the shim reports as a task's pid. The container's own PIDs live in the
// guest (Pids lists them).
func (s *service) vmPID() uint32 {
	if s.sb == nil {
		return 0
	}
	return uint32(s.sb.VMPID())
}

func readSpec(bundle string) (*specs.Spec, error) {
	data, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, fmt.Errorf("bundle %s: config.json: %w", bundle, err)
	}
	return &spec, nil
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
	defer s.mu.Unlock()
	if _, exists := s.tasks[r.ID]; exists {
		return nil, errdefs.ToGRPCf(errdefs.ErrAlreadyExists, "container %s", r.ID)
	}
	spec, err := readSpec(r.Bundle)
	if err != nil {
		return nil, errdefs.ToGRPCf(errdefs.ErrInvalidArgument, "%v", err)
	}
	role := roleOf(r.ID, spec.Annotations)
	t := &taskRecord{id: r.ID, bundle: r.Bundle, netns: networkNamespacePath(spec), execs: map[string]*execRecord{},
		io: ioPaths{stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal}}

	var join map[specs.LinuxNamespaceType]string
	if role.inPod {
		sandboxTask, ok := s.tasks[role.sandboxID]
		if s.sb == nil || s.sandboxID != role.sandboxID || !ok {
			return nil, errdefs.ToGRPCf(errdefs.ErrFailedPrecondition, "the pod's sandbox %s is not running in this shim", role.sandboxID)
		}
		join = podNamespaces(spec, role.sandboxID, int(s.vmPID()), sandboxTask.netns)
	}
	bundle, err := s.mountRootfs(r, spec, t)
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			unmountRootfs(t)
		}
	}()
	if s.sb == nil {
		if err := s.boot(role.sandboxID); err != nil {
			return nil, errdefs.ToGRPC(err)
		}
		defer func() {
			if retErr != nil && len(s.tasks) == 0 {
				s.stopSandbox()
			}
		}()
	}
	stdio, err := openStdio(ctx, t.io, r.ID, s.namespace)
	if err != nil {
		return nil, errdefs.ToGRPCf(errdefs.ErrInvalidArgument, "%v", err)
	}
	if _, err := s.sb.Create(r.ID, bundle, stdio, join); err != nil {
		closeStdio(stdio)
		return nil, grpcError(err)
	}
	s.tasks[r.ID] = t
	pid := s.vmPID()
	s.publish(runtime.TaskCreateEventTopic, &eventstypes.TaskCreate{
		ContainerID: r.ID, Bundle: r.Bundle, Rootfs: r.Rootfs, Pid: pid,
		IO: &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
	})
	return &taskapi.CreateTaskResponse{Pid: pid}, nil
}

// mountRootfs mounts the rootfs containerd passes (a snapshot's mounts) at
// the bundle's rootfs, in the shim's own mount namespace, and returns the
// bundle to create from.
func (s *service) mountRootfs(r *taskapi.CreateTaskRequest, spec *specs.Spec, t *taskRecord) (*oci.Bundle, error) {
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

func unmountRootfs(t *taskRecord) {
	if t.rootfs != "" {
		_ = mount.UnmountAll(t.rootfs, 0)
		t.rootfs = ""
	}
}

// boot starts the sandbox's VM. s.mu must be held.
func (s *service) boot(sandboxID string) error {
	path, explicit := config.Path("")
	cfg, err := config.Load(path, explicit)
	if err != nil {
		return err
	}
	dir := filepath.Join(StateRoot, s.namespace, sandboxID)
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return fmt.Errorf("creating the sandbox's state directory: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, shimPIDFile), []byte(fmt.Sprint(os.Getpid())), 0o644); err != nil {
		os.RemoveAll(dir)
		return fmt.Errorf("recording the shim's pid: %w", err)
	}
	sb, err := sandbox.Boot(sandbox.Options{ID: sandboxID, Dir: dir, Config: cfg,
		Log: s.log.With("sandbox", sandboxID), OnExit: s.exited})
	if err != nil {
		os.RemoveAll(dir)
		return err
	}
	s.sb, s.sandboxID, s.dir = sb, sandboxID, dir
	return nil
}

// stopSandbox powers the VM off and removes its state. s.mu must be held.
func (s *service) stopSandbox() {
	if s.sb == nil {
		return
	}
	s.sb.Stop()
	if err := os.RemoveAll(s.dir); err != nil {
		s.log.Error("removing the sandbox's state", "err", err)
	}
	s.sb = nil
}

// exited publishes a process's exit. The sandbox calls it with its own lock
// held, so the work happens elsewhere; it waits for a concurrent Start to
// have published the start event first.
func (s *service) exited(e sandbox.ExitEvent) {
	go func() {
		s.lifecycle.Lock()
		defer s.lifecycle.Unlock()
		id := e.Exec
		if id == "" {
			id = e.Container
		}
		s.mu.Lock()
		pid := s.vmPID()
		s.mu.Unlock()
		if e.OOMKilled {
			s.publish(runtime.TaskOOMEventTopic, &eventstypes.TaskOOM{ContainerID: e.Container})
		}
		s.publish(runtime.TaskExitEventTopic, &eventstypes.TaskExit{
			ContainerID: e.Container, ID: id, Pid: pid,
			ExitStatus: uint32(e.Status), ExitedAt: protobuf.ToTimestamp(e.At),
		})
	}()
}

// Start starts a created container's process or an exec added to it.
func (s *service) Start(ctx context.Context, r *taskapi.StartRequest) (*taskapi.StartResponse, error) {
	s.lifecycle.Lock()
	defer s.lifecycle.Unlock()
	s.mu.Lock()
	t, err := s.task(r.ID)
	sb := s.sb
	pid := s.vmPID()
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if r.ExecID == "" {
		if _, err := sb.Start(r.ID); err != nil {
			return nil, grpcError(err)
		}
		s.mu.Lock()
		t.started = true
		s.mu.Unlock()
		s.publish(runtime.TaskStartEventTopic, &eventstypes.TaskStart{ContainerID: r.ID, Pid: pid})
		return &taskapi.StartResponse{Pid: pid}, nil
	}
	s.mu.Lock()
	e, ok := t.execs[r.ExecID]
	if ok && e.started {
		s.mu.Unlock()
		return nil, errdefs.ToGRPCf(errdefs.ErrFailedPrecondition, "exec %s has already started", r.ExecID)
	}
	s.mu.Unlock()
	if !ok {
		return nil, errdefs.ToGRPCf(errdefs.ErrNotFound, "exec %s", r.ExecID)
	}
	stdio, err := openStdio(ctx, e.io, r.ID, s.namespace)
	if err != nil {
		return nil, errdefs.ToGRPCf(errdefs.ErrInvalidArgument, "%v", err)
	}
	if _, err := sb.Exec(r.ID, r.ExecID, e.process, stdio); err != nil {
		closeStdio(stdio)
		return nil, grpcError(err)
	}
	s.mu.Lock()
	e.started = true
	close(e.running)
	s.mu.Unlock()
	s.publish(runtime.TaskExecStartedEventTopic, &eventstypes.TaskExecStarted{ContainerID: r.ID, ExecID: r.ExecID, Pid: pid})
	return &taskapi.StartResponse{Pid: pid}, nil
}

func closeStdio(stdio sandbox.Stdio) {
	if stdio.Stdin != nil {
		stdio.Stdin.Close()
	}
	if stdio.Stdout != nil {
		stdio.Stdout.Close()
	}
	if stdio.Stderr != nil {
		stdio.Stderr.Close()
	}
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
	s.mu.Lock()
	defer s.mu.Unlock()
	t, err := s.task(r.ID)
	if err != nil {
		return nil, err
	}
	if _, exists := t.execs[r.ExecID]; exists {
		return nil, errdefs.ToGRPCf(errdefs.ErrAlreadyExists, "exec %s", r.ExecID)
	}
	if st, err := s.sb.Status(r.ID, ""); err != nil || st.Exited || !t.started {
		return nil, errdefs.ToGRPCf(errdefs.ErrFailedPrecondition, "container %s is not running", r.ID)
	}
	t.execs[r.ExecID] = &execRecord{process: r.Spec.GetValue(), running: make(chan struct{}),
		io: ioPaths{stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal}}
	s.publish(runtime.TaskExecAddedEventTopic, &eventstypes.TaskExecAdded{ContainerID: r.ID, ExecID: r.ExecID})
	return empty, nil
}

// State reports on a container's process or an exec.
func (s *service) State(ctx context.Context, r *taskapi.StateRequest) (*taskapi.StateResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, err := s.task(r.ID)
	if err != nil {
		return nil, err
	}
	resp := &taskapi.StateResponse{ID: r.ID, Bundle: t.bundle, Pid: s.vmPID()}
	paths, started := t.io, t.started
	if r.ExecID != "" {
		e, ok := t.execs[r.ExecID]
		if !ok {
			return nil, errdefs.ToGRPCf(errdefs.ErrNotFound, "exec %s", r.ExecID)
		}
		resp.ID = r.ExecID
		paths, started = e.io, e.started
	}
	resp.Stdin, resp.Stdout, resp.Stderr, resp.Terminal = paths.stdin, paths.stdout, paths.stderr, paths.terminal
	resp.Status = task.Status_CREATED
	if !started {
		return resp, nil
	}
	st, err := s.sb.Status(r.ID, r.ExecID)
	if err != nil {
		return nil, grpcError(err)
	}
	switch {
	case st.Exited:
		resp.Status = task.Status_STOPPED
		resp.ExitStatus = uint32(st.ExitStatus)
		resp.ExitedAt = protobuf.ToTimestamp(st.ExitedAt)
	case t.paused && r.ExecID == "":
		resp.Status = task.Status_PAUSED
	default:
		resp.Status = task.Status_RUNNING
	}
	return resp, nil
}

// Delete removes an exited (or never started) container, or an exec.
func (s *service) Delete(ctx context.Context, r *taskapi.DeleteRequest) (*taskapi.DeleteResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, err := s.task(r.ID)
	if err != nil {
		return nil, err
	}
	if r.ExecID != "" {
		e, ok := t.execs[r.ExecID]
		if !ok {
			return nil, errdefs.ToGRPCf(errdefs.ErrNotFound, "exec %s", r.ExecID)
		}
		resp := &taskapi.DeleteResponse{Pid: s.vmPID()}
		if e.started {
			st, err := s.sb.Status(r.ID, r.ExecID)
			if err != nil {
				return nil, grpcError(err)
			}
			if err := s.sb.RemoveExec(r.ID, r.ExecID); err != nil {
				return nil, grpcError(err)
			}
			resp.ExitStatus, resp.ExitedAt = uint32(st.ExitStatus), protobuf.ToTimestamp(st.ExitedAt)
		}
		delete(t.execs, r.ExecID)
		return resp, nil
	}
	st, err := s.sb.Status(r.ID, "")
	if err != nil {
		return nil, grpcError(err)
	}
	if t.started && !st.Exited {
		return nil, errdefs.ToGRPCf(errdefs.ErrFailedPrecondition, "cannot delete container %s: it is running", r.ID)
	}
	if err := s.sb.Remove(r.ID, true); err != nil {
		return nil, grpcError(err)
	}
	unmountRootfs(t)
	delete(s.tasks, r.ID)
	if !st.Exited {
		// Never started: it ends here, killed.
		st.ExitStatus, st.ExitedAt = 128+9, time.Now()
	}
	pid := s.vmPID()
	s.publish(runtime.TaskDeleteEventTopic, &eventstypes.TaskDelete{ContainerID: r.ID, Pid: pid,
		ExitStatus: uint32(st.ExitStatus), ExitedAt: protobuf.ToTimestamp(st.ExitedAt)})
	return &taskapi.DeleteResponse{Pid: pid, ExitStatus: uint32(st.ExitStatus), ExitedAt: protobuf.ToTimestamp(st.ExitedAt)}, nil
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
		s.publish(runtime.TaskPausedEventTopic, &eventstypes.TaskPaused{ContainerID: id})
	} else {
		s.publish(runtime.TaskResumedEventTopic, &eventstypes.TaskResumed{ContainerID: id})
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
		var st sandbox.ProcessStatus
		if st, _ = sb.Status(r.ID, r.ExecID); st.Exited {
			// What containerd's callers expect of a process that is gone.
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
	s.mu.Lock()
	defer s.mu.Unlock()
	return &taskapi.ConnectResponse{ShimPid: uint32(os.Getpid()), TaskPid: s.vmPID()}, nil
}

// Shutdown ends the shim once it serves no container: the VM is powered
// off, its state and the shim's socket removed.
func (s *service) Shutdown(ctx context.Context, r *taskapi.ShutdownRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.tasks) > 0 {
		return empty, nil
	}
	s.stopSandbox()
	removeSocket(s.addressFile)
	s.shutdown.Shutdown()
	return empty, nil
}
