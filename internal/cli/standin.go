package cli

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/containerd/console"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/husk-runtime/husk/internal/control"
)

// The stand-in is one small host process per container process: its PID is
// what --pid-file receives, it holds the stdio the caller gave, forwards the
// signals it receives, and exits with the container process's exit status.
// Callers (containerd's runc shim, conmon) wait on it as on the container.
const standInCommand = "stand-in"

// standInOptions say which process a stand-in stands for.
type standInOptions struct {
	bundle      string // create: the bundle
	execID      string // exec: the exec id ...
	processFile string // ... and the OCI process to run
	terminal    bool
}

func newStandInCommand(g *globals) *cobra.Command {
	var o standInOptions
	cmd := &cobra.Command{
		Use:    standInCommand + " ID",
		Short:  "stand in for a container's process (started by husk itself)",
		Hidden: true,
		Args:   oneID,
		RunE: func(cmd *cobra.Command, args []string) error {
			ready, err := readyFile()
			if err != nil {
				return err
			}
			return standIn(g, args[0], o, ready)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.bundle, "bundle", "", "bundle of the container to create")
	f.StringVar(&o.execID, "exec-id", "", "id of the process to exec")
	f.StringVar(&o.processFile, "process-file", "", "OCI process to exec (JSON)")
	f.BoolVar(&o.terminal, "terminal", false, "stdio is a terminal")
	return cmd
}

// standIn creates the process through the daemon with this process's stdio,
// reports on ready, then stands in for it until it exits.
func standIn(g *globals, id string, o standInOptions, ready *os.File) error {
	req := &control.Request{Op: control.OpCreate, Bundle: o.bundle, ExecID: o.execID}
	if o.execID != "" {
		req.Op = control.OpExec
		data, err := os.ReadFile(o.processFile)
		if err != nil {
			fmt.Fprintln(ready, err)
			return err
		}
		os.Remove(o.processFile)
		req.Process = data
	}
	files, err := stdioRequest(req, o.terminal)
	if err != nil {
		fmt.Fprintln(ready, err)
		return err
	}
	_, err = call(g, id, req, files, callTimeout)
	files[0].Close()
	if err != nil {
		fmt.Fprintln(ready, err)
		ready.Close()
		return &ExitError{Status: 1}
	}
	stop := forwardSignals(g, id, o.execID, o.terminal)
	defer stop()
	fmt.Fprintln(ready, "ok")
	ready.Close()
	// The daemon holds its own copies of the stdio now; this process keeps
	// its copies until the process exits, as the process itself would.
	reply, err := call(g, id, &control.Request{Op: control.OpWait, ExecID: o.execID, StandIn: true}, nil, 0)
	if err != nil {
		// The daemon is gone, and the VM with it: as if killed.
		return &ExitError{Status: 128 + int(unix.SIGKILL)}
	}
	return &ExitError{Status: reply.ExitStatus}
}

// startStandIn starts a stand-in with this process's stdio (or a new pty
// whose master goes to consoleSocket) and waits until it has created its
// process. It returns the stand-in's PID.
func startStandIn(g *globals, id string, o standInOptions, consoleSocket string) (int, error) {
	self, err := os.Executable()
	if err != nil {
		return 0, err
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer readyR.Close()
	args := []string{"--root", g.root}
	if g.configPath != "" {
		args = append(args, "--config", g.configPath)
	}
	if g.logPath != "" {
		args = append(args, "--log", g.logPath, "--log-format", g.logFormat)
	}
	args = append(args, standInCommand, id)
	if o.bundle != "" {
		args = append(args, "--bundle", o.bundle)
	}
	if o.execID != "" {
		args = append(args, "--exec-id", o.execID, "--process-file", o.processFile)
	}
	if o.terminal {
		args = append(args, "--terminal")
	}
	cmd := exec.Command(self, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{readyW}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if o.terminal && consoleSocket != "" {
		pty, tty, err := console.NewPty()
		if err != nil {
			readyW.Close()
			return 0, fmt.Errorf("allocating a terminal: %w", err)
		}
		defer pty.Close()
		ttyFile, err := os.OpenFile(tty, os.O_RDWR|unix.O_NOCTTY, 0)
		if err != nil {
			readyW.Close()
			return 0, fmt.Errorf("opening %s: %w", tty, err)
		}
		defer ttyFile.Close()
		if err := sendConsole(consoleSocket, pty); err != nil {
			readyW.Close()
			return 0, err
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = ttyFile, ttyFile, ttyFile
		// The terminal is the stand-in's controlling terminal, so a resize
		// by the caller reaches it as SIGWINCH.
		cmd.SysProcAttr.Setctty = true
		cmd.SysProcAttr.Ctty = 0
	}
	if err := cmd.Start(); err != nil {
		readyW.Close()
		return 0, fmt.Errorf("starting the stand-in: %w", err)
	}
	readyW.Close()
	line, _ := bufio.NewReader(readyR).ReadString('\n')
	line = strings.TrimSpace(line)
	if line != "ok" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if line == "" {
			line = "the stand-in process exited"
		}
		return 0, errors.New(line)
	}
	// Not waited for: the caller's subreaper (or init) reaps it.
	pid := cmd.Process.Pid
	_ = cmd.Process.Release()
	return pid, nil
}

// sendConsole sends a terminal's master to the caller's console socket, as
// runc does with --console-socket.
func sendConsole(socketPath string, pty console.Console) error {
	conn, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("console socket: %w", err)
	}
	defer unix.Close(conn)
	if err := unix.Connect(conn, &unix.SockaddrUnix{Name: socketPath}); err != nil {
		return fmt.Errorf("connecting to console socket %s: %w", socketPath, err)
	}
	name := []byte(pty.Name())
	if err := unix.Sendmsg(conn, name, unix.UnixRights(int(pty.Fd())), nil, 0); err != nil {
		return fmt.Errorf("sending the terminal to %s: %w", socketPath, err)
	}
	return nil
}

// writePIDFile writes pid atomically, as the very last step of create:
// callers take the file's appearance as "create finished".
func writePIDFile(path string, pid int) error {
	if path == "" {
		return nil
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	tmp := filepath.Join(filepath.Dir(abs), "."+filepath.Base(abs)+".tmp")
	if err := os.WriteFile(tmp, []byte(fmt.Sprint(pid)), 0o644); err != nil {
		return fmt.Errorf("writing pid file: %w", err)
	}
	if err := os.Rename(tmp, abs); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing pid file: %w", err)
	}
	return nil
}

func newExecID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "exec-" + hex.EncodeToString(b)
}
