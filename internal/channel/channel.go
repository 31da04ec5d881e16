// Package channel is the wire between the host and husk-agent: one byte stream
// (a virtio-serial port, or vsock where the host has it) multiplexed with yamux.
//
// After a short handshake (see WriteReady and WriteHello), the agent opens
// the first stream; the host serves nothing on it but uses it as its ttrpc
// client connection, so "a stream arrived" is the agent-ready signal. Every further stream is opened by the
// host for one stdio stream of one process and starts with a StreamHeader.
package channel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hashicorp/yamux"
	"google.golang.org/protobuf/proto"

	agentapi "github.com/husk-runtime/husk/api/agent/v1"
)

// PortName is the name of the virtio-serial port the agent listens on.
const PortName = "agent.channel.0"

// APIVersion names the agent API a build speaks: a host and a guest image
// work together when theirs are equal. Raise it whenever a change to
// api/agent/v1 or to this wire would break the other side.
const APIVersion = 4

// SharedTag is the 9p mount tag of the sandbox's shared directory, and
// GuestSharedDir where the agent mounts it: a container's files appear in the
// guest at GuestSharedDir/<container>/...
const (
	SharedTag      = "husk-shared"
	GuestSharedDir = "/run/husk/shared"
)

// GuestNetNS is the network namespace a container joins when it shares its
// sandbox's network: the guest's own, where the sandbox's interfaces are.
const GuestNetNS = "/proc/1/ns/net"

// maxHeaderSize bounds a StreamHeader so that a corrupt length cannot make
// either side allocate without limit.
const maxHeaderSize = 4096

func sessionConfig() *yamux.Config {
	cfg := yamux.DefaultConfig()
	// Keepalives are off: a guest under TCG on a loaded host can stall for
	// seconds, and yamux would then tear down a healthy session. The host
	// learns that the guest died from QEMU exiting instead.
	cfg.EnableKeepAlive = false
	cfg.ConnectionWriteTimeout = 60 * time.Second
	cfg.StreamOpenTimeout = 60 * time.Second
	cfg.LogOutput = io.Discard
	// Larger windows keep stdio throughput up over the serial port's latency.
	cfg.MaxStreamWindowSize = 4 << 20
	return cfg
}

// Guest wraps the agent's end of the port. The agent is the yamux client so
// that it speaks first: nothing the host writes can be lost to a port that
// the guest has not opened yet.
func Guest(conn io.ReadWriteCloser) (*yamux.Session, error) {
	s, err := yamux.Client(conn, sessionConfig())
	if err != nil {
		return nil, fmt.Errorf("starting yamux session: %w", err)
	}
	return s, nil
}

// Host wraps the host's end of the port.
func Host(conn io.ReadWriteCloser) (*yamux.Session, error) {
	s, err := yamux.Server(conn, sessionConfig())
	if err != nil {
		return nil, fmt.Errorf("starting yamux session: %w", err)
	}
	return s, nil
}

// WriteHeader writes the header that opens a stdio stream.
func WriteHeader(w io.Writer, h *agentapi.StreamHeader) error {
	body, err := proto.Marshal(h)
	if err != nil {
		return fmt.Errorf("encoding stream header: %w", err)
	}
	buf := binary.AppendUvarint(nil, uint64(len(body)))
	if _, err := w.Write(append(buf, body...)); err != nil {
		return fmt.Errorf("writing stream header: %w", err)
	}
	return nil
}

// ErrBadHeader is returned for a stream that does not start with a valid header.
var ErrBadHeader = errors.New("bad stream header")

