// Package state keeps each container's state on disk under the state root
// (--root, /run/husk by default): one directory per container holding
// state.json, written atomically under a lock, with a version field. On load
// the processes it names are checked alive, so a crashed sandbox reads as
// stopped rather than running.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Version is the format of state.json this build writes and reads.
const Version = 1

// Status is a container's lifecycle state, as the OCI runtime spec names them.
type Status string

const (
	Creating Status = "creating"
	Created  Status = "created"
	Running  Status = "running"
	Paused   Status = "paused"
	Stopped  Status = "stopped"
)

// ErrNotExist is returned for a container id with no state.
var ErrNotExist = errors.New("container does not exist")

// ErrExist is returned when creating a container whose id is taken.
var ErrExist = errors.New("container with given ID already exists")

// Process names a host process and its start time, which tells it apart
// from a later process that reused the PID.
type Process struct {
	PID       int    `json:"pid"`
	StartTime uint64 `json:"start_time"`
}

// State is what state.json holds.
type State struct {
	Version     int               `json:"version"`
	ID          string            `json:"id"`
	Bundle      string            `json:"bundle"`
	Rootfs      string            `json:"rootfs"`
	Created     time.Time         `json:"created"`
	Owner       string            `json:"owner"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Status      Status            `json:"status"`
	// StandIn is the host process that stands in for the container's
	// process: its PID is the container's PID for callers.
	StandIn Process `json:"stand_in"`
	Daemon  Process `json:"daemon"`
	QEMU    Process `json:"qemu"`
	// Sandbox is the container whose sandbox (daemon and VM) this one runs
	// in, having joined its network; "" for a container with its own.
	Sandbox string `json:"sandbox,omitempty"`
	// NetNSHolder holds the container's host-side network namespace for
	// its OCI hooks and its sandbox (see the command line's hooks).
	NetNSHolder Process `json:"netns_holder,omitempty"`
	// GuestPID is the container's init process inside the guest.
	GuestPID   int  `json:"guest_pid,omitempty"`
	ExitStatus *int `json:"exit_status,omitempty"`
}

// Store is a state root.
type Store struct{ Root string }

// Dir is the container's state directory.
func (s Store) Dir(id string) string { return filepath.Join(s.Root, id) }

func (s Store) file(id string) string { return filepath.Join(s.Dir(id), "state.json") }

// Create makes the container's directory; it fails with ErrExist if the id is taken.
func (s Store) Create(st *State) error {
	if err := os.MkdirAll(s.Root, 0o711); err != nil {
		return fmt.Errorf("creating state root: %w", err)
	}
	if err := os.Mkdir(s.Dir(st.ID), 0o711); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return ErrExist
		}
		return fmt.Errorf("creating state directory: %w", err)
	}
	st.Version = Version
	if err := s.Save(st); err != nil {
		os.RemoveAll(s.Dir(st.ID))
		return err
	}
	return nil
}

// Save writes state.json atomically.
func (s Store) Save(st *State) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding state: %w", err)
	}
	if err := WriteFileAtomic(s.file(st.ID), data); err != nil {
		return fmt.Errorf("writing state: %w", err)
	}
	return nil
}

// WriteFileAtomic writes a file whole or not at all: a temporary file in
// the same directory, renamed over it, so a reader never sees it half
// written.
func WriteFileAtomic(path string, data []byte) error {
	tmp, err := writeTemp(path, data)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	return os.Rename(tmp, path)
}

// WriteFileNew writes a file whole, unless it exists: a temporary file
// linked to its name, which, unlike a rename, never replaces a file.
func WriteFileNew(path string, data []byte) error {
	tmp, err := writeTemp(path, data)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, path); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return nil
}

// writeTemp writes data to a new temporary file beside path.
func writeTemp(path string, data []byte) (string, error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-*")
	if err != nil {
		return "", err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return "", err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return "", err
	}
	return tmp.Name(), nil
}

// Update loads, changes and saves the state under the container's lock.
func (s Store) Update(id string, change func(*State) error) error {
	unlock, err := s.Lock(id)
	if err != nil {
		return err
	}
	defer unlock()
	st, err := s.read(id)
	if err != nil {
		return err
	}
	if err := change(st); err != nil {
		return err
	}
	return s.Save(st)
}

// Lock takes the container's exclusive lock.
func (s Store) Lock(id string) (unlock func(), err error) {
	f, err := os.Open(s.Dir(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotExist
	} else if err != nil {
		return nil, fmt.Errorf("locking state: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking state: %w", err)
	}
	return func() { f.Close() }, nil
}

func (s Store) read(id string) (*State, error) {
	data, err := os.ReadFile(s.file(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotExist
	} else if err != nil {
		return nil, fmt.Errorf("reading state: %w", err)
	}
	var st State
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("state of %s is corrupt: %w", id, err)
	}
	if st.Version != Version {
		return nil, fmt.Errorf("state of %s has version %d, this husk reads %d", id, st.Version, Version)
	}
	return &st, nil
}

// Load reads the state and corrects its status by what is alive: without a
// live daemon the container cannot be running, and a container whose
// stand-in has gone has stopped (the stand-in exits with the container's
// process, and a killed one takes the process with it) even when its daemon
// could not record that, as with a full disk.
func (s Store) Load(id string) (*State, error) {
	st, err := s.read(id)
	if err != nil {
		return nil, err
	}
	if st.Status != Stopped && st.Status != Creating && (!st.Daemon.Alive() || st.StandIn.PID != 0 && !st.StandIn.Alive()) {
		st.Status = Stopped
	}
	return st, nil
}

// List returns every container's state, sorted by id. Directories whose state
// cannot be read (a create in progress) are skipped.
func (s Store) List() ([]*State, error) {
	entries, err := os.ReadDir(s.Root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("listing containers: %w", err)
	}
	var out []*State
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		st, err := s.Load(e.Name())
		if err != nil {
			continue
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Remove deletes the container's directory.
func (s Store) Remove(id string) error {
	if err := os.RemoveAll(s.Dir(id)); err != nil {
		return fmt.Errorf("removing state: %w", err)
	}
	return nil
}

// Self describes the calling process.
func Self() Process { return ProcessOf(os.Getpid()) }

// ProcessOf describes a live process by PID; StartTime is 0 if it is gone.
func ProcessOf(pid int) Process {
	start, _ := startTime(pid)
	return Process{PID: pid, StartTime: start}
}

// Alive reports whether the process still runs (and is the same process).
func (p Process) Alive() bool {
	if p.PID <= 0 {
		return false
	}
	// Without a start time the PID alone could name a stranger that reused it.
	if p.StartTime == 0 {
		return false
	}
	start, err := startTime(p.PID)
	if err != nil {
		return false
	}
	return start == p.StartTime
}

// startTime reads field 22 of /proc/PID/stat: the start time in clock ticks
// since boot. A zombie counts as gone.
func startTime(pid int) (uint64, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields resume after its ')'.
	rest := string(data)
	if i := strings.LastIndexByte(rest, ')'); i >= 0 {
		rest = rest[i+1:]
	}
	fields := strings.Fields(rest)
	if len(fields) < 20 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	if fields[0] == "Z" || fields[0] == "X" {
		return 0, fmt.Errorf("process %d is a zombie", pid)
	}
	return strconv.ParseUint(fields[19], 10, 64)
}
