package sandbox

import (
	"io"
	"net"
	"sync"

	agentapi "github.com/husk-runtime/husk/api/agent/v1"
)

// Stdio is a process's standard streams on the host side: the caller's
// files (passed over the control socket) or containerd's FIFOs. A nil
// stream is one the process does not get. With Terminal, Stdin and Stdout
// carry the terminal's input and output and Stderr is unused.
type Stdio struct {
	Stdin          io.ReadCloser
	Stdout, Stderr io.WriteCloser
	Terminal       bool
	Rows, Cols     uint16
}

// Close closes every stream.
func (s Stdio) Close() {
	closeAll(s.closers())
}

func (s Stdio) closers() []io.Closer {
	var cs []io.Closer
	if s.Stdin != nil {
		cs = append(cs, s.Stdin)
	}
	if s.Stdout != nil {
		cs = append(cs, s.Stdout)
	}
	if s.Stderr != nil {
		cs = append(cs, s.Stderr)
	}
	return cs
}

// stdioCopies moves a process's stdio between the host side and the agent's
// streams.
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

// connectStdio opens the agent streams a process's stdio needs and copies
// between them and the host side.
func (s *Sandbox) connectStdio(containerID, execID string, stdio Stdio) (*stdioCopies, error) {
	type pipe struct {
		kind agentapi.StreamHeader_Kind
		in   io.Reader // host → process
		out  io.Writer // process → host
	}
	var pipes []pipe
	switch {
	case stdio.Terminal:
		t := pipe{kind: agentapi.StreamHeader_TERMINAL}
		if stdio.Stdin != nil {
			t.in = stdio.Stdin
		}
		if stdio.Stdout != nil {
			t.out = stdio.Stdout
		}
		pipes = append(pipes, t)
	default:
		if stdio.Stdin != nil {
			pipes = append(pipes, pipe{kind: agentapi.StreamHeader_STDIN, in: stdio.Stdin})
		}
		if stdio.Stdout != nil {
			pipes = append(pipes, pipe{kind: agentapi.StreamHeader_STDOUT, out: stdio.Stdout})
		}
		if stdio.Stderr != nil {
			pipes = append(pipes, pipe{kind: agentapi.StreamHeader_STDERR, out: stdio.Stderr})
		}
	}
	copies := &stdioCopies{}
	for _, p := range pipes {
		stream, err := s.vm.OpenStream(&agentapi.StreamHeader{ContainerId: containerID, ExecId: execID, Kind: p.kind})
		if err != nil {
			copies.abort()
			return nil, err
		}
		copies.streams = append(copies.streams, stream)
		if p.in != nil {
			go func() {
				_, _ = io.Copy(stream, p.in)
				// End of the caller's input: half-close, so the process
				// sees EOF while its output keeps flowing.
				if p.kind == agentapi.StreamHeader_STDIN {
					_ = stream.Close()
				}
			}()
		}
		if p.out != nil {
			copies.output.Add(1)
			go func() {
				defer copies.output.Done()
				_, _ = io.Copy(p.out, stream)
				// At the end of the output, or when the caller stopped
				// reading: either way the agent learns it from the close.
				_ = stream.Close()
			}()
		}
	}
	return copies, nil
}
