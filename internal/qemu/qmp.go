package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

// QMP is a client for QEMU's machine protocol on one connection. It sends
// one command at a time; asynchronous events that arrive while it waits for
// a reply are discarded, since nothing in husk acts on them yet.
type QMP struct {
	mu     sync.Mutex
	conn   net.Conn
	dec    *json.Decoder
	nextID uint64
	// broken is the I/O error that left the stream in an unknown state (a
	// reply may be half read); every later command fails with it.
	broken error
}

// QMPError is an error reply from QEMU to a command.
type QMPError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *QMPError) Error() string {
	return e.Class + ": " + e.Desc
}

// qmpMessage is any message QEMU sends: the greeting, a reply or an event.
type qmpMessage struct {
	Greeting json.RawMessage `json:"QMP"`
	Return   json.RawMessage `json:"return"`
	Error    *QMPError       `json:"error"`
	Event    string          `json:"event"`
	ID       *uint64         `json:"id"`
}

type qmpRequest struct {
	Execute   string `json:"execute"`
	Arguments any    `json:"arguments,omitempty"`
	ID        uint64 `json:"id"`
}

// NewQMP reads QEMU's greeting on conn, an accepted connection from QEMU's
// QMP chardev, and leaves command mode negotiated. A deadline the caller set
// on conn bounds this handshake; Execute then manages the deadline itself.
// On error the caller still owns conn and closes it.
func NewQMP(conn net.Conn) (*QMP, error) {
	q := &QMP{conn: conn, dec: json.NewDecoder(conn)}
	var greeting qmpMessage
	if err := q.dec.Decode(&greeting); err != nil {
		return nil, fmt.Errorf("reading qmp greeting: %w", err)
	}
	if greeting.Greeting == nil {
		return nil, errors.New("reading qmp greeting: first message is not a greeting")
	}
	if err := q.exchange("qmp_capabilities", nil, nil); err != nil {
		return nil, fmt.Errorf("negotiating qmp capabilities: %w", err)
	}
	return q, nil
}

// Execute runs one QMP command and returns its "return" value. An error
// reply is a *QMPError. ctx's deadline and cancellation interrupt the wait;
// after that, or any other I/O error, the QMP connection is unusable because
// the reply may still be on its way.
func (q *QMP) Execute(ctx context.Context, command string, arguments any) (json.RawMessage, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.broken != nil {
		return nil, fmt.Errorf("qmp %s: connection unusable after earlier error: %w", command, q.broken)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}

	deadline, hasDeadline := ctx.Deadline()
	if err := q.conn.SetDeadline(deadline); err != nil {
		return nil, fmt.Errorf("qmp %s: setting deadline: %w", command, err)
	}
	// Cancellation without a deadline still has to unblock a read or write;
	// a deadline in the past does that for net.Conn. Waiting for the func
	// when stop loses the race keeps it from cutting short the next command.
	cancelled := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		q.conn.SetDeadline(time.Now())
		close(cancelled)
	})
	defer func() {
		if !stop() {
			<-cancelled
		}
	}()

	var result json.RawMessage
	err := q.exchange(command, arguments, &result)
	if err == nil {
		return result, nil
	}
	if isTimeout(err) {
		// Report the context's error, which callers test for, rather than
		// the connection's; the connection's deadline can fire a moment
		// before the context's own timer.
		switch {
		case ctx.Err() != nil:
			err = ctx.Err()
		case hasDeadline:
			err = context.DeadlineExceeded
		}
	}
	return nil, fmt.Errorf("qmp %s: %w", command, err)
}

// Quit asks QEMU to exit. QEMU may close the connection before its reply
// arrives, so a closed connection counts as success: QEMU is gone either way.
func (q *QMP) Quit(ctx context.Context) error {
	_, err := q.Execute(ctx, "quit", nil)
	if err != nil && !isConnectionClosed(err) {
		return err
	}
	return nil
}

// Close closes the connection; QEMU keeps running.
func (q *QMP) Close() error {
	return q.conn.Close()
}

// exchange sends one command and waits for the reply with its id, skipping
// events. The caller holds q.mu or owns q exclusively.
func (q *QMP) exchange(command string, arguments any, result *json.RawMessage) error {
	q.nextID++
	request, err := json.Marshal(qmpRequest{Execute: command, Arguments: arguments, ID: q.nextID})
	if err != nil {
		return fmt.Errorf("encoding arguments: %w", err)
	}
	if _, err := q.conn.Write(request); err != nil {
		q.broken = err
		return err
	}
	for {
		var msg qmpMessage
		if err := q.dec.Decode(&msg); err != nil {
			q.broken = err
			return err
		}
		switch {
		case msg.Event != "":
			continue
		case msg.ID != nil && *msg.ID != q.nextID:
			// Not the reply to this command. The stream is abandoned after
			// any I/O error, so no stale reply should be waiting; this keeps
			// one from being taken for the current command's. A reply with
			// no id is still this command's: QEMU omits the id only when it
			// could not parse the request at all.
			continue
		case msg.Error != nil:
			return msg.Error
		case msg.Return != nil:
			if result != nil {
				*result = msg.Return
			}
			return nil
		default:
			return errors.New("reply has neither return nor error")
		}
	}
}

func isTimeout(err error) bool {
	var netErr net.Error
	return errors.As(err, &netErr) && netErr.Timeout()
}

// isConnectionClosed reports errors meaning the peer has gone, as QEMU does
// when it exits.
func isConnectionClosed(err error) bool {
	return errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, io.ErrClosedPipe) ||
		errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE)
}
