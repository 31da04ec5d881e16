package agent

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/cgroups/fs2"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	// Device rules in the container's cgroup need the cgroup devices manager.
	_ "github.com/opencontainers/cgroups/devices"
)

// process is one process the agent started: a container's init or an exec.
type process struct {
	pid     int
	console *os.File // terminal master, nil without a terminal
	stdin   net.Conn // closed once the process exits, ending its copy

	// done is closed once the process exited and its output reached the host.
	done   chan struct{}
	status int
}

type container struct {
	id   string
	spec *specs.Spec // as created; updates merge into its resources
	lc   *libcontainer.Container
	init *process

	execs map[string]*process // guarded by Service.mu
}

// stdio is what the host opened for a process.
type stdio struct {
	stdin, stdout, stderr, terminal bool
	rows, cols                      uint16
}

// libcontainerProcess converts the OCI process to libcontainer's form.
func libcontainerProcess(p *specs.Process) (*libcontainer.Process, error) {
	if p == nil || len(p.Args) == 0 {
		return nil, errors.New("process.args must not be empty")
	}
	lp := &libcontainer.Process{
		Args:            p.Args,
		Env:             p.Env,
		UID:             int(p.User.UID),
		GID:             int(p.User.GID),
		Cwd:             p.Cwd,
		NoNewPrivileges: &p.NoNewPrivileges,
		Label:           p.SelinuxLabel,
		AppArmorProfile: p.ApparmorProfile,
		Scheduler:       p.Scheduler,
		IOPriority:      p.IOPriority,
	}
	for _, g := range p.User.AdditionalGids {
		lp.AdditionalGroups = append(lp.AdditionalGroups, int(g))
	}
	if c := p.Capabilities; c != nil {
		lp.Capabilities = &configs.Capabilities{
			Bounding: c.Bounding, Effective: c.Effective, Inheritable: c.Inheritable,
			Permitted: c.Permitted, Ambient: c.Ambient,
		}
	}
	for _, rl := range p.Rlimits {
		resource, ok := rlimitResources[rl.Type]
		if !ok {
			return nil, fmt.Errorf("process.rlimits: unknown type %q", rl.Type)
		}
		lp.Rlimits = append(lp.Rlimits, configs.Rlimit{Type: resource, Hard: rl.Hard, Soft: rl.Soft})
	}
	return lp, nil
}

var rlimitResources = map[string]int{
	"RLIMIT_AS": unix.RLIMIT_AS, "RLIMIT_CORE": unix.RLIMIT_CORE, "RLIMIT_CPU": unix.RLIMIT_CPU,
	"RLIMIT_DATA": unix.RLIMIT_DATA, "RLIMIT_FSIZE": unix.RLIMIT_FSIZE, "RLIMIT_LOCKS": unix.RLIMIT_LOCKS,
	"RLIMIT_MEMLOCK": unix.RLIMIT_MEMLOCK, "RLIMIT_MSGQUEUE": unix.RLIMIT_MSGQUEUE,
	"RLIMIT_NICE": unix.RLIMIT_NICE, "RLIMIT_NOFILE": unix.RLIMIT_NOFILE, "RLIMIT_NPROC": unix.RLIMIT_NPROC,
	"RLIMIT_RSS": unix.RLIMIT_RSS, "RLIMIT_RTPRIO": unix.RLIMIT_RTPRIO, "RLIMIT_RTTIME": unix.RLIMIT_RTTIME,
	"RLIMIT_SIGPENDING": unix.RLIMIT_SIGPENDING, "RLIMIT_STACK": unix.RLIMIT_STACK,
}

