package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/husk-runtime/husk/internal/control"
	"github.com/husk-runtime/husk/internal/oci"
	"github.com/husk-runtime/husk/internal/state"
)

// liveContainer loads a container whose daemon still answers.
func liveContainer(g *globals, id string) (*state.State, error) {
	st, err := loadContainer(g, id)
	if err != nil {
		return nil, err
	}
	if st.Status == state.Stopped || st.Status == state.Creating {
		return nil, fmt.Errorf("container %s is not running", id)
	}
	return st, nil
}

func newStartCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "start ID",
		Short: "start a created container",
		Args:  oneID,
		RunE: func(cmd *cobra.Command, args []string) error {
			return startContainer(g, args[0])
		},
	}
}

func startContainer(g *globals, id string) error {
	st, err := loadContainer(g, id)
	if err != nil {
		return err
	}
	switch st.Status {
	case state.Created:
	case state.Stopped:
		return errors.New("cannot start a container that has stopped")
	case state.Running, state.Paused:
		return errors.New("cannot start an already running container")
	default:
		return fmt.Errorf("cannot start a container in the %s state", st.Status)
	}
	if _, err = call(g, id, &control.Request{Op: control.OpStart}, nil, callTimeout); err != nil {
		return err
	}
	runHooksWarning(st, oci.Poststart, specs.StateRunning)
	return nil
}

// parseSignal takes what runc kill takes: a number, or a name with or
// without SIG.
func parseSignal(s string) (unix.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 || n > 64 {
			return 0, fmt.Errorf("invalid signal %q", s)
		}
		return unix.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	sig := unix.SignalNum(name)
	if sig == 0 {
		return 0, fmt.Errorf("unknown signal %q", s)
	}
	return sig, nil
}

func newKillCommand(g *globals) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "kill [--all] ID [SIGNAL]",
		Short: "send a signal (default SIGTERM) to a container's process",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			sig := unix.SIGTERM
			if len(args) == 2 {
				var err error
				if sig, err = parseSignal(args[1]); err != nil {
					return err
				}
			}
			st, err := loadContainer(g, args[0])
			if err != nil {
				return err
			}
			// As runc, --all on a container with nothing left to signal
			// is not an error.
			if st.Status == state.Stopped || st.Status == state.Creating {
				if all {
					return nil
				}
				return errors.New("container not running")
			}
			_, err = call(g, args[0], &control.Request{Op: control.OpKill, Signal: int(sig), All: all}, nil, callTimeout)
			if control.IsCode(err, control.CodeNotRunning) {
				if all {
					return nil
				}
				return errors.New("container not running")
			}
			return err
		},
	}
	cmd.Flags().BoolVarP(&all, "all", "a", false, "send the signal to all processes of the container")
	return cmd
}

func newPauseCommand(g *globals, pause bool) *cobra.Command {
	use, short, op := "pause ID", "freeze every process of a container", control.OpPause
	if !pause {
		use, short, op = "resume ID", "thaw a paused container", control.OpResume
	}
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  oneID,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := liveContainer(g, args[0])
			if err != nil {
				return err
			}
			if pause && st.Status != state.Running {
				return fmt.Errorf("container %s is not running", args[0])
			}
			if !pause && st.Status != state.Paused {
				return fmt.Errorf("container %s is not paused", args[0])
			}
			_, err = call(g, args[0], &control.Request{Op: op}, nil, callTimeout)
			return err
		},
	}
}

func newPsCommand(g *globals) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "ps [--format table|json] ID",
		Short: "list a container's processes: PIDs inside the guest (table), or the host's process standing for it (json)",
		Args:  oneID,
		RunE: func(cmd *cobra.Command, args []string) error {
			if format != "table" && format != "json" {
				return fmt.Errorf("invalid format %q: want table or json", format)
			}
			st, err := liveContainer(g, args[0])
			if err != nil {
				return err
			}
			if format == "json" {
				// Callers of the json format (containerd's runc shim, for
				// docker top) match the PIDs against the host's processes:
				// the guest's would name unrelated host processes. The
				// host's process for the container is its stand-in.
				pids := []int{}
				if st.StandIn.Alive() {
					pids = append(pids, st.StandIn.PID)
				}
				return json.NewEncoder(os.Stdout).Encode(pids)
			}
			reply, err := call(g, args[0], &control.Request{Op: control.OpPs}, nil, callTimeout)
			if err != nil {
				return err
			}
			fmt.Println("PID")
			for _, pid := range reply.PIDs {
				fmt.Println(pid)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&format, "format", "f", "table", "table or json")
	return cmd
}

// execFlags are runc exec's flags.
type execFlags struct {
	processFile   string
	detach        bool
	pidFile       string
	consoleSocket string
	tty           bool
	env           []string
	cwd           string
	user          string
	additionalGID []string
	caps          []string
	noNewPrivs    bool
}

