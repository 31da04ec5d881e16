package sandbox

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"

	agentapi "github.com/husk-runtime/husk/api/agent/v1"
	"github.com/husk-runtime/husk/internal/initrd"
)

// DebugBusybox is the static busybox a debug guest image carries.
const DebugBusybox = "/bin/busybox"

// debugInitrd is the guest image of a sandbox with the debug console, in
// its state directory.
const debugInitrd = "debug-initrd.img"

// writeDebugInitrd writes the configured guest image followed by a second
// archive holding busybox: the kernel unpacks concatenated archives in
// turn, so the image gains a shell without being rebuilt.
func writeDebugInitrd(dir, base string) (string, error) {
	image, err := os.ReadFile(base)
	if err != nil {
		return "", fmt.Errorf("reading the guest image: %w", err)
	}
	busybox, err := os.ReadFile(DebugBusybox)
	if err != nil {
		return "", fmt.Errorf("the debug console needs a static busybox (apt-get install busybox-static): %w", err)
	}
	if err := initrd.CheckAgent(busybox); err != nil {
		return "", fmt.Errorf("the debug console needs a static busybox at %s: %w", DebugBusybox, err)
	}
	var extra bytes.Buffer
	err = initrd.Write(&extra, []initrd.Entry{
		{Path: "bin", Mode: os.ModeDir | 0o755},
		{Path: "bin/busybox", Mode: 0o755, Data: busybox},
	})
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, debugInitrd)
	if err := os.WriteFile(path, append(image, extra.Bytes()...), 0o600); err != nil {
		return "", fmt.Errorf("writing the debug guest image: %w", err)
	}
	return path, nil
}

var debugSeq atomic.Int64

// DebugConsole opens a shell in the guest, outside every container, on a
// terminal whose input and output are stdio's. The returned channel is
// closed when the shell has exited and its output reached stdio.Stdout.
func (s *Sandbox) DebugConsole(stdio Stdio) (<-chan struct{}, error) {
	execID := fmt.Sprintf("debug-%d", debugSeq.Add(1))
	stdio.Terminal = true
	copies, err := s.connectStdio("", execID, stdio)
	if err != nil {
		return nil, err
	}
	err = agentCall(func(ctx context.Context) error {
		_, err := s.vm.Agent.DebugConsole(ctx, &agentapi.DebugConsoleRequest{ExecId: execID, Rows: uint32(stdio.Rows), Cols: uint32(stdio.Cols)})
		return err
	})
	if err != nil {
		copies.abort()
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		copies.wait()
		closeAll(stdio.closers())
		close(done)
	}()
	return done, nil
}
