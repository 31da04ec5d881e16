package channel

import (
	"bytes"
	"encoding/binary"
	"testing"

	agentapi "github.com/husk-runtime/husk/api/agent/v1"
)

// FuzzReadHeader feeds the stream header decoder what a broken or hostile
// peer could send: it must return an error or a valid header, never panic,
// and never read past the header's end.
func FuzzReadHeader(f *testing.F) {
	var good bytes.Buffer
	_ = WriteHeader(&good, &agentapi.StreamHeader{ContainerId: "c", ExecId: "e", Kind: agentapi.StreamHeader_STDIN})
	f.Add(good.Bytes())
	var console bytes.Buffer
	_ = WriteHeader(&console, &agentapi.StreamHeader{ExecId: "e", Kind: agentapi.StreamHeader_TERMINAL})
	f.Add(console.Bytes())
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		input := append(data, "payload"...)
		r := bytes.NewReader(input)
		h, err := ReadHeader(r)
		if err != nil {
			return
		}
		// The one header without a container is the debug console's: a
		// terminal named by its exec id alone.
		debugConsole := h.GetKind() == agentapi.StreamHeader_TERMINAL && h.GetExecId() != ""
		if h.GetKind() == agentapi.StreamHeader_UNKNOWN || (h.GetContainerId() == "" && !debugConsole) {
			t.Fatalf("accepted an invalid header %v", h)
		}
		// Exactly the length prefix and the length it names are consumed;
		// the stream's payload starts right after.
		size, n := binary.Uvarint(input)
		if consumed := len(input) - r.Len(); uint64(consumed) != uint64(n)+size {
			t.Fatalf("consumed %d bytes, the header is %d", consumed, uint64(n)+size)
		}
	})
}

// FuzzHandshake feeds both halves of the handshake what a broken or hostile
// peer could send: an error or the exact message, never a panic, and nothing
// read past the message's end.
func FuzzHandshake(f *testing.F) {
	var hello bytes.Buffer
	_ = WriteHello(&hello, Hello{RealtimeNs: 1, Entropy: [EntropySize]byte{1, 2, 3}})
	f.Add(hello.Bytes())
	f.Add([]byte(readyToken))
	f.Add([]byte{0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		input := append(data, "session"...)
		r := bytes.NewReader(input)
		if ReadReady(r) == nil {
			if !bytes.HasPrefix(input, []byte(readyToken)) || len(input)-r.Len() != len(readyToken) {
				t.Fatalf("accepted %q as the ready token, reading %d bytes", input, len(input)-r.Len())
			}
		}
		r = bytes.NewReader(input)
		h, err := ReadHello(r)
		if err != nil {
			return
		}
		if len(input)-r.Len() != helloSize {
			t.Fatalf("read %d bytes of a %d-byte hello", len(input)-r.Len(), helloSize)
		}
		var again bytes.Buffer
		if err := WriteHello(&again, h); err != nil || !bytes.Equal(again.Bytes(), input[:helloSize]) {
			t.Fatalf("hello %+v does not write back as it was read", h)
		}
	})
}
