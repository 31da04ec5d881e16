package agent

import (
	"bytes"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// recorder is a stream that keeps each write apart.
type recorder struct {
	mu     sync.Mutex
	writes [][]byte
	first  chan struct{}
	once   sync.Once
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	r.writes = append(r.writes, append([]byte(nil), p...))
	r.mu.Unlock()
	r.once.Do(func() { close(r.first) })
	return len(p), nil
}

// TestCopyOutputCoalescesSmallWrites: 4 KiB pieces written back to back
// reach the stream in far fewer frames, intact and in order.
func TestCopyOutputCoalescesSmallWrites(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{first: make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- copyOutput(rec, r, nil) }()
	var want bytes.Buffer
	for i := 0; i < 256; i++ {
		piece := bytes.Repeat([]byte{byte(i)}, 4096)
		want.Write(piece)
		if _, err := w.Write(piece); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	got := bytes.Join(rec.writes, nil)
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("copied %d bytes, not the %d written in order", len(got), want.Len())
	}
	// 1 MiB fits 8 frames of copyOutput's 128 KiB; a copy without the
	// top-up makes about a frame per read, 70 to 120 of them here.
	if len(rec.writes) > 16 {
		t.Errorf("256 pieces of 4 KiB became %d frames", len(rec.writes))
	}
}

// TestCopyOutputHoldsBackBriefly: a lone small write reaches the stream
// promptly, while the writer keeps the pipe open.
func TestCopyOutputHoldsBackBriefly(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	rec := &recorder{first: make(chan struct{})}
	go func() { _ = copyOutput(rec, r, nil) }()
	if _, err := w.Write([]byte("prompt$ ")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-rec.first:
	case <-time.After(time.Second):
		t.Fatal("a small write was held back for a second")
	}
	if got := string(rec.writes[0]); got != "prompt$ " {
		t.Errorf("first frame %q", got)
	}
}

// drainedOutput is an output pipe copied to an unbuffered stream (the copy
// waits for every read of host); the test holds the write end w, as the
// process would, and closes it itself.
func drainedOutput(t *testing.T) (host net.Conn, pp *pipes, w *os.File) {
	t.Helper()
	host, agentSide := net.Pipe()
	t.Cleanup(func() { host.Close() })
	pp = &pipes{}
	w, err := pp.output(agentSide)
	if err != nil {
		t.Fatal(err)
	}
	pp.childFiles = nil
	return host, pp, w
}

// A process's exit waits for its output only so long: a pipe that a
// process left behind still holds is cut, and the host's stream ends.
func TestDrainCutsOutputHeldOpen(t *testing.T) {
	host, pp, w := drainedOutput(t)
	defer w.Close() // held open, as by a process left behind
	hostRead := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(host)
		hostRead <- b
	}()
	if _, err := w.Write([]byte("before the exit\n")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	pp.drain(200 * time.Millisecond)
	if waited := time.Since(start); waited < 200*time.Millisecond {
		t.Errorf("drain returned after %s, before its bound, with the pipe open", waited)
	}
	select {
	case b := <-hostRead:
		if string(b) != "before the exit\n" {
			t.Errorf("the host read %q", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the host's stream did not end once the output was cut")
	}
	if _, err := w.Write([]byte("after")); err == nil {
		t.Error("a write into the cut pipe succeeded")
	}
}

// Output whose writers are gone drains fully, without waiting for the bound.
func TestDrainReturnsOnceOutputEnds(t *testing.T) {
	host, pp, w := drainedOutput(t)
	go func() { _, _ = io.Copy(io.Discard, host) }()
	_, _ = w.Write([]byte("all of it"))
	w.Close()
	start := time.Now()
	pp.drain(10 * time.Second)
	if waited := time.Since(start); waited > 5*time.Second {
		t.Errorf("drain waited %s for output that had ended", waited)
	}
}

// Output the host is slow to take is never cut, even past the bound and
// with the pipe still held open: it all arrives, then the stream ends.
func TestDrainKeepsOutputTheHostIsSlowToTake(t *testing.T) {
	host, pp, w := drainedOutput(t)
	defer w.Close() // held open, as by a process left behind
	out := bytes.Repeat([]byte("x"), 60<<10)
	if _, err := w.Write(out); err != nil {
		t.Fatal(err)
	}
	drained := make(chan struct{})
	go func() {
		pp.drain(100 * time.Millisecond)
		close(drained)
	}()
	time.Sleep(500 * time.Millisecond) // the host reads late
	got, _ := io.ReadAll(host)
	if len(got) != len(out) {
		t.Errorf("the host read %d bytes, want %d", len(got), len(out))
	}
	select {
	case <-drained:
	case <-time.After(5 * time.Second):
		t.Fatal("drain did not return once the output was taken")
	}
}
