package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

const greeting = `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}`

// fakeQEMU is the QEMU end of a net.Pipe, driven by a test's script.
type fakeQEMU struct {
	t    *testing.T
	conn net.Conn
	dec  *json.Decoder
}

type receivedRequest struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        json.RawMessage `json:"id"`
}

// send writes one line as QEMU does; errors are reported, not fatal, because
// it runs on the script's goroutine.
func (f *fakeQEMU) send(line string) {
	if _, err := f.conn.Write([]byte(line + "\r\n")); err != nil {
		f.t.Errorf("fake qemu: writing %s: %v", line, err)
	}
}

// expect reads one request and checks its command.
func (f *fakeQEMU) expect(command string) receivedRequest {
	var req receivedRequest
	if err := f.dec.Decode(&req); err != nil {
		f.t.Errorf("fake qemu: reading request for %s: %v", command, err)
		return req
	}
	if req.Execute != command {
		f.t.Errorf("fake qemu: got command %q, want %q", req.Execute, command)
	}
	return req
}

// reply answers req with a return value, echoing its id as QEMU does.
func (f *fakeQEMU) reply(req receivedRequest, value string) {
	f.send(fmt.Sprintf(`{"return": %s, "id": %s}`, value, req.ID))
}

// handshake plays QEMU's side of NewQMP.
func (f *fakeQEMU) handshake() {
	f.send(greeting)
	f.reply(f.expect("qmp_capabilities"), "{}")
}

// startFake runs script as QEMU on one end of a pipe and returns the other
// end. The test fails if the script has not finished when the test ends.
func startFake(t *testing.T, script func(f *fakeQEMU)) net.Conn {
	t.Helper()
	client, server := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer server.Close()
		script(&fakeQEMU{t: t, conn: server, dec: json.NewDecoder(server)})
	}()
	t.Cleanup(func() {
		client.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("fake qemu script did not finish")
		}
	})
	return client
}

