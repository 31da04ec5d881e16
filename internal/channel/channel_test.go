package channel

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"

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
