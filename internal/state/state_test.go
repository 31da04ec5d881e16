package state

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

func TestCreateSaveLoad(t *testing.T) {
	s := Store{Root: filepath.Join(t.TempDir(), "root")}
	st := &State{ID: "c1", Bundle: "/b", Status: Created, Created: time.Unix(1, 0).UTC(), Daemon: Self()}
	if err := s.Create(st); err != nil {
		t.Fatal(err)
	}
	if err := s.Create(&State{ID: "c1"}); !errors.Is(err, ErrExist) {
		t.Fatalf("second create: %v", err)
	}
	got, err := s.Load("c1")
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != Created || got.Bundle != "/b" || got.Version != Version {
		t.Fatalf("loaded %+v", got)
	}
	if err := s.Update("c1", func(st *State) error { st.Status = Running; return nil }); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Load("c1"); got.Status != Running {
		t.Fatalf("status after update = %s", got.Status)
	}
	if _, err := s.Load("absent"); !errors.Is(err, ErrNotExist) {
		t.Fatalf("absent: %v", err)
	}
	list, err := s.List()
	if err != nil || len(list) != 1 || list[0].ID != "c1" {
		t.Fatalf("list = %v, %v", list, err)
	}
	// No temporary files are left beside state.json.
	entries, _ := os.ReadDir(s.Dir("c1"))
	if len(entries) != 1 {
		t.Fatalf("state dir holds %d entries", len(entries))
	}
}

func TestDeadDaemonReadsAsStopped(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Skipf("cannot run true: %v", err)
	}
	s := Store{Root: t.TempDir()}
	dead := Process{PID: cmd.Process.Pid, StartTime: 1}
	if err := s.Create(&State{ID: "c", Status: Running, Daemon: dead}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load("c")
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != Stopped {
		t.Fatalf("status = %s, want stopped", got.Status)
	}
}

// TestDeadStandInReadsAsStopped: a live daemon that could not record its
// container's end (a full disk) does not keep the container running once
// its stand-in has gone; a live stand-in keeps the recorded status.
func TestDeadStandInReadsAsStopped(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Skipf("cannot run true: %v", err)
	}
	s := Store{Root: t.TempDir()}
	dead := Process{PID: cmd.Process.Pid, StartTime: 1}
	for id, standIn := range map[string]Process{"gone": dead, "alive": Self(), "none-yet": {}} {
		if err := s.Create(&State{ID: id, Status: Running, Daemon: Self(), StandIn: standIn}); err != nil {
			t.Fatal(err)
		}
	}
	for id, want := range map[string]Status{"gone": Stopped, "alive": Running, "none-yet": Running} {
		got, err := s.Load(id)
		if err != nil {
			t.Fatal(err)
		}
		if got.Status != want {
			t.Errorf("%s: status = %s, want %s", id, got.Status, want)
		}
	}
}

func TestProcessIdentity(t *testing.T) {
	self := Self()
	if !self.Alive() || self.StartTime == 0 {
		t.Fatalf("self %+v not alive", self)
	}
	reused := Process{PID: self.PID, StartTime: self.StartTime + 1}
	if reused.Alive() {
		t.Fatal("a different start time must read as a different process")
	}
}

func TestVersionMismatchIsAnError(t *testing.T) {
	s := Store{Root: t.TempDir()}
	if err := os.Mkdir(s.Dir("c"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.Dir("c"), "state.json"), []byte(`{"version":99,"id":"c"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load("c"); err == nil {
		t.Fatal("no error for version 99")
	}
}