func newTestQMP(t *testing.T, script func(f *fakeQEMU)) *QMP {
	t.Helper()
	conn := startFake(t, func(f *fakeQEMU) {
		f.handshake()
		script(f)
	})
	q, err := NewQMP(conn)
	if err != nil {
		t.Fatalf("NewQMP: %v", err)
	}
	return q
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestQMPExecute(t *testing.T) {
	q := newTestQMP(t, func(f *fakeQEMU) {
		req := f.expect("query-status")
		if req.Arguments != nil {
			f.t.Errorf("query-status sent arguments %s, want none", req.Arguments)
		}
		f.reply(req, `{"status": "running", "running": true}`)

		req = f.expect("qom-get")
		if got, want := string(req.Arguments), `{"path":"/machine","property":"kernel"}`; got != want {
			f.t.Errorf("qom-get arguments = %s, want %s", got, want)
		}
		f.reply(req, `"/vmlinux"`)
	})
	ctx := testContext(t)

	result, err := q.Execute(ctx, "query-status", nil)
	if err != nil {
		t.Fatalf("query-status: %v", err)
	}
	var status struct{ Status string }
	if err := json.Unmarshal(result, &status); err != nil || status.Status != "running" {
		t.Errorf("query-status returned %s (%v), want status running", result, err)
	}

	args := map[string]string{"path": "/machine", "property": "kernel"}
	result, err = q.Execute(ctx, "qom-get", args)
	if err != nil {
		t.Fatalf("qom-get: %v", err)
	}
	if string(result) != `"/vmlinux"` {
		t.Errorf("qom-get returned %s, want \"/vmlinux\"", result)
	}
}

func TestQMPSkipsEventsAndStaleReplies(t *testing.T) {
	q := newTestQMP(t, func(f *fakeQEMU) {
		req := f.expect("stop")
		// QEMU sends the event a command causes before the command's reply.
		f.send(`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}`)
		f.send(`{"return": {"stale": true}, "id": 999}`)
		f.reply(req, `{}`)
	})
	result, err := q.Execute(testContext(t), "stop", nil)
	if err != nil {
		t.Fatalf("stop: %v", err)
	}
	if string(result) != "{}" {
		t.Errorf("stop returned %s, want {}", result)
	}
}

func TestQMPErrorReply(t *testing.T) {
	q := newTestQMP(t, func(f *fakeQEMU) {
		req := f.expect("nope")
		f.send(fmt.Sprintf(`{"id": %s, "error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}`, req.ID))
		// QEMU omits the id only when it could not parse the request; the
		// error is still the reply to it.
		f.expect("query-status")
		f.send(`{"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}`)
		f.reply(f.expect("query-status"), `{"status": "running"}`)
	})
	ctx := testContext(t)

	_, err := q.Execute(ctx, "nope", nil)
	var qmpErr *QMPError
	if !errors.As(err, &qmpErr) {
		t.Fatalf("nope: error %v is not a *QMPError", err)
	}
	if qmpErr.Class != "CommandNotFound" || qmpErr.Desc != "The command nope has not been found" {
		t.Errorf("nope: got %+v", qmpErr)
	}

	if _, err := q.Execute(ctx, "query-status", nil); !errors.As(err, &qmpErr) || qmpErr.Class != "GenericError" {
		t.Errorf("reply without id: got %v, want a GenericError *QMPError", err)
	}

	// An error reply leaves the connection usable.
	if _, err := q.Execute(ctx, "query-status", nil); err != nil {
		t.Errorf("query-status after error replies: %v", err)
	}
}

func TestQMPConnectionClosed(t *testing.T) {
	q := newTestQMP(t, func(f *fakeQEMU) {
		f.expect("query-status")
	})
	ctx := testContext(t)
	if _, err := q.Execute(ctx, "query-status", nil); err == nil {
		t.Fatal("query-status on a closed connection succeeded")
	}
	_, err := q.Execute(ctx, "query-status", nil)
	if err == nil || !strings.Contains(err.Error(), "unusable") {
		t.Errorf("second command after close: error %v, want the connection reported unusable", err)
	}
}

func TestQMPDeadlineAndCancel(t *testing.T) {
	release := make(chan struct{})
	q := newTestQMP(t, func(f *fakeQEMU) {
		// Read the request and never answer it.
		f.expect("query-status")
		<-release
	})
	defer close(release)

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := q.Execute(ctx, "query-status", nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Execute past its deadline: error %v, want context.DeadlineExceeded", err)
	}
	// The reply may still arrive, so the connection must not be reused.
	if _, err := q.Execute(testContext(t), "query-status", nil); err == nil {
		t.Error("Execute after a timed-out command succeeded")
	}
}

func TestQMPCancelWithoutDeadline(t *testing.T) {
	release := make(chan struct{})
	q := newTestQMP(t, func(f *fakeQEMU) {
		f.expect("query-status")
		<-release
	})
	defer close(release)

	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	_, err := q.Execute(ctx, "query-status", nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Execute cancelled: error %v, want context.Canceled", err)
	}
}

func TestQMPAlreadyCancelled(t *testing.T) {
	q := newTestQMP(t, func(f *fakeQEMU) {})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := q.Execute(ctx, "query-status", nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Execute with a cancelled context: error %v, want context.Canceled", err)
	}
}

func TestQMPQuit(t *testing.T) {
	tests := []struct {
		name   string
		script func(f *fakeQEMU)
	}{
		{name: "reply then close", script: func(f *fakeQEMU) {
			req := f.expect("quit")
			f.send(`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}}`)
			f.reply(req, "{}")
		}},
		{name: "close before reply", script: func(f *fakeQEMU) {
			f.expect("quit")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := newTestQMP(t, tt.script)
			if err := q.Quit(testContext(t)); err != nil {
				t.Errorf("Quit: %v", err)
			}
		})
	}
}

func TestQMPQuitReportsErrorReply(t *testing.T) {
	q := newTestQMP(t, func(f *fakeQEMU) {
		req := f.expect("quit")
		f.send(fmt.Sprintf(`{"id": %s, "error": {"class": "GenericError", "desc": "no"}}`, req.ID))
	})
	var qmpErr *QMPError
	if err := q.Quit(testContext(t)); !errors.As(err, &qmpErr) {
		t.Errorf("Quit with an error reply: got %v, want a *QMPError", err)
	}
}

func TestNewQMPFailures(t *testing.T) {
	tests := []struct {
		name    string
		script  func(f *fakeQEMU)
		wantErr string
	}{
		{name: "closed before greeting", script: func(f *fakeQEMU) {}, wantErr: "greeting"},
		{name: "not a greeting", script: func(f *fakeQEMU) {
			f.send(`{"return": {}}`)
		}, wantErr: "not a greeting"},
		{name: "not json", script: func(f *fakeQEMU) {
			f.send(`QEMU 7.2.0 monitor - type 'help' for more information`)
		}, wantErr: "greeting"},
		{name: "capabilities refused", script: func(f *fakeQEMU) {
			f.send(greeting)
			req := f.expect("qmp_capabilities")
			f.send(fmt.Sprintf(`{"id": %s, "error": {"class": "CommandNotFound", "desc": "Capabilities negotiation is already complete"}}`, req.ID))
		}, wantErr: "Capabilities negotiation"},
		{name: "closed during negotiation", script: func(f *fakeQEMU) {
			f.send(greeting)
			f.expect("qmp_capabilities")
		}, wantErr: "negotiating"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := startFake(t, tt.script)
			_, err := NewQMP(conn)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("NewQMP: error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}
