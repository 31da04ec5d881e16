package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/specconv"
	"github.com/opencontainers/runc/libcontainer/utils"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentapi "github.com/husk-runtime/husk/api/agent/v1"
	"github.com/husk-runtime/husk/internal/version"
)

// outputDrainWait bounds how long a process's exit waits for its output to
// reach the host once the process is gone: output that processes it left
// behind keep open does not hold its exit back.
const outputDrainWait = 2 * time.Second

// leavesProcesses says whether a container's init process can exit and
// leave its other processes: with a PID namespace of its own the kernel
// ends them with it; one that shares its PID namespace (a pod's, or the
// guest's) keeps them, and they would keep its output open and its cgroup
// busy. runc and containerd's shim kill them; so does the agent.
func leavesProcesses(lc *libcontainer.Container) bool {
	return !lc.Config().Namespaces.IsPrivate(configs.NEWPID)
}

// streamWait bounds how long a request waits for the stdio streams the host
// said it opened before the request.
const streamWait = 30 * time.Second

// Service implements the agent API.
type Service struct {
	reaper   *reaper
	streams  *streamTable
	powerOff func()

	// debugConsole: the guest was booted to serve DebugConsole.
	debugConsole bool
	// debug: the guest was booted with husk.debug; libcontainer's init
	// logs at debug level too.
	debug bool

	startedNs, readyNs int64
	kernelRelease      string

	mu         sync.Mutex
	containers map[string]*container
}

// NewService returns the agent API. powerOff is called after Shutdown replied.
func NewService(startedNs int64, powerOff func()) *Service {
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	return &Service{
		reaper:        newReaper(),
		streams:       newStreamTable(),
		powerOff:      powerOff,
		startedNs:     startedNs,
		kernelRelease: unix.ByteSliceToString(uts.Release[:]),
		containers:    map[string]*container{},
	}
}

var _ agentapi.AgentService = (*Service)(nil)

func (s *Service) Ping(context.Context, *agentapi.PingRequest) (*agentapi.PingResponse, error) {
	return &agentapi.PingResponse{
		Version: version.Version, StartedNs: s.startedNs, ReadyNs: s.readyNs, KernelRelease: s.kernelRelease,
	}, nil
}

func (s *Service) lookup(id string) (*container, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// A nil entry is an id reserved by a create still in progress.
	c, ok := s.containers[id]
	if !ok || c == nil {
		return nil, status.Errorf(codes.NotFound, "container %s does not exist", id)
	}
	return c, nil
}

// reserve takes a container id while the container is being made (its
// entry stays nil until then); release gives it back.
func (s *Service) reserve(id string) (release func(), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, exists := s.containers[id]; exists {
		return nil, status.Errorf(codes.AlreadyExists, "container %s already exists", id)
	}
	s.containers[id] = nil
	return func() {
		s.mu.Lock()
		delete(s.containers, id)
		s.mu.Unlock()
	}, nil
}

// initProcess converts a container's OCI process to libcontainer's form as
// its init: libcontainer's init reports its warnings and errors back, and
// with debug each step of its setup.
func (s *Service) initProcess(p *specs.Process) (*libcontainer.Process, error) {
	proc, err := libcontainerProcess(p)
	if err != nil {
		return nil, err
	}
	proc.Init = true
	proc.LogLevel = "4"
	if s.debug {
		proc.LogLevel = "5"
	}
	return proc, nil
}

func (s *Service) CreateContainer(ctx context.Context, req *agentapi.CreateContainerRequest) (_ *agentapi.CreateContainerResponse, retErr error) {
	id := req.GetContainerId()
	var spec specs.Spec
	if err := json.Unmarshal(req.GetSpecJson(), &spec); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "decoding the spec of %s: %v", id, err)
	}
	release, err := s.reserve(id)
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			release()
		}
	}()

	cfg, err := newContainerConfig(id, &spec)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	proc, err := s.initProcess(spec.Process)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}

	lc, err := libcontainer.Create(stateDir, id, cfg)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "creating container %s: %v", id, err)
	}
	io := stdio{
		stdin: req.GetStdin(), stdout: req.GetStdout(), stderr: req.GetStderr(), terminal: req.GetTerminal(),
		rows: uint16(req.GetRows()), cols: uint16(req.GetCols()),
	}
	p, err := s.startProcess(lc, id, "", proc, io)
	if err != nil {
		s.streams.drop(id, "")
		_ = lc.Destroy()
		return nil, status.Errorf(codes.FailedPrecondition, "%v", err)
	}
	s.mu.Lock()
	s.containers[id] = &container{id: id, spec: &spec, lc: lc, init: p, execs: map[string]*process{}}
	s.mu.Unlock()
	return &agentapi.CreateContainerResponse{Pid: int32(p.pid)}, nil
}

