// Package control is the local API of the per-sandbox daemon: one JSON
// request and one JSON reply per connection on a SOCK_SEQPACKET unix socket,
// so that a request can carry file descriptors (a caller's stdio) alongside.
// A wait request's reply comes when the process has exited.
package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// SocketName is the daemon's socket in the container's state directory.
const SocketName = "control.sock"

// Ops the daemon serves.
const (
	OpCreate   = "create"
	OpStart    = "start"
	OpWait     = "wait"
	OpKill     = "kill"
	OpResize   = "resize"
	OpShutdown = "shutdown"
	OpExec     = "exec"
	OpPs       = "ps"
	OpPause    = "pause"
	OpResume   = "resume"
	OpUpdate   = "update"
	OpStats    = "stats"
	// OpDebugConsole opens a shell in the guest on the passed terminal
	// input and output; the reply comes when the shell has exited.
	OpDebugConsole = "debug-console"
	// OpAdopt makes a pooled sandbox Container's: the caller has renamed
	// the pool slot's directory to that container's state directory.
	OpAdopt = "adopt"
)

// maxMessage bounds one request or reply.
const maxMessage = 1 << 20

// maxFiles bounds the descriptors one request may carry.
const maxFiles = 8

// Request is one call. Which fields matter depends on Op.
type Request struct {
	Op        string `json:"op"`
	Container string `json:"container,omitempty"`
	// ExecID names an exec'd process (exec, wait, kill, resize); "" is the
	// container's init process.
	ExecID string `json:"exec_id,omitempty"`
	// exec: the OCI process as JSON
	Process json.RawMessage `json:"process,omitempty"`
	// update: OCI linux.resources as JSON
	Resources json.RawMessage `json:"resources,omitempty"`
	// create
	Bundle   string `json:"bundle,omitempty"`
	Stdin    bool   `json:"stdin,omitempty"`
	Stdout   bool   `json:"stdout,omitempty"`
	Stderr   bool   `json:"stderr,omitempty"`
	Terminal bool   `json:"terminal,omitempty"`
	// resize and create with a terminal
	Rows uint16 `json:"rows,omitempty"`
	Cols uint16 `json:"cols,omitempty"`
	// kill
	Signal int  `json:"signal,omitempty"`
	All    bool `json:"all,omitempty"`
	// shutdown
	Force bool `json:"force,omitempty"`
	// wait: the caller stands in for the process, so its going away (killed)
	// must end the process too, as the caller's death reads as the
	// process's to whoever waits on the caller.
	StandIn bool `json:"stand_in,omitempty"`
}

// Error codes a reply may carry, for callers that must tell errors apart.
const (
	CodeNotFound   = "not_found"
	CodeNotRunning = "not_running"
	CodeInvalid    = "invalid"
	CodeInternal   = "internal"
	CodeExists     = "exists"
)

// Reply answers a Request.
type Reply struct {
	Error      string `json:"error,omitempty"`
	Code       string `json:"code,omitempty"`
	GuestPID   int    `json:"guest_pid,omitempty"`
	ExitStatus int    `json:"exit_status"`
	// ps: guest PIDs of the container's processes
	PIDs []int `json:"pids,omitempty"`
	// stats: the guest's cgroup statistics (libcontainer's cgroups.Stats)
	Stats json.RawMessage `json:"stats,omitempty"`
}

// Error is a failed call's error.
type Error struct{ Code, Message string }

func (e *Error) Error() string { return e.Message }

// IsCode reports whether err is a daemon error with the given code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// Call sends req with files to the daemon at socket and returns its reply.
// timeout 0 means wait as long as it takes (for OpWait).
func Call(socket string, req *Request, files []*os.File, timeout time.Duration) (*Reply, error) {
	conn, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: socket, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("connecting to the sandbox daemon: %w", err)
	}
	defer conn.Close()
	if timeout > 0 {
		_ = conn.SetDeadline(time.Now().Add(timeout))
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := conn.WriteMsgUnix(body, oob, nil); err != nil {
		return nil, fmt.Errorf("sending %s to the sandbox daemon: %w", req.Op, err)
	}
	buf := make([]byte, maxMessage)
	n, err := conn.Read(buf)
	if err != nil {
		return nil, fmt.Errorf("waiting for the sandbox daemon's reply to %s: %w", req.Op, err)
	}
	if n == 0 {
		return nil, fmt.Errorf("the sandbox daemon closed the connection during %s", req.Op)
	}
	var reply Reply
	if err := json.Unmarshal(buf[:n], &reply); err != nil {
		return nil, fmt.Errorf("decoding the sandbox daemon's reply: %w", err)
	}
	if reply.Error != "" {
		return &reply, &Error{Code: reply.Code, Message: reply.Error}
	}
	return &reply, nil
}

// Handler serves one request; files are the descriptors it carried, which
// the handler owns; gone is closed if the caller hangs up before the reply.
// A returned *Error keeps its code.
type Handler func(req *Request, files []*os.File, gone <-chan struct{}) (*Reply, error)

// Serve accepts connections on l until it is closed, each request in its own
// goroutine.
func Serve(l *net.UnixListener, handle Handler) error {
	for {
		conn, err := l.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		go serveConn(conn, handle)
	}
}

// Listen creates the daemon's socket.
func Listen(path string) (*net.UnixListener, error) {
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	return l, nil
}

func serveConn(conn *net.UnixConn, handle Handler) {
	defer conn.Close()
	buf := make([]byte, maxMessage)
	oob := make([]byte, unix.CmsgSpace(maxFiles*4))
	n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return
	}
	files, err := parseFiles(oob[:oobn])
	var reply *Reply
	var req Request
	switch {
	case err != nil:
		reply = errorReply(&Error{Code: CodeInvalid, Message: err.Error()})
	case json.Unmarshal(buf[:n], &req) != nil:
		closeAll(files)
		reply = errorReply(&Error{Code: CodeInvalid, Message: "malformed request"})
	default:
		gone := make(chan struct{})
		go func() {
			// The caller sends nothing after its request: a read that
			// returns means it hung up (or the reply was sent and the
			// connection closed, when nobody is listening any more).
			_, _ = conn.Read(make([]byte, 1))
			close(gone)
		}()
		r, err := handle(&req, files, gone)
		if err != nil {
			reply = errorReply(err)
		} else {
			reply = r
		}
	}
	body, _ := json.Marshal(reply)
	_, _ = conn.Write(body)
}

func errorReply(err error) *Reply {
	var e *Error
	if errors.As(err, &e) {
		return &Reply{Error: e.Message, Code: e.Code}
	}
	return &Reply{Error: err.Error(), Code: CodeInternal}
}

func parseFiles(oob []byte) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("bad control message: %w", err)
	}
	var files []*os.File
	for i := range msgs {
		fds, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			continue
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), fmt.Sprintf("fd%d", fd)))
		}
	}
	return files, nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
