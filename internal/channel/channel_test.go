package channel

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	agentapi "github.com/husk-runtime/husk/api/agent/v1"
)

func TestHeaderRoundTripLeavesPayload(t *testing.T) {
	var buf bytes.Buffer
	want := &agentapi.StreamHeader{ContainerId: "c1", ExecId: "e1", Kind: agentapi.StreamHeader_STDOUT}
	if err := WriteHeader(&buf, want); err != nil {
		t.Fatal(err)
	}
	buf.WriteString("payload")
	got, err := ReadHeader(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if got.GetContainerId() != "c1" || got.GetExecId() != "e1" || got.GetKind() != agentapi.StreamHeader_STDOUT {
		t.Fatalf("header = %v", got)
	}
	if rest, _ := io.ReadAll(&buf); string(rest) != "payload" {
		t.Fatalf("payload after header = %q", rest)
	}
}

func TestReadHeaderRejectsGarbage(t *testing.T) {
	for name, input := range map[string][]byte{
		"empty":     nil,
		"truncated": {10, 1, 2},
		"oversized": {0xff, 0xff, 0x03},
		"not proto": {3, 0xff, 0xff, 0xff},
		"no kind":   append([]byte{4}, []byte{0x0a, 0x02, 'c', '1'}...),
		"no id":     {2, 0x18, 0x02},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := ReadHeader(bytes.NewReader(input)); !errors.Is(err, ErrBadHeader) {
				t.Fatalf("err = %v, want ErrBadHeader", err)
			}
		})
	}
}

// The guest speaks first: a stream it opens reaches the host's Accept.
func TestSessionsCarryStreamsBothWays(t *testing.T) {
	hostEnd, guestEnd := net.Pipe()
	guest, err := Guest(guestEnd)
	if err != nil {
		t.Fatal(err)
	}
	defer guest.Close()
	host, err := Host(hostEnd)
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()

	go func() {
		s, err := guest.Open()
		if err == nil {
			_, _ = s.Write([]byte("ready"))
		}
	}()
	control, err := host.Accept()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(control, buf); err != nil || string(buf) != "ready" {
		t.Fatalf("read %q, %v", buf, err)
	}

	go func() {
		s, err := host.Open()
		if err == nil {
			_ = WriteHeader(s, &agentapi.StreamHeader{ContainerId: "c", Kind: agentapi.StreamHeader_STDIN})
			_, _ = s.Write([]byte("hi"))
			_ = s.Close()
		}
	}()
	stdin, err := guest.Accept()
	if err != nil {
		t.Fatal(err)
	}
	h, err := ReadHeader(stdin)
	if err != nil || h.GetKind() != agentapi.StreamHeader_STDIN {
		t.Fatalf("header %v, %v", h, err)
	}
	if rest, err := io.ReadAll(stdin); err != nil || string(rest) != "hi" {
		t.Fatalf("stdin %q, %v", rest, err)
	}
}

// The handshake leaves the bytes after it, the yamux session's, unread.
func TestHandshakeRoundTripLeavesSession(t *testing.T) {
	var toHost, toGuest bytes.Buffer
	if err := WriteReady(&toHost); err != nil {
		t.Fatal(err)
	}
	toHost.WriteString("session")
	if err := ReadReady(&toHost); err != nil {
		t.Fatalf("ReadReady: %v", err)
	}
	if rest, _ := io.ReadAll(&toHost); string(rest) != "session" {
		t.Fatalf("after the ready token: %q", rest)
	}
	want := Hello{RealtimeNs: 1795781987975497907}
	for i := range want.Entropy {
		want.Entropy[i] = byte(i * 7)
	}
	if err := WriteHello(&toGuest, want); err != nil {
		t.Fatal(err)
	}
	toGuest.WriteString("session")
	got, err := ReadHello(&toGuest)
	if err != nil {
		t.Fatalf("ReadHello: %v", err)
	}
	if got != want {
		t.Fatalf("hello = %+v, want %+v", got, want)
	}
	if rest, _ := io.ReadAll(&toGuest); string(rest) != "session" {
		t.Fatalf("after the hello: %q", rest)
	}
}

// A peer of another version, or a yamux frame where the handshake belongs,
// is refused by name rather than misread.
func TestHandshakeRejectsOtherSpeech(t *testing.T) {
	// An older agent's first words: one 12-byte yamux header (a window
	// update opening stream 1), after which it waits; the host must not
	// wait with it.
	host, guest := net.Pipe()
	defer host.Close()
	go func() {
		_, _ = guest.Write([]byte{0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0})
	}()
	_ = host.SetReadDeadline(time.Now().Add(5 * time.Second))
	if err := ReadReady(host); !errors.Is(err, ErrBadHandshake) {
		t.Errorf("ReadReady(yamux frame) = %v, want ErrBadHandshake", err)
	}
	guest.Close()
	hello := append([]byte("husk-hullo\n"), make([]byte, 8+EntropySize)...)
	if _, err := ReadHello(bytes.NewReader(hello)); !errors.Is(err, ErrBadHandshake) {
		t.Errorf("ReadHello(bad magic) = %v, want ErrBadHandshake", err)
	}
	if _, err := ReadHello(bytes.NewReader([]byte(helloMagic))); err == nil || errors.Is(err, ErrBadHandshake) {
		t.Errorf("ReadHello(truncated) = %v, want a read error", err)
	}
	if err := ReadReady(bytes.NewReader(nil)); err == nil {
		t.Error("ReadReady(nothing) succeeded")
	}
}
