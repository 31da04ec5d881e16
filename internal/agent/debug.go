package agent

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sync"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentapi "github.com/husk-runtime/husk/api/agent/v1"
)

// debugBusybox is where a debug image carries its shell.
const debugBusybox = "/bin/busybox"

// installApplets gives the debug shell its commands by name, once.
var installApplets sync.Once

// DebugConsole starts a shell in the guest, outside every container, for an
// administrator looking into a sandbox (`husk debug-console`).
func (s *Service) DebugConsole(ctx context.Context, req *agentapi.DebugConsoleRequest) (*agentapi.Empty, error) {
	if !s.debugConsole {
		return nil, status.Error(codes.FailedPrecondition, "the debug console is not enabled: set debug_console = true in husk's configuration and start the sandbox again")
	}
	if _, err := os.Stat(debugBusybox); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "the guest image has no %s", debugBusybox)
	}
	installApplets.Do(func() { _ = exec.Command(debugBusybox, "--install", "-s", "/bin").Run() })
	stream, err := s.streams.take(streamKey{"", req.GetExecId(), agentapi.StreamHeader_TERMINAL}, streamWait)
	if err != nil {
		return nil, err
	}
	master, slave, err := openPty()
	if err != nil {
		stream.Close()
		return nil, status.Errorf(codes.Internal, "opening a terminal: %v", err)
	}
	defer slave.Close()
	if req.GetRows() > 0 && req.GetCols() > 0 {
		_ = unix.IoctlSetWinsize(int(master.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: uint16(req.GetRows()), Col: uint16(req.GetCols())})
	}
	cmd := exec.Command(debugBusybox, "sh", "-l")
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/bin:/sbin:/usr/bin:/usr/sbin", "TERM=xterm", "HOME=/", "PS1=husk-guest# "}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &unix.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	_, exited, err := s.reaper.spawn(func() (int, error) {
		if err := cmd.Start(); err != nil {
			return 0, err
		}
		return cmd.Process.Pid, nil
	})
	if err != nil {
		master.Close()
		stream.Close()
		return nil, status.Errorf(codes.Internal, "starting the debug shell: %v", err)
	}
	p := &pipes{}
	p.terminal(master, stream)
	go func() {
		<-exited
		p.copies.Wait()
		master.Close()
	}()
	return &agentapi.Empty{}, nil
}

// openPty opens a new terminal's master and its peer.
func openPty() (master, peer *os.File, err error) {
	master, err = os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, err
	}
	n, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPTN)
	if err == nil {
		err = unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0)
	}
	if err == nil {
		peer, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	}
	if err != nil {
		master.Close()
		return nil, nil, err
	}
	return master, peer, nil
}
