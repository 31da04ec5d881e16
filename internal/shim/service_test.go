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

// containerd asks for a Shutdown after every task's Delete, and after a
// Create that failed. The shim ends only once it serves nothing and no
// Create or Delete is under way; a Shutdown asked for before then is kept,
// and the shim ends when the last of them does. A Shutdown that ended the
// shim during another task's Delete lost that Delete's answer ("ttrpc:
// closed"); one dropped during a Create left the shim running for good.
func TestShutdownWaitsForCreatesAndDeletesUnderWay(t *testing.T) {
	sd := &countingShutdown{}
	s := &service{shutdown: sd, tasks: map[string]*taskRecord{}, creating: map[string]bool{}}
	ctx := context.Background()
	badBundle := t.TempDir() // no config.json: the Create fails
	shutdownNow := func(want int, when string) {
		t.Helper()
		if _, err := s.Shutdown(ctx, &taskapi.ShutdownRequest{}); err != nil {
			t.Fatal(err)
		}
		if sd.calls != want {
			t.Fatalf("%s: %d shutdowns, want %d", when, sd.calls, want)
		}
	}

	// A Create under way (as containerd's deadline for it passed).
	s.creating["late"] = true
	shutdownNow(0, "during a Create")
	// Another Create fails meanwhile: the first is still under way.
	if _, err := s.Create(ctx, &taskapi.CreateTaskRequest{ID: "other", Bundle: badBundle}); err == nil {
		t.Fatal("a Create without a spec succeeded")
	}
	if sd.calls != 0 {
		t.Fatal("the shim shut down while a Create was under way")
	}
	// The first Create ends as a failure: the shim ends with it.
	delete(s.creating, "late")
	s.shutdownIfAsked()
	if sd.calls != 1 {
		t.Fatalf("after the last Create failed: %d shutdowns, want 1", sd.calls)
	}

	// A Delete under way keeps the shim until it answers.
	sd.calls, s.shutdownAsked = 0, false
	s.deleting = 1
	shutdownNow(0, "during a Delete")
	s.deleting = 0
	// A Delete of a task the shim does not know answers, and ends it.
	if _, err := s.Delete(ctx, &taskapi.DeleteRequest{ID: "gone"}); err == nil {
		t.Fatal("the Delete of an unknown task succeeded")
	}
	if sd.calls != 1 {
		t.Fatalf("after the last Delete: %d shutdowns, want 1", sd.calls)
	}

	// A task still served keeps the shim.
	sd.calls, s.shutdownAsked = 0, false
	s.tasks["live"] = &taskRecord{id: "live"}
	shutdownNow(0, "with a task")
}