// startProcess starts a container's init process with its stdio joined to the
// host's streams, and watches for its exit.
func (s *Service) startProcess(lc *libcontainer.Container, id, execID string, proc *libcontainer.Process, io stdio) (*process, error) {
	key := func(kind agentapi.StreamHeader_Kind) streamKey { return streamKey{id, execID, kind} }
	var pp pipes
	defer pp.closeChildEnds()
	p := &process{done: make(chan struct{})}

	var consoleParent *os.File
	if io.terminal {
		parent, child, err := utils.NewSockPair("console")
		if err != nil {
			return nil, fmt.Errorf("console socket: %w", err)
		}
		consoleParent = parent
		defer parent.Close()
		pp.childFiles = append(pp.childFiles, child)
		proc.ConsoleSocket = child
		proc.ConsoleWidth, proc.ConsoleHeight = io.cols, io.rows
	} else {
		devNull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
		if err != nil {
			return nil, err
		}
		pp.childFiles = append(pp.childFiles, devNull)
		proc.Stdin, proc.Stdout, proc.Stderr = devNull, devNull, devNull
		if io.stdin {
			stream, err := s.streams.take(key(agentapi.StreamHeader_STDIN), streamWait)
			if err != nil {
				return nil, err
			}
			p.stdin = stream
			if proc.Stdin, err = pp.input(stream); err != nil {
				return nil, err
			}
		}
		if io.stdout {
			stream, err := s.streams.take(key(agentapi.StreamHeader_STDOUT), streamWait)
			if err != nil {
				return nil, err
			}
			if proc.Stdout, err = pp.output(stream); err != nil {
				return nil, err
			}
		}
		if io.stderr {
			stream, err := s.streams.take(key(agentapi.StreamHeader_STDERR), streamWait)
			if err != nil {
				return nil, err
			}
			if proc.Stderr, err = pp.output(stream); err != nil {
				return nil, err
			}
		}
	}

	pid, exited, err := s.reaper.spawn(func() (int, error) {
		if err := lc.Start(proc); err != nil {
			return 0, err
		}
		return proc.Pid()
	})
	if err != nil {
		return nil, err
	}
	p.pid = pid
	if consoleParent != nil {
		master, err := receiveConsole(consoleParent)
		if err != nil {
			_ = unix.Kill(pid, unix.SIGKILL)
			return nil, err
		}
		stream, err := s.streams.take(key(agentapi.StreamHeader_TERMINAL), streamWait)
		if err != nil {
			master.Close()
			_ = unix.Kill(pid, unix.SIGKILL)
			return nil, err
		}
		p.console, p.stdin = master, stream
		pp.terminal(master, stream)
	}
	// Read before the container is known to callers: an update replaces
	// its config.
	killRest := execID == "" && leavesProcesses(lc)
	go func() {
		p.status = <-exited
		if killRest {
			_ = lc.Signal(unix.SIGKILL)
		}
		if p.stdin != nil {
			p.stdin.Close()
		}
		pp.drain(outputDrainWait)
		if p.console != nil {
			p.console.Close()
		}
		close(p.done)
	}()
	return p, nil
}

func (s *Service) StartContainer(ctx context.Context, req *agentapi.ContainerRequest) (*agentapi.Empty, error) {
	c, err := s.lookup(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	if err := c.lc.Exec(); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "starting container %s: %v", c.id, err)
	}
	return &agentapi.Empty{}, nil
}

func (s *Service) process(containerID, execID string) (*container, *process, error) {
	c, err := s.lookup(containerID)
	if err != nil {
		return nil, nil, err
	}
	if execID == "" {
		return c, c.init, nil
	}
	s.mu.Lock()
	p, ok := c.execs[execID]
	s.mu.Unlock()
	if !ok || p == nil {
		return nil, nil, status.Errorf(codes.NotFound, "process %s of container %s does not exist", execID, containerID)
	}
	return c, p, nil
}

