package control

import (
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestCallPassesFilesAndErrors(t *testing.T) {
	sock := filepath.Join(t.TempDir(), SocketName)
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go Serve(l, func(req *Request, files []*os.File, gone <-chan struct{}) (*Reply, error) {
		switch req.Op {
		case OpCreate:
			if len(files) != 1 {
				return nil, &Error{Code: CodeInvalid, Message: "want one file"}
			}
			_, _ = files[0].WriteString("from daemon")
			files[0].Close()
			return &Reply{GuestPID: 7}, nil
		case OpKill:
			return nil, &Error{Code: CodeNotRunning, Message: "container not running"}
		}
		return nil, io.ErrUnexpectedEOF
	})

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	reply, err := Call(sock, &Request{Op: OpCreate, Container: "c"}, []*os.File{w}, 5*time.Second)
	w.Close()
	if err != nil || reply.GuestPID != 7 {
		t.Fatalf("create: %+v, %v", reply, err)
	}
	if got, _ := io.ReadAll(r); string(got) != "from daemon" {
		t.Fatalf("passed pipe carried %q", got)
	}
	_, err = Call(sock, &Request{Op: OpKill}, nil, 5*time.Second)
	if !IsCode(err, CodeNotRunning) || err.Error() != "container not running" {
		t.Fatalf("kill: %v", err)
	}
	_, err = Call(sock, &Request{Op: "other"}, nil, 5*time.Second)
	if !IsCode(err, CodeInternal) {
		t.Fatalf("other: %v", err)
	}
}

func TestCallWithoutDaemon(t *testing.T) {
	_, err := Call(filepath.Join(t.TempDir(), "absent.sock"), &Request{Op: OpStart}, nil, time.Second)
	if err == nil {
		t.Fatal("no error without a daemon")
	}
}
