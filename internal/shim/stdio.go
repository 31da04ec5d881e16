package shim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containerd/fifo"

	"github.com/husk-runtime/husk/internal/sandbox"
)

// ioPaths are a process's stdio as containerd names them: FIFO paths, or
// file:// and binary:// URIs for the output.
type ioPaths struct {
	stdin, stdout, stderr string
	terminal              bool
}

// loggerReadyTimeout bounds the wait for a binary:// logger to say it is ready.
const loggerReadyTimeout = 10 * time.Second

// openStdio opens what paths name. For FIFOs the opens complete when
// containerd's side is there: it opens its ends before it creates the task.
func openStdio(ctx context.Context, p ioPaths, id, namespace string) (_ sandbox.Stdio, retErr error) {
	stdio := sandbox.Stdio{Terminal: p.terminal}
	var opened []io.Closer
	defer func() {
		if retErr != nil {
			for _, c := range opened {
				c.Close()
			}
		}
	}()
	if p.stdin != "" {
		// Non-blocking here means "open in the background": reads wait for
		// the writer and see EOF only when it closes. Not the request's
		// context: it ends with the request, and the open with it, while the
		// client may open its end later.
		in, err := fifo.OpenFifo(context.Background(), p.stdin, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return stdio, fmt.Errorf("opening stdin %s: %w", p.stdin, err)
		}
		opened = append(opened, in)
		stdio.Stdin = in
	}
	stderr := p.stderr
	if p.terminal {
		// A terminal has one output stream.
		stderr = ""
	}
	if p.stdout == "" && stderr == "" {
		return stdio, nil
	}
	u, err := url.Parse(p.stdout)
	if p.stdout == "" {
		u, err = url.Parse(stderr)
	}
	if err != nil {
		return stdio, fmt.Errorf("stdio %q: %w", p.stdout, err)
	}
	switch u.Scheme {
	case "binary":
		out, errOut, err := startLogger(u, stderr != "", id, namespace)
		if err != nil {
			return stdio, err
		}
		if p.stdout == "" {
			out.Close()
			out = nil
		}
		stdio.Stdout, stdio.Stderr = out, errOut
		return stdio, nil
	case "", "fifo", "file":
	default:
		return stdio, fmt.Errorf("stdio %q: unsupported scheme %q (husk takes FIFOs, file:// and binary://)", p.stdout, u.Scheme)
	}
	for _, out := range []struct {
		path string
		dst  *io.WriteCloser
	}{{p.stdout, &stdio.Stdout}, {stderr, &stdio.Stderr}} {
		if out.path == "" {
			continue
		}
		w, err := openOutput(ctx, out.path)
		if err != nil {
			return stdio, err
		}
		opened = append(opened, w)
		*out.dst = w
	}
	return stdio, nil
}

// openOutput opens a FIFO or a file:// URI for writing.
func openOutput(ctx context.Context, path string) (io.WriteCloser, error) {
	u, err := url.Parse(path)
	if err != nil {
		return nil, fmt.Errorf("stdio %q: %w", path, err)
	}
	if u.Scheme == "file" {
		if err := os.MkdirAll(filepath.Dir(u.Path), 0o755); err != nil {
			return nil, fmt.Errorf("stdio %q: %w", path, err)
		}
		f, err := os.OpenFile(u.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("stdio %q: %w", path, err)
		}
		return f, nil
	}
	if u.Scheme == "fifo" {
		path = u.Path
	}
	w, err := fifo.OpenFifo(ctx, path, syscall.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	return w, nil
}

// startLogger starts a binary:// logging program as containerd's contract
// has it: the process's stdout on its fd 3, stderr on fd 4, and fd 5 closed
// (or written to) once it is ready; the URI's query gives its arguments.
func startLogger(u *url.URL, withStderr bool, id, namespace string) (io.WriteCloser, io.WriteCloser, error) {
	var args []string
	for k, vs := range u.Query() {
		args = append(args, k)
		if len(vs) > 0 && vs[0] != "" {
			args = append(args, vs[0])
		}
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, nil, err
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		for _, f := range []*os.File{outR, outW, errR, errW} {
			f.Close()
		}
		return nil, nil, err
	}
	cmd := exec.Command(u.Path, args...)
	// What containerd gives its own loggers: these two and nothing else.
	cmd.Env = []string{"CONTAINER_ID=" + id, "CONTAINER_NAMESPACE=" + namespace}
	cmd.ExtraFiles = []*os.File{outR, errR, readyW}
	err = cmd.Start()
	outR.Close()
	errR.Close()
	readyW.Close()
	if err != nil {
		readyR.Close()
		outW.Close()
		errW.Close()
		return nil, nil, fmt.Errorf("starting the logger %s: %w", u.Path, err)
	}
	// The logger ends when its input does; reap it then.
	go func() { _ = cmd.Wait() }()
	_ = readyR.SetReadDeadline(time.Now().Add(loggerReadyTimeout))
	_, err = readyR.Read(make([]byte, 1))
	readyR.Close()
	if err != nil && !errors.Is(err, io.EOF) {
		outW.Close()
		errW.Close()
		_ = cmd.Process.Kill()
		return nil, nil, fmt.Errorf("the logger %s did not get ready: %w", u.Path, err)
	}
	if !withStderr {
		errW.Close()
		return outW, nil, nil
	}
	return outW, errW, nil
}
