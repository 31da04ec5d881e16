package agent

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	agentapi "github.com/husk-runtime/husk/api/agent/v1"
)

// ttrpc's framing: length, stream id, type, flags; type 1 is a request.
const (
	frameHeaderLength = 10
	frameRequest      = 1
)

// sendFrame writes one request frame in the background (the pipe blocks
// until the server reads) and returns where its error will arrive.
func sendFrame(w io.Writer, id uint32, payload []byte) <-chan error {
	var h [frameHeaderLength]byte
	binary.BigEndian.PutUint32(h[0:4], uint32(len(payload)))
	binary.BigEndian.PutUint32(h[4:8], id)
	h[8] = frameRequest
	done := make(chan error, 1)
	go func() {
		_, err := w.Write(append(h[:], payload...))
		done <- err
	}()
	return done
}

func readResponse(t *testing.T, r io.Reader) (uint32, *ttrpc.Response) {
	t.Helper()
	var h [frameHeaderLength]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		t.Fatalf("reading a response: %v", err)
	}
	payload := make([]byte, binary.BigEndian.Uint32(h[0:4]))
	if _, err := io.ReadFull(r, payload); err != nil {
		t.Fatalf("reading a response: %v", err)
	}
	var resp ttrpc.Response
	if err := proto.Unmarshal(payload, &resp); err != nil {
		t.Fatalf("decoding a response: %v", err)
	}
	return binary.BigEndian.Uint32(h[4:8]), &resp
}

func request(t *testing.T, method string, msg proto.Message) []byte {
	t.Helper()
	payload, err := proto.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	data, err := proto.Marshal(&ttrpc.Request{Service: "husk.agent.v1.Agent", Method: method, Payload: payload})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// An oversized message, garbage and requests the agent does not know are
// each answered with an error on the same control connection, which keeps
// serving: the next Ping is answered.
func TestControlConnectionSurvivesBadMessages(t *testing.T) {
	hostEnd, guestEnd := net.Pipe()
	defer hostEnd.Close()
	server, err := newServer(NewService(0, func() {}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = server.Serve(ctx, newOneConnListener(guestEnd)) }()
	_ = hostEnd.SetDeadline(time.Now().Add(30 * time.Second))

	for _, tc := range []struct {
		name    string
		payload []byte
		want    codes.Code
	}{
		{"oversized", make([]byte, 5<<20), codes.ResourceExhausted},
		{"garbage", []byte{0xff, 0xff, 0xff, 0x0f, 0xde, 0xad}, codes.InvalidArgument},
		{"unknown method", request(t, "Format", &agentapi.Empty{}), codes.Unimplemented},
		{"bad payload", func() []byte {
			data, _ := proto.Marshal(&ttrpc.Request{Service: "husk.agent.v1.Agent", Method: "StartContainer", Payload: []byte{0xff, 0xff}})
			return data
		}(), codes.Unknown},
	} {
		id := uint32(2*len(tc.name) + 1) // client stream ids are odd
		sent := sendFrame(hostEnd, id, tc.payload)
		gotID, resp := readResponse(t, hostEnd)
		if err := <-sent; err != nil {
			t.Fatalf("%s: writing: %v", tc.name, err)
		}
		if gotID != id || resp.GetStatus().GetCode() == int32(codes.OK) {
			t.Errorf("%s: response to stream %d with status %v", tc.name, gotID, resp.GetStatus())
			continue
		}
		if tc.want != codes.Unknown && codes.Code(resp.GetStatus().GetCode()) != tc.want {
			t.Errorf("%s: status %v, want %v", tc.name, resp.GetStatus(), tc.want)
		}
	}
	sent := sendFrame(hostEnd, 101, request(t, "Ping", &agentapi.PingRequest{}))
	id, resp := readResponse(t, hostEnd)
	if err := <-sent; err != nil {
		t.Fatalf("writing Ping: %v", err)
	}
	if id != 101 || resp.GetStatus().GetCode() != int32(codes.OK) {
		t.Fatalf("Ping after bad messages: stream %d, status %v", id, resp.GetStatus())
	}
	var ping agentapi.PingResponse
	if err := proto.Unmarshal(resp.GetPayload(), &ping); err != nil || ping.GetKernelRelease() == "" {
		t.Fatalf("Ping response %v: %v", &ping, err)
	}
}