// newContainerConfig turns the spec the host sent into libcontainer's config.
func newContainerConfig(id string, spec *specs.Spec) (*configs.Config, error) {
	if spec.Root == nil || spec.Root.Path == "" {
		return nil, errors.New("root.path must be set")
	}
	if err := applyGuestNetworkSysctls(spec); err != nil {
		return nil, err
	}
	cfg, err := specconv.CreateLibcontainerConfig(&specconv.CreateOpts{CgroupName: id, Spec: spec})
	if err != nil {
		return nil, fmt.Errorf("converting the spec: %w", err)
	}
	return cfg, nil
}

// applyGuestNetworkSysctls sets the spec's net.* sysctls in the guest's
// network namespace, and takes them out of the spec, when the container
// joins that namespace (it shares its sandbox's network). libcontainer
// refuses net.* sysctls for a container in its runtime's own network
// namespace, because under runc that namespace is the host's; here it is
// the VM's, which the sandbox alone has, and setting them there is what
// runc does for a container that joins another's network namespace.
// Docker sets net.ipv4.ip_unprivileged_port_start for every container
// with a network of its own.
func applyGuestNetworkSysctls(spec *specs.Spec) error {
	if spec.Linux == nil || len(spec.Linux.Sysctl) == 0 {
		return nil
	}
	joinsGuest := false
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace && ns.Path != "" {
			// By identity, not by name: a container that joins another
			// one in the guest's namespace names it by that one's pid.
			joinsGuest = sameNamespace(ns.Path, "/proc/self/ns/net")
		}
	}
	if !joinsGuest {
		return nil
	}
	for key, value := range spec.Linux.Sysctl {
		if !strings.HasPrefix(key, "net.") {
			continue
		}
		path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
		if strings.Contains(key, "/") || strings.Contains(key, "..") || filepath.Clean(path) != path {
			return fmt.Errorf("linux.sysctl %q: not a sysctl name", key)
		}
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("linux.sysctl %q = %q: %w", key, value, err)
		}
		delete(spec.Linux.Sysctl, key)
	}
	return nil
}

// sameNamespace says whether two namespace files name one namespace.
func sameNamespace(a, b string) bool {
	var sa, sb unix.Stat_t
	if unix.Stat(a, &sa) != nil || unix.Stat(b, &sb) != nil {
		return false
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// pipes connects a process's stdio to the host's streams. Each side the
// process gets is an *os.File, so libcontainer passes it on directly and
// runs no copying goroutines of its own.
type pipes struct {
	childFiles []*os.File // closed in the agent once the process has them
	copies     sync.WaitGroup
	outputs    []*outputCopy
}

func (p *pipes) closeChildEnds() {
	for _, f := range p.childFiles {
		f.Close()
	}
	p.childFiles = nil
}

// outputCopy is one output pipe's copy to its stream.
type outputCopy struct {
	r       *os.File
	stream  net.Conn
	reading atomic.Bool // waiting for the process to write, not for the host
	ended   atomic.Bool
}

// idle says whether the copy waits for output that nobody writes: it is in
// a read and the pipe holds nothing.
func (c *outputCopy) idle() bool {
	if c.ended.Load() || !c.reading.Load() {
		return false
	}
	raw, err := c.r.SyscallConn()
	if err != nil {
		return true // closed
	}
	buffered := 0
	ctlErr := raw.Control(func(fd uintptr) {
		buffered, err = unix.IoctlGetInt(int(fd), unix.TIOCINQ) // FIONREAD
	})
	return ctlErr != nil || err != nil || buffered == 0
}

// drainPoll is how often drain looks at copies still under way once its
// wait is over.
const drainPoll = 50 * time.Millisecond

// drain waits for the process's output to reach the host. After wait, a
// copy that only waits for more output (its pipe empty, held open by
// processes that outlived the process) is cut: the host sees the end of the
// stream, and a process that writes on gets EPIPE, as after containerd's own
// bounded wait for a task's output. A copy still moving output, however
// slowly the host takes it, is never cut: nothing written before the exit
// is lost.
func (p *pipes) drain(wait time.Duration) {
	done := make(chan struct{})
	go func() {
		p.copies.Wait()
		close(done)
	}()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case <-done:
			return
		case <-timer.C:
		}
		for _, c := range p.outputs {
			if c.idle() {
				c.r.Close()
				c.stream.Close()
			}
		}
		timer.Reset(drainPoll)
	}
}

