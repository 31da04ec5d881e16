package sandbox

import (
	"fmt"
	"io"
	"net"
	"os"
	"sync"

	agentapi "github.com/husk-runtime/husk/api/agent/v1"
	"github.com/husk-runtime/husk/internal/control"
)

// stdioCopies moves a process's stdio between the caller's files (passed to
// the daemon over the control socket) and the agent's streams.
type stdioCopies struct {
	streams []net.Conn
	output  sync.WaitGroup // copies towards the caller
}

// wait returns once every output stream reached its end.
func (s *stdioCopies) wait() { s.output.Wait() }

// abort ends every copy.
func (s *stdioCopies) abort() {
	for _, c := range s.streams {
		c.Close()
	}
}

// connectStdio opens the streams a create or exec request asks for. Files
// come in the order stdin, stdout, stderr of those requested; with a terminal,
// input then output.
func (d *Daemon) connectStdio(containerID, execID string, req *control.Request, files []*os.File) (*stdioCopies, error) {
	type want struct {
		kind agentapi.StreamHeader_Kind
		in   bool // caller → process
		out  bool // process → caller
	}
	var wants []want
	if req.Terminal {
		wants = []want{{agentapi.StreamHeader_TERMINAL, true, true}}
	} else {
		if req.Stdin {
			wants = append(wants, want{kind: agentapi.StreamHeader_STDIN, in: true})
		}
		if req.Stdout {
			wants = append(wants, want{kind: agentapi.StreamHeader_STDOUT, out: true})
		}
		if req.Stderr {
			wants = append(wants, want{kind: agentapi.StreamHeader_STDERR, out: true})
		}
	}
	needed := 0
	for _, w := range wants {
		if w.in {
			needed++
		}
		if w.out {
			needed++
		}
	}
	if len(files) != needed {
		return nil, &control.Error{Code: control.CodeInvalid, Message: fmt.Sprintf("stdio: %d files passed, %d expected", len(files), needed)}
	}
	copies := &stdioCopies{}
	next := 0
	for _, w := range wants {
		stream, err := d.vm.OpenStream(&agentapi.StreamHeader{ContainerId: containerID, ExecId: execID, Kind: w.kind})
		if err != nil {
			copies.abort()
			return nil, err
		}
		copies.streams = append(copies.streams, stream)
		if w.in {
			in := files[next]
			next++
			go func() {
				_, _ = io.Copy(stream, in)
				// End of the caller's input: half-close, so the process
				// sees EOF while its output keeps flowing.
				if w.kind == agentapi.StreamHeader_STDIN {
					_ = stream.Close()
				}
			}()
		}
		if w.out {
			out := files[next]
			next++
			copies.output.Add(1)
			go func() {
				defer copies.output.Done()
				_, _ = io.Copy(out, stream)
				// At the end of the output, or when the caller stopped
				// reading: either way the agent learns it from the close.
				_ = stream.Close()
			}()
		}
	}
	return copies, nil
}