func newExecCommand(g *globals) *cobra.Command {
	var f execFlags
	cmd := &cobra.Command{
		Use:   "exec [flags] ID [COMMAND [ARG...]]",
		Short: "run a new process inside a running container",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return execProcess(g, args[0], args[1:], &f)
		},
	}
	fl := cmd.Flags()
	fl.SetInterspersed(false)
	fl.StringVarP(&f.processFile, "process", "p", "", "path to a process.json (the OCI process)")
	fl.BoolVarP(&f.detach, "detach", "d", false, "detach from the process")
	fl.StringVar(&f.pidFile, "pid-file", "", "file to write the process's stand-in PID to")
	fl.StringVar(&f.consoleSocket, "console-socket", "", "unix socket to send the terminal's master to")
	fl.BoolVarP(&f.tty, "tty", "t", false, "allocate a terminal")
	fl.StringArrayVarP(&f.env, "env", "e", nil, "set an environment variable")
	fl.StringVar(&f.cwd, "cwd", "", "working directory in the container")
	fl.StringVarP(&f.user, "user", "u", "", "UID[:GID] to run as")
	fl.StringArrayVarP(&f.additionalGID, "additional-gids", "g", nil, "additional group id")
	fl.StringArrayVarP(&f.caps, "cap", "c", nil, "add a capability to the bounding set")
	fl.BoolVar(&f.noNewPrivs, "no-new-privs", false, "set no-new-privileges")
	return cmd
}