// ReadHeader reads the header of a stdio stream. It reads byte by byte up to
// the header's end so that nothing of the stream's payload is consumed.
func ReadHeader(r io.Reader) (*agentapi.StreamHeader, error) {
	br := &byteReader{r: r}
	size, err := binary.ReadUvarint(br)
	if err != nil {
		return nil, fmt.Errorf("%w: length: %v", ErrBadHeader, err)
	}
	if size > maxHeaderSize {
		return nil, fmt.Errorf("%w: %d bytes is too long", ErrBadHeader, size)
	}
	body := make([]byte, size)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadHeader, err)
	}
	h := &agentapi.StreamHeader{}
	if err := proto.Unmarshal(body, h); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadHeader, err)
	}
	if h.GetKind() == agentapi.StreamHeader_UNKNOWN {
		return nil, fmt.Errorf("%w: kind is required", ErrBadHeader)
	}
	// A terminal of no container is the guest's debug console's.
	debugConsole := h.GetKind() == agentapi.StreamHeader_TERMINAL && h.GetExecId() != ""
	if h.GetContainerId() == "" && !debugConsole {
		return nil, fmt.Errorf("%w: container id is required", ErrBadHeader)
	}
	return h, nil
}

type byteReader struct{ r io.Reader }

var _ io.ByteReader = (*byteReader)(nil)

func (b *byteReader) ReadByte() (byte, error) {
	var one [1]byte
	if _, err := io.ReadFull(b.r, one[:]); err != nil {
		return 0, err
	}
	return one[0], nil
}

// The handshake that comes before the yamux session. The agent writes
// readyToken once the guest is prepared and then waits for the host's hello.
// A sandbox restored from a template starts inside that wait, so everything
// that must differ between sandboxes restored from one template happens
// after the hello: the guest takes the host's clock and entropy from it, and
// only then mounts the sandbox's share and opens the session.
const readyToken = "husk-agent-ready\n"

// helloMagic starts the host's hello; helloSize is the whole hello.
const (
	helloMagic = "husk-hello\n"
	// EntropySize is how many random bytes a hello carries.
	EntropySize = 64
	helloSize   = len(helloMagic) + 8 + EntropySize
)

// Hello is what the host tells the agent before the session starts.
type Hello struct {
	// RealtimeNs is the host's wall clock, nanoseconds since the epoch.
	RealtimeNs int64
	// Entropy seeds the guest's random number generator afresh.
	Entropy [EntropySize]byte
}

// WriteReady is the agent's side of the handshake's first half.
func WriteReady(w io.Writer) error {
	if _, err := io.WriteString(w, readyToken); err != nil {
		return fmt.Errorf("announcing the agent: %w", err)
	}
	return nil
}

// ErrBadHandshake is a peer that did not speak the handshake: a guest image
// or a host of another husk version, or a corrupt channel.
var ErrBadHandshake = errors.New("bad agent handshake")

// ReadReady waits for the agent's ready token. It reads byte by byte and
// stops at the first that differs: an agent of an older image opens its
// yamux session with a frame shorter than the token and then waits, which
// must be refused at once rather than wait out the boot's deadline.
func ReadReady(r io.Reader) error {
	var one [1]byte
	for i := 0; i < len(readyToken); i++ {
		if _, err := io.ReadFull(r, one[:]); err != nil {
			return fmt.Errorf("waiting for the agent: %w", err)
		}
		if one[0] != readyToken[i] {
			return fmt.Errorf("%w: the guest said %q where %q was due (a guest image of another husk?)", ErrBadHandshake, append([]byte(readyToken[:i]), one[0]), readyToken[:i+1])
		}
	}
	return nil
}

// WriteHello sends the host's hello.
func WriteHello(w io.Writer, h Hello) error {
	buf := make([]byte, 0, helloSize)
	buf = append(buf, helloMagic...)
	buf = binary.BigEndian.AppendUint64(buf, uint64(h.RealtimeNs))
	buf = append(buf, h.Entropy[:]...)
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("greeting the agent: %w", err)
	}
	return nil
}

// ReadHello is the agent's wait for the host's hello.
func ReadHello(r io.Reader) (Hello, error) {
	var h Hello
	buf := make([]byte, helloSize)
	if _, err := io.ReadFull(r, buf); err != nil {
		return h, fmt.Errorf("waiting for the host's hello: %w", err)
	}
	if string(buf[:len(helloMagic)]) != helloMagic {
		return h, fmt.Errorf("%w: the host said %q", ErrBadHandshake, buf[:len(helloMagic)])
	}
	rest := buf[len(helloMagic):]
	h.RealtimeNs = int64(binary.BigEndian.Uint64(rest))
	copy(h.Entropy[:], rest[8:])
	return h, nil
}