func (s *Service) ExecProcess(ctx context.Context, req *agentapi.ExecProcessRequest) (*agentapi.ExecProcessResponse, error) {
	c, err := s.lookup(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	execID := req.GetExecId()
	if execID == "" {
		return nil, status.Error(codes.InvalidArgument, "exec id must be set")
	}
	select {
	case <-c.init.done:
		return nil, status.Errorf(codes.FailedPrecondition, "container %s is not running", c.id)
	default:
	}
	var spec specs.Process
	if err := json.Unmarshal(req.GetProcessJson(), &spec); err != nil {
		s.streams.drop(c.id, execID)
		return nil, status.Errorf(codes.InvalidArgument, "decoding the process: %v", err)
	}
	proc, err := libcontainerProcess(&spec)
	if err != nil {
		s.streams.drop(c.id, execID)
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	s.mu.Lock()
	if _, exists := c.execs[execID]; exists {
		s.mu.Unlock()
		return nil, status.Errorf(codes.AlreadyExists, "process %s already exists in container %s", execID, c.id)
	}
	c.execs[execID] = nil
	s.mu.Unlock()
	io := stdio{
		stdin: req.GetStdin(), stdout: req.GetStdout(), stderr: req.GetStderr(), terminal: req.GetTerminal(),
		rows: uint16(req.GetRows()), cols: uint16(req.GetCols()),
	}
	p, err := s.startProcess(c.lc, c.id, execID, proc, io)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		delete(c.execs, execID)
		s.streams.drop(c.id, execID)
		return nil, status.Errorf(codes.FailedPrecondition, "%v", err)
	}
	c.execs[execID] = p
	return &agentapi.ExecProcessResponse{Pid: int32(p.pid)}, nil
}

func (s *Service) ListProcesses(ctx context.Context, req *agentapi.ContainerRequest) (*agentapi.ListProcessesResponse, error) {
	c, err := s.lookup(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	pids, err := c.lc.Processes()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "listing processes of %s: %v", c.id, err)
	}
	resp := &agentapi.ListProcessesResponse{}
	for _, pid := range pids {
		resp.Pids = append(resp.Pids, int32(pid))
	}
	return resp, nil
}

func (s *Service) PauseContainer(ctx context.Context, req *agentapi.ContainerRequest) (*agentapi.Empty, error) {
	c, err := s.lookup(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	if err := c.lc.Pause(); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "pausing %s: %v", c.id, err)
	}
	return &agentapi.Empty{}, nil
}

func (s *Service) ResumeContainer(ctx context.Context, req *agentapi.ContainerRequest) (*agentapi.Empty, error) {
	c, err := s.lookup(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	if err := c.lc.Resume(); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "resuming %s: %v", c.id, err)
	}
	return &agentapi.Empty{}, nil
}

func (s *Service) UpdateContainer(ctx context.Context, req *agentapi.UpdateContainerRequest) (*agentapi.Empty, error) {
	c, err := s.lookup(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	var update specs.LinuxResources
	if err := json.Unmarshal(req.GetResourcesJson(), &update); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "decoding resources: %v", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	merged := mergeResources(c.spec.Linux.Resources, &update)
	spec := *c.spec
	linux := *spec.Linux
	linux.Resources = merged
	spec.Linux = &linux
	cg, err := specconv.CreateCgroupConfig(&specconv.CreateOpts{CgroupName: c.id, Spec: &spec}, nil)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "converting resources: %v", err)
	}
	cfg := c.lc.Config()
	// Device rules are set at creation; an update changes limits only.
	cg.Resources.Devices = cfg.Cgroups.Resources.Devices
	cfg.Cgroups.Resources = cg.Resources
	if err := c.lc.Set(cfg); err != nil {
		return nil, status.Errorf(codes.Internal, "updating %s: %v", c.id, err)
	}
	c.spec = &spec
	return &agentapi.Empty{}, nil
}

func (s *Service) StatsContainer(ctx context.Context, req *agentapi.ContainerRequest) (*agentapi.StatsContainerResponse, error) {
	c, err := s.lookup(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	st, err := c.lc.Stats()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "stats of %s: %v", c.id, err)
	}
	data, err := json.Marshal(st.CgroupStats)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "encoding stats: %v", err)
	}
	return &agentapi.StatsContainerResponse{StatsJson: data}, nil
}