// execSpec builds the process to exec: --process's file, or the container's
// own process with the command and flags applied, as runc does.
func execSpec(st *state.State, args []string, f *execFlags) (*specs.Process, error) {
	if f.processFile != "" {
		data, err := os.ReadFile(f.processFile)
		if err != nil {
			return nil, fmt.Errorf("reading --process: %w", err)
		}
		var p specs.Process
		if err := json.Unmarshal(data, &p); err != nil {
			return nil, fmt.Errorf("--process %s: %w", f.processFile, err)
		}
		if len(p.Args) == 0 {
			return nil, errors.New("process args must not be empty")
		}
		return &p, nil
	}
	if len(args) == 0 {
		return nil, errors.New("exec: no command given (and no --process)")
	}
	data, err := os.ReadFile(st.Bundle + "/config.json")
	if err != nil {
		return nil, fmt.Errorf("reading the container's config: %w", err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil || spec.Process == nil {
		return nil, fmt.Errorf("the container's config.json is unreadable: %v", err)
	}
	p := *spec.Process
	p.Args = args
	p.Terminal = f.tty
	p.Env = append(append([]string{}, p.Env...), f.env...)
	if f.cwd != "" {
		p.Cwd = f.cwd
	}
	if f.user != "" {
		uid, gid, _ := strings.Cut(f.user, ":")
		n, err := strconv.ParseUint(uid, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("--user %q: want UID[:GID]", f.user)
		}
		p.User.UID = uint32(n)
		if gid != "" {
			n, err := strconv.ParseUint(gid, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("--user %q: want UID[:GID]", f.user)
			}
			p.User.GID = uint32(n)
		}
	}
	for _, g := range f.additionalGID {
		n, err := strconv.ParseUint(g, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("--additional-gids %q: not a number", g)
		}
		p.User.AdditionalGids = append(p.User.AdditionalGids, uint32(n))
	}
	if len(f.caps) > 0 && p.Capabilities != nil {
		caps := *p.Capabilities
		caps.Bounding = append(append([]string{}, caps.Bounding...), f.caps...)
		caps.Effective = append(append([]string{}, caps.Effective...), f.caps...)
		caps.Permitted = append(append([]string{}, caps.Permitted...), f.caps...)
		p.Capabilities = &caps
	}
	if f.noNewPrivs {
		p.NoNewPrivileges = true
	}
	return &p, nil
}

func execProcess(g *globals, id string, args []string, f *execFlags) error {
	st, err := loadContainer(g, id)
	if err != nil {
		return err
	}
	if st.Status != state.Running {
		return fmt.Errorf("cannot exec in a container that is not running: %s", st.Status)
	}
	proc, err := execSpec(st, args, f)
	if err != nil {
		return err
	}
	data, err := json.Marshal(proc)
	if err != nil {
		return err
	}
	execID := newExecID()
	if f.detach {
		if proc.Terminal && f.consoleSocket == "" {
			return errors.New("cannot allocate tty if husk will detach without setting console socket")
		}
		file, err := os.CreateTemp(g.store().Dir(id), ".exec-*.json")
		if err != nil {
			return err
		}
		_, werr := file.Write(data)
		file.Close()
		if werr != nil {
			os.Remove(file.Name())
			return werr
		}
		pid, err := startStandIn(g, id, standInOptions{execID: execID, processFile: file.Name(), terminal: proc.Terminal}, f.consoleSocket)
		if err != nil {
			os.Remove(file.Name())
			return err
		}
		return writePIDFile(f.pidFile, pid)
	}
	// Attached: this process stands in for the exec'd one.
	req := &control.Request{Op: control.OpExec, ExecID: execID, Process: data}
	files, err := stdioRequest(req, proc.Terminal)
	if err != nil {
		return err
	}
	if proc.Terminal {
		defer makeRaw()()
	}
	_, err = call(g, id, req, files, callTimeout)
	files[0].Close()
	if err != nil {
		return execFailed(err)
	}
	stop := forwardSignals(g, id, execID, proc.Terminal)
	defer stop()
	if err := writePIDFile(f.pidFile, os.Getpid()); err != nil {
		return err
	}
	reply, err := call(g, id, &control.Request{Op: control.OpWait, ExecID: execID, StandIn: true}, nil, 0)
	if err != nil {
		return execFailed(err)
	}
	return &ExitError{Status: reply.ExitStatus}
}

// execFailed reports an exec that could not run as runc does: the error,
// then exit status 255, which callers tell apart from the process's own.
func execFailed(err error) error {
	fmt.Fprintf(os.Stderr, "husk: exec failed: %v\n", err)
	return &ExitError{Status: 255}
}

// updateFlags are runc update's resource flags.
type updateFlags struct {
	resources                     string
	memory, memorySwap, memoryRes int64
	cpuShares                     uint64
	cpuQuota                      int64
	cpuPeriod                     uint64
	cpusetCpus, cpusetMems        string
	pidsLimit                     int64
	blkioWeight                   uint16
}

func newUpdateCommand(g *globals) *cobra.Command {
	var f updateFlags
	cmd := &cobra.Command{
		Use:   "update [flags] ID",
		Short: "update a container's resource limits",
		Args:  oneID,
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := liveContainer(g, args[0]); err != nil {
				return err
			}
			var r specs.LinuxResources
			if f.resources != "" {
				var in io.Reader = os.Stdin
				if f.resources != "-" {
					file, err := os.Open(f.resources)
					if err != nil {
						return err
					}
					defer file.Close()
					in = file
				}
				if err := json.NewDecoder(in).Decode(&r); err != nil {
					return fmt.Errorf("decoding resources: %w", err)
				}
			}
			changed := cmd.Flags().Changed
			if changed("memory") || changed("memory-swap") || changed("memory-reservation") {
				if r.Memory == nil {
					r.Memory = &specs.LinuxMemory{}
				}
				if changed("memory") {
					r.Memory.Limit = &f.memory
				}
				if changed("memory-swap") {
					r.Memory.Swap = &f.memorySwap
				}
				if changed("memory-reservation") {
					r.Memory.Reservation = &f.memoryRes
				}
			}
			if changed("cpu-shares") || changed("cpu-quota") || changed("cpu-period") || changed("cpuset-cpus") || changed("cpuset-mems") {
				if r.CPU == nil {
					r.CPU = &specs.LinuxCPU{}
				}
				if changed("cpu-shares") {
					r.CPU.Shares = &f.cpuShares
				}
				if changed("cpu-quota") {
					r.CPU.Quota = &f.cpuQuota
				}
				if changed("cpu-period") {
					r.CPU.Period = &f.cpuPeriod
				}
				r.CPU.Cpus, r.CPU.Mems = f.cpusetCpus, f.cpusetMems
			}
			if changed("pids-limit") {
				r.Pids = &specs.LinuxPids{Limit: &f.pidsLimit}
			}
			if changed("blkio-weight") {
				r.BlockIO = &specs.LinuxBlockIO{Weight: &f.blkioWeight}
			}
			data, err := json.Marshal(&r)
			if err != nil {
				return err
			}
			_, err = call(g, args[0], &control.Request{Op: control.OpUpdate, Resources: data}, nil, callTimeout)
			return err
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.resources, "resources", "r", "", "path to a file with OCI linux.resources JSON, or - for stdin")
	fl.Int64Var(&f.memory, "memory", 0, "memory limit in bytes")
	fl.Int64Var(&f.memorySwap, "memory-swap", 0, "memory plus swap limit in bytes")
	fl.Int64Var(&f.memoryRes, "memory-reservation", 0, "memory soft limit in bytes")
	fl.Uint64Var(&f.cpuShares, "cpu-shares", 0, "CPU shares (relative weight)")
	fl.Int64Var(&f.cpuQuota, "cpu-quota", 0, "CPU CFS quota in microseconds")
	fl.Uint64Var(&f.cpuPeriod, "cpu-period", 0, "CPU CFS period in microseconds")
	fl.StringVar(&f.cpusetCpus, "cpuset-cpus", "", "CPUs to use")
	fl.StringVar(&f.cpusetMems, "cpuset-mems", "", "memory nodes to use")
	fl.Int64Var(&f.pidsLimit, "pids-limit", 0, "maximum number of processes")
	fl.Uint16Var(&f.blkioWeight, "blkio-weight", 0, "block IO weight (10-1000)")
	return cmd
}
