package shim

import (
	"context"
	"testing"

	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/pkg/shutdown"
)

// countingShutdown is a shutdown.Service that counts Shutdown calls.
type countingShutdown struct {
	shutdown.Service
	calls int
}

func (c *countingShutdown) Shutdown() { c.calls++ }

// containerd asks for a Shutdown after every task's Delete. A pod whose VM
// died has its tasks deleted at once: the Shutdown after one task's Delete
// must not end the shim while another task's Delete is under way, whose
// answer would then be lost ("ttrpc: closed").
func TestShutdownWaitsForDeletesUnderWay(t *testing.T) {
	sd := &countingShutdown{}
	s := &service{shutdown: sd, tasks: map[string]*taskRecord{}, creating: map[string]bool{}}
	s.deleting = 1
	if _, err := s.Shutdown(context.Background(), &taskapi.ShutdownRequest{}); err != nil {
		t.Fatal(err)
	}
	if sd.calls != 0 {
		t.Fatal("the shim shut down while a Delete was under way")
	}
	s.deleting = 0
	s.creating["c2"] = true
	if _, err := s.Shutdown(context.Background(), &taskapi.ShutdownRequest{}); err != nil {
		t.Fatal(err)
	}
	if sd.calls != 0 {
		t.Fatal("the shim shut down while a Create was under way")
	}
	delete(s.creating, "c2")
	if _, err := s.Shutdown(context.Background(), &taskapi.ShutdownRequest{}); err != nil {
		t.Fatal(err)
	}
	if sd.calls != 1 {
		t.Fatalf("an idle shim's Shutdown: %d shutdowns, want 1", sd.calls)
	}
}
