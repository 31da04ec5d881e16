package agent

import (
	"fmt"
	"net"
	"sync"
	"time"

	agentapi "github.com/husk-runtime/husk/api/agent/v1"
)

// streamKey names one stdio stream of one process.
type streamKey struct {
	container, exec string
	kind            agentapi.StreamHeader_Kind
}

// streamTable is where host-opened stdio streams wait for the request that
// uses them: the host opens them before it calls CreateContainer, but they
// arrive on their own yamux streams, so either may come first.
type streamTable struct {
	mu      sync.Mutex
	arrived map[streamKey]net.Conn
	wanted  map[streamKey]chan net.Conn
}

func newStreamTable() *streamTable {
	return &streamTable{arrived: map[streamKey]net.Conn{}, wanted: map[streamKey]chan net.Conn{}}
}

func (t *streamTable) put(k streamKey, c net.Conn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if ch, ok := t.wanted[k]; ok {
		delete(t.wanted, k)
		ch <- c
		return
	}
	if old, ok := t.arrived[k]; ok {
		old.Close()
	}
	t.arrived[k] = c
}

// take returns the stream for k, waiting up to timeout for it to arrive.
func (t *streamTable) take(k streamKey, timeout time.Duration) (net.Conn, error) {
	t.mu.Lock()
	if c, ok := t.arrived[k]; ok {
		delete(t.arrived, k)
		t.mu.Unlock()
		return c, nil
	}
	ch := make(chan net.Conn, 1)
	t.wanted[k] = ch
	t.mu.Unlock()

	select {
	case c := <-ch:
		return c, nil
	case <-time.After(timeout):
		t.mu.Lock()
		delete(t.wanted, k)
		t.mu.Unlock()
		// A stream that arrived while giving up is taken after all.
		select {
		case c := <-ch:
			return c, nil
		default:
		}
		return nil, fmt.Errorf("%s stream of %s/%s did not arrive within %s", k.kind, k.container, k.exec, timeout)
	}
}

// drop closes every stream that arrived for a process whose request failed,
// so that the host's copies of them end.
func (t *streamTable) drop(container, exec string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, c := range t.arrived {
		if k.container == container && k.exec == exec {
			c.Close()
			delete(t.arrived, k)
		}
	}
}