// output copies a process's output pipe to its stream until EOF, then closes
// the stream so the host sees the end.
func (p *pipes) output(stream net.Conn) (*os.File, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	p.childFiles = append(p.childFiles, w)
	c := &outputCopy{r: r, stream: stream}
	p.outputs = append(p.outputs, c)
	p.copies.Add(1)
	go func() {
		defer p.copies.Done()
		_ = copyOutput(stream, r, &c.reading)
		c.ended.Store(true)
		r.Close()
		stream.Close()
	}()
	// The host closes its side when the caller stops reading (a closed
	// pipe): closing the read end then gives the process EPIPE/SIGPIPE,
	// as it would get under runc, rather than blocking it forever.
	go func() {
		_, _ = io.Copy(io.Discard, stream)
		r.Close()
		// Also wakes a copy blocked writing to the stream.
		stream.Close()
	}()
	return w, nil
}

// outputLinger is how long copyOutput tops up a read before sending it.
const outputLinger = time.Millisecond

// copyOutput copies a process's output (a pipe or a terminal master) to its
// stream until EOF. Each frame on the agent channel costs far more than a
// read of the pipe, under TCG above all, and a process that writes in small
// pieces (busybox's head writes 4 KiB at a time) would get a frame per
// piece: so a read is topped up with whatever else arrives within
// outputLinger of it, up to the buffer's size. Output is held back by no
// more than outputLinger. reading, if set, is true while the copy waits for
// the process rather than for dst.
func copyOutput(dst io.Writer, src *os.File, reading *atomic.Bool) error {
	if reading == nil {
		reading = new(atomic.Bool)
	}
	buf := make([]byte, 128<<10)
	for {
		reading.Store(true)
		n, err := src.Read(buf)
		reading.Store(false)
		if err == nil && n < len(buf) && src.SetReadDeadline(time.Now().Add(outputLinger)) == nil {
			for err == nil && n < len(buf) {
				var m int
				m, err = src.Read(buf[n:])
				n += m
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				err = nil
			}
			_ = src.SetReadDeadline(time.Time{})
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// input copies the host's stream into a process's stdin until the host
// closes it.
func (p *pipes) input(stream net.Conn) (*os.File, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	p.childFiles = append(p.childFiles, r)
	go func() {
		_, _ = io.Copy(w, stream)
		w.Close()
	}()
	return r, nil
}

// terminal copies between a terminal master and its stream. Output ends with
// EIO once every holder of the terminal's other side has exited.
func (p *pipes) terminal(master *os.File, stream net.Conn) {
	p.copies.Add(1)
	go func() {
		defer p.copies.Done()
		_ = copyOutput(stream, master, nil)
		stream.Close()
	}()
	go func() { _, _ = io.Copy(master, stream) }()
}

// receiveConsole reads the terminal master that the container's init sends
// over the console socket.
func receiveConsole(sock *os.File) (*os.File, error) {
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(int(sock.Fd()), buf, oob, 0)
	if err != nil {
		return nil, fmt.Errorf("receiving the terminal: %w", err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return nil, fmt.Errorf("receiving the terminal: no file in the message")
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return nil, fmt.Errorf("receiving the terminal: no file in the message")
	}
	return os.NewFile(uintptr(fds[0]), "console"), nil
}

// oomKills is the count of OOM kills in the container's cgroup, 0 when it
// cannot be read (no memory controller, cgroup gone).
func (c *container) oomKills() uint64 {
	st, err := c.lc.State()
	if err != nil {
		return 0
	}
	n, err := fs2.OOMKillCount(st.CgroupPaths[""])
	if err != nil {
		return 0
	}
	return n
}
