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
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		input := append(data, "payload"...)
		r := bytes.NewReader(input)
		h, err := ReadHeader(r)
		if err != nil {
			return
		}
		if h.GetContainerId() == "" || h.GetKind() == agentapi.StreamHeader_UNKNOWN {
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
