package agent

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/hashicorp/yamux"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentapi "github.com/husk-runtime/husk/api/agent/v1"
	"github.com/husk-runtime/husk/internal/channel"
)

// portWait bounds the wait for the agent port's device node.
const portWait = 10 * time.Second

// Run is the agent's main: prepare the guest, then serve the host until the
// channel closes or the host asks for shutdown. It returns only on error;
// the caller powers the VM off.
func Run() error {
	started := MonotonicNow()
	if err := MoveRootIfInitramfs(); err != nil {
		return err
	}
	if err := MountProc(); err != nil {
		return err
	}
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return fmt.Errorf("reading kernel command line: %w", err)
	}
	params, err := ParseCmdline(string(cmdline))
	if err != nil {
		return err
	}
	if err := MountSystem(); err != nil {
		return err
	}
	port, err := OpenPort(portWait)
	if err != nil {
		return err
	}
	svc := NewService(started, PowerOff)
	svc.debugConsole = params.DebugConsole
	svc.debug = params.Debug
	if params.Debug {
		// libcontainer's own log (each step of a container's setup, with
		// its time) goes to the console log with the agent's.
		logrus.SetLevel(logrus.DebugLevel)
		logrus.SetFormatter(&logrus.TextFormatter{FullTimestamp: true, TimestampFormat: "15:04:05.000000", DisableColors: true})
		logrus.SetOutput(os.Stderr)
	}
	server, err := newServer(svc)
	if err != nil {
		return err
	}
	// Everything above is the same in every guest booted from this image,
	// and a template is saved while the agent waits for the hello below;
	// everything after it is this sandbox's own.
	if err := channel.WriteReady(port); err != nil {
		return err
	}
	hello, err := channel.ReadHello(port)
	if err != nil {
		return err
	}
	if err := TakeHello(hello); err != nil {
		return err
	}
	if err := MountShare(params); err != nil {
		return err
	}
	session, err := channel.Guest(port)
	if err != nil {
		return err
	}

	control, err := session.Open()
	if err != nil {
		return fmt.Errorf("opening the control stream: %w", err)
	}
	svc.readyNs = MonotonicNow()
	if params.Debug {
		log.Printf("ready %.3fs after boot (agent started at %.3fs)", float64(svc.readyNs)/1e9, float64(started)/1e9)
	}
	go acceptStreams(session, svc.streams)
	err = server.Serve(context.Background(), newOneConnListener(control))
	if errors.Is(err, ttrpc.ErrServerClosed) || session.IsClosed() {
		return errors.New("the host closed the agent channel")
	}
	return fmt.Errorf("serving the agent API: %w", err)
}

// newServer serves svc's API over ttrpc.
func newServer(svc *Service) (*ttrpc.Server, error) {
	server, err := ttrpc.NewServer(ttrpc.WithUnaryServerInterceptor(recoverPanics))
	if err != nil {
		return nil, fmt.Errorf("creating ttrpc server: %w", err)
	}
	agentapi.RegisterAgentService(server, svc)
	return server, nil
}

// recoverPanics turns a panic in a request into that request's error: the
// agent is PID 1, and its death would take the whole VM down.
func recoverPanics(ctx context.Context, unmarshal ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, method ttrpc.Method) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			log.Printf("panic in %s: %v\n%s", info.FullMethod, r, debug.Stack())
			err = status.Errorf(codes.Internal, "agent: %s failed: %v", info.FullMethod, r)
		}
	}()
	return method(ctx, unmarshal)
}

// acceptStreams files every stdio stream the host opens under its header.
func acceptStreams(session *yamux.Session, table *streamTable) {
	for {
		stream, err := session.Accept()
		if err != nil {
			return
		}
		go func() {
			_ = stream.SetReadDeadline(time.Now().Add(streamWait))
			h, err := channel.ReadHeader(stream)
			_ = stream.SetReadDeadline(time.Time{})
			if err != nil {
				log.Printf("dropping stream: %v", err)
				stream.Close()
				return
			}
			table.put(streamKey{h.GetContainerId(), h.GetExecId(), h.GetKind()}, stream)
		}()
	}
}

// oneConnListener hands the ttrpc server the single control stream, then
// blocks until that stream ends.
type oneConnListener struct {
	conn   chan net.Conn
	closed chan struct{}
	once   sync.Once
	addr   net.Addr
}

func newOneConnListener(c net.Conn) *oneConnListener {
	l := &oneConnListener{conn: make(chan net.Conn, 1), closed: make(chan struct{}), addr: c.LocalAddr()}
	l.conn <- &notifyCloseConn{Conn: c, onClose: l.Close}
	return l
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conn:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *oneConnListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return l.addr }

type notifyCloseConn struct {
	net.Conn
	onClose func() error
}

func (c *notifyCloseConn) Close() error {
	err := c.Conn.Close()
	_ = c.onClose()
	return err
}
