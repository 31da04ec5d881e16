package cli

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/husk-runtime/husk/internal/control"
	"github.com/husk-runtime/husk/internal/sandbox"
	"github.com/husk-runtime/husk/internal/state"
)

// daemonCommand is the hidden entry point of the per-sandbox daemon. Its
// command line carries the sandbox id so that ps shows whose daemon it is.
const daemonCommand = "sandbox-daemon"

// readyFD is the descriptor on which the daemon reports "ok" or its error.
const readyFD = 3

func newDaemonCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:    daemonCommand + " ID",
		Short:  "run a sandbox's daemon (started by husk itself)",
		Hidden: true,
		Args:   oneID,
		RunE: func(cmd *cobra.Command, args []string) error {
			ready, err := readyFile()
			if err != nil {
				return err
			}
			cfg, err := g.config()
			if err != nil {
				fmt.Fprintln(ready, err)
				return err
			}
			return sandbox.RunDaemon(g.store(), args[0], cfg, ready, g.daemonLogger())
		},
	}
}

// daemonLogger is a sandbox daemon's logger. It writes to the daemon's
// stderr, its daemon.log, in the format --log-format names, at debug level
// (each control request) with --debug.
func (g *globals) daemonLogger() *slog.Logger {
	opts := &slog.HandlerOptions{}
	if g.debug {
		opts.Level = slog.LevelDebug
	}
	if g.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// readyFile is the inherited descriptor on which a child started by husk
// reports "ok" or its error. It arrives without close-on-exec; it gets it
// here, or QEMU would hold it and the parent would wait for an end of file
// that never comes.
func readyFile() (*os.File, error) {
	syscall.CloseOnExec(readyFD)
	f := os.NewFile(readyFD, "ready")
	if f == nil {
		return nil, errors.New("no ready descriptor")
	}
	return f, nil
}

// daemonHandle is a started daemon, as its parent sees it.
type daemonHandle struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

// startDaemon starts the sandbox's daemon in a mount namespace of its own
// (slave to the host's, so later host mounts still reach it) and waits until
// the guest is up. On error nothing of the daemon is left running.
func startDaemon(g *globals, id string, bootTimeout time.Duration) (*daemonHandle, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("finding the husk binary: %w", err)
	}
	dir := g.store().Dir(id)
	logFile, err := os.OpenFile(filepath.Join(dir, sandbox.DaemonLog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("creating the daemon's log: %w", err)
	}
	defer logFile.Close()
	readR, readyW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer readR.Close()

	cmd := daemonProcess(g, self, logFile, daemonCommand, id)
	cmd.ExtraFiles = []*os.File{readyW}
	if err := cmd.Start(); err != nil {
		readyW.Close()
		return nil, fmt.Errorf("starting the sandbox daemon: %w", err)
	}
	readyW.Close()
	// Recorded at once, so that a delete that comes while the guest boots
	// (this command killed half-way) finds the daemon and ends it.
	if err := g.store().Update(id, func(st *state.State) error {
		st.Daemon = state.ProcessOf(cmd.Process.Pid)
		return nil
	}); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, err
	}
	h := &daemonHandle{cmd: cmd, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(h.exited)
	}()

	msg := make(chan string, 2)
	go func() {
		r := bufio.NewReader(readR)
		for {
			line, err := r.ReadString('\n')
			line = strings.TrimSpace(line)
			msg <- line
			if err != nil || line != sandbox.TurnReport {
				return
			}
		}
	}()
	// The daemon enforces the boot timeout itself, from its turn to start
	// the guest; before it, it queues behind the host's other starts for as
	// long as they take (an end of this command ends the daemon too). The
	// guard, from the turn on, only catches a daemon that hangs outright.
	limit := bootTimeout + 15*time.Second
	var guard <-chan time.Time
	for {
		select {
		case m := <-msg:
			switch m {
			case sandbox.TurnReport:
				guard = time.After(limit)
				continue
			case "ok":
				return h, nil
			}
			h.kill()
			if m == "" {
				m = "the sandbox daemon exited: " + lastLines(filepath.Join(dir, sandbox.DaemonLog), 5)
			}
			return nil, errors.New(m)
		case <-guard:
			h.kill()
			return nil, fmt.Errorf("the sandbox daemon did not report within %s of its turn to start the guest", limit)
		}
	}
}

// daemonProcess is the command that starts one of husk's daemons (the hidden
// command with its argument) in a session of its own and a mount namespace
// of its own, slave to the host's so later host mounts still reach it,
// with this command's global flags and its output in log.
func daemonProcess(g *globals, self string, log *os.File, command, arg string) *exec.Cmd {
	args := []string{"--mount", "--propagation", "slave", "--", self, "--root", g.root}
	if g.configPath != "" {
		args = append(args, "--config", g.configPath)
	}
	if g.debug {
		args = append(args, "--debug")
	}
	args = append(args, "--log-format", g.logFormat)
	cmd := exec.Command("unshare", append(args, command, arg)...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	return cmd
}

func (h *daemonHandle) kill() {
	_ = h.cmd.Process.Kill()
	<-h.exited
}

// waitGone waits until a process (a daemon, QEMU) has ended, whether or not
// it is this process's child.
func waitGone(p state.Process, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for p.Alive() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

func lastLines(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := bytes.Split(bytes.TrimSpace(data), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("; ")))
}

// controlSocket is the daemon's socket, reached through /proc/self/fd so
// that the path stays short whatever the state root and id.
func controlSocket(g *globals, id string) (path string, closeDir func(), err error) {
	return controlSocketIn(g.store().Dir(id))
}

// controlSocketIn is the control socket of the daemon whose directory is dir.
func controlSocketIn(dirPath string) (path string, closeDir func(), err error) {
	dir, err := os.Open(dirPath)
	if err != nil {
		return "", nil, err
	}
	return fmt.Sprintf("/proc/self/fd/%d/%s", dir.Fd(), control.SocketName), func() { dir.Close() }, nil
}

// call sends one request to the container's daemon: its own, or that of
// the sandbox it joined.
func call(g *globals, id string, req *control.Request, files []*os.File, timeout time.Duration) (*control.Reply, error) {
	daemonOf := id
	if st, err := g.store().Load(id); err == nil && st.Sandbox != "" {
		daemonOf = st.Sandbox
	}
	sock, closeDir, err := controlSocket(g, daemonOf)
	if err != nil {
		return nil, err
	}
	defer closeDir()
	req.Container = id
	return control.Call(sock, req, files, timeout)
}