func (s *Service) WaitProcess(ctx context.Context, req *agentapi.ProcessRequest) (*agentapi.WaitProcessResponse, error) {
	c, p, err := s.process(req.GetContainerId(), req.GetExecId())
	if err != nil {
		return nil, err
	}
	select {
	case <-p.done:
		resp := &agentapi.WaitProcessResponse{ExitStatus: int32(p.status)}
		if req.GetExecId() == "" {
			resp.OomKills = c.oomKills()
		}
		return resp, nil
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

func (s *Service) SignalProcess(ctx context.Context, req *agentapi.SignalProcessRequest) (*agentapi.Empty, error) {
	c, p, err := s.process(req.GetContainerId(), req.GetExecId())
	if err != nil {
		return nil, err
	}
	sig := unix.Signal(req.GetSignal())
	if sig <= 0 || sig > 64 {
		return nil, status.Errorf(codes.InvalidArgument, "signal %d is not valid", sig)
	}
	select {
	case <-p.done:
		return nil, status.Errorf(codes.FailedPrecondition, "container not running")
	default:
	}
	if req.GetAll() {
		pids, err := c.lc.Processes()
		if err != nil {
			return nil, status.Errorf(codes.Internal, "listing processes of %s: %v", c.id, err)
		}
		for _, pid := range pids {
			_ = unix.Kill(pid, sig)
		}
		return &agentapi.Empty{}, nil
	}
	if req.GetExecId() == "" {
		// libcontainer signals the init process, checked against pid
		// reuse; SIGKILL to a container that shares its PID namespace
		// reaches every process in it, as runc kill does.
		err = c.lc.Signal(sig)
	} else {
		err = unix.Kill(p.pid, sig)
	}
	if errors.Is(err, libcontainer.ErrNotRunning) || errors.Is(err, os.ErrProcessDone) || errors.Is(err, unix.ESRCH) {
		return nil, status.Errorf(codes.FailedPrecondition, "container not running")
	}
	if err != nil {
		return nil, status.Errorf(codes.Internal, "signalling %s: %v", c.id, err)
	}
	return &agentapi.Empty{}, nil
}

func (s *Service) ResizeTerminal(ctx context.Context, req *agentapi.ResizeTerminalRequest) (*agentapi.Empty, error) {
	_, p, err := s.process(req.GetContainerId(), req.GetExecId())
	if err != nil {
		return nil, err
	}
	if p.console == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "process has no terminal")
	}
	ws := &unix.Winsize{Row: uint16(req.GetRows()), Col: uint16(req.GetCols())}
	if err := unix.IoctlSetWinsize(int(p.console.Fd()), unix.TIOCSWINSZ, ws); err != nil {
		return nil, status.Errorf(codes.Internal, "resizing terminal: %v", err)
	}
	return &agentapi.Empty{}, nil
}

func (s *Service) RemoveContainer(ctx context.Context, req *agentapi.RemoveContainerRequest) (*agentapi.Empty, error) {
	c, err := s.lookup(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	select {
	case <-c.init.done:
	default:
		if !req.GetForce() {
			return nil, status.Errorf(codes.FailedPrecondition, "cannot delete container %s that is not stopped", c.id)
		}
		_ = c.lc.Signal(unix.SIGKILL)
		select {
		case <-c.init.done:
		case <-time.After(10 * time.Second):
			return nil, status.Errorf(codes.DeadlineExceeded, "container %s did not die after SIGKILL", c.id)
		}
	}
	if err := c.lc.Destroy(); err != nil && !errors.Is(err, libcontainer.ErrNotExist) {
		return nil, status.Errorf(codes.Internal, "destroying container %s: %v", c.id, err)
	}
	s.mu.Lock()
	delete(s.containers, c.id)
	s.mu.Unlock()
	return &agentapi.Empty{}, nil
}

// shutdownKillWait bounds how long Shutdown waits for the containers it
// killed before syncing.
const shutdownKillWait = 200 * time.Millisecond

func (s *Service) Shutdown(ctx context.Context, _ *agentapi.Empty) (*agentapi.Empty, error) {
	s.mu.Lock()
	var killed []*process
	for _, c := range s.containers {
		if c != nil {
			_ = c.lc.Signal(unix.SIGKILL)
			killed = append(killed, c.init)
		}
	}
	s.mu.Unlock()
	// What the containers wrote through mappings of shared files reaches
	// the host before the reply: the host may end QEMU as soon as it has
	// it, without waiting for the guest's own power-off. The sync comes
	// once the killed processes are gone (or after a bounded wait), so
	// that nothing they still write is left behind it.
	timeout := time.NewTimer(shutdownKillWait)
	defer timeout.Stop()
wait:
	for _, p := range killed {
		select {
		case <-p.done:
		case <-timeout.C:
			break wait
		}
	}
	unix.Sync()
	// Power off after the reply has had time to leave, for a host that
	// waits for it.
	time.AfterFunc(20*time.Millisecond, s.powerOff)
	return &agentapi.Empty{}, nil
}
