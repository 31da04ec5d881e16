// Package pool keeps booted, empty sandboxes ready for containers to take:
// the warm pool. Each pooled sandbox is a daemon that booted its guest in a
// slot directory under the state root and waits there. A create claims one
// by renaming the slot directory to the container's state directory (one
// atomic rename, so two creates can never take the same slot) and then
// tells the daemon whose it is now.
//
// The pool lives in the state root's DirName directory, a name that no
// container id can take.
package pool

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/husk-runtime/husk/internal/state"
)

// DirName is the pool's directory in a state root: '@' is not allowed in a
// container id.
const DirName = "@pool"

// infoFile is a slot's description, written by its daemon.
const infoFile = "slot.json"

// SlotPrefix starts every slot directory's name; endingPrefix that of a
// slot taken out of the pool to be ended.
const (
	SlotPrefix   = "slot-"
	endingPrefix = "ending-"
)

// ErrEmpty is returned by Claim when no ready slot matches.
var ErrEmpty = errors.New("no pooled sandbox ready")

// Info is what a slot's daemon says about itself.
type Info struct {
	// Fingerprint identifies the configuration and guest image the slot
	// was booted with; only a create with the same one may take it.
	Fingerprint string        `json:"fingerprint"`
	Daemon      state.Process `json:"daemon"`
	QEMU        state.Process `json:"qemu,omitempty"`
	// Ready is set once the guest's agent answers.
	Ready bool `json:"ready"`
}

// Slot is one pooled sandbox, booting or ready.
type Slot struct {
	Name string
	Dir  string
	// Info is nil for a slot whose daemon has not written it yet.
	Info *Info
	// Made is when the slot directory was made.
	Made time.Time
	// Ending is set for a slot taken out of the pool to be ended.
	Ending bool
}

// Pool is the pool of one state root.
type Pool struct{ Dir string }

// Of returns the pool of the state root.
func Of(root string) Pool { return Pool{Dir: filepath.Join(root, DirName)} }

// NewSlot makes the directory a new pooled daemon boots in.
func (p Pool) NewSlot() (*Slot, error) {
	if err := os.MkdirAll(p.Dir, 0o711); err != nil {
		return nil, fmt.Errorf("creating the pool directory: %w", err)
	}
	dir, err := os.MkdirTemp(p.Dir, SlotPrefix)
	if err != nil {
		return nil, fmt.Errorf("creating a pool slot: %w", err)
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		os.Remove(dir)
		return nil, fmt.Errorf("creating a pool slot: %w", err)
	}
	return &Slot{Name: filepath.Base(dir), Dir: dir, Made: time.Now()}, nil
}

// WriteInfo records a slot's description atomically.
func WriteInfo(dir string, info Info) error {
	data, err := json.Marshal(info)
	if err != nil {
		return err
	}
	if err := state.WriteFileAtomic(filepath.Join(dir, infoFile), data); err != nil {
		return fmt.Errorf("writing the pool slot's description: %w", err)
	}
	return nil
}

// RecordSpawn writes the description of a slot whose daemon has just been
// started, unless the daemon has written its own already (a link, unlike a
// rename, never replaces it).
func RecordSpawn(dir string, info Info) error {
	data, err := json.Marshal(info)
	if err != nil {
		return err
	}
	return state.WriteFileNew(filepath.Join(dir, infoFile), data)
}

// RemoveInfo drops a claimed slot's description from what is now a
// container's state directory.
func RemoveInfo(dir string) error {
	err := os.Remove(filepath.Join(dir, infoFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// ReadInfo reads a slot's description.
func ReadInfo(dir string) (*Info, error) {
	data, err := os.ReadFile(filepath.Join(dir, infoFile))
	if err != nil {
		return nil, err
	}
	var info Info
	if err := json.Unmarshal(data, &info); err != nil {
		return nil, fmt.Errorf("pool slot %s: %w", dir, err)
	}
	return &info, nil
}

// Slots lists the pool's slots, oldest first, with those being ended.
func (p Pool) Slots() ([]*Slot, error) {
	entries, err := os.ReadDir(p.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("listing the pool: %w", err)
	}
	var slots []*Slot
	for _, e := range entries {
		ending := strings.HasPrefix(e.Name(), endingPrefix)
		if !e.IsDir() || !strings.HasPrefix(e.Name(), SlotPrefix) && !ending {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // claimed meanwhile
		}
		slot := &Slot{Name: e.Name(), Dir: filepath.Join(p.Dir, e.Name()), Made: fi.ModTime(), Ending: ending}
		slot.Info, _ = ReadInfo(slot.Dir)
		slots = append(slots, slot)
	}
	sort.Slice(slots, func(i, j int) bool { return slots[i].Made.Before(slots[j].Made) })
	return slots, nil
}

// Claim takes a ready slot booted with fingerprint whose daemon is alive
// and renames its directory to target, which must not exist. It returns
// the slot's description, ErrEmpty when no slot matches, or an error
// wrapping fs.ErrExist when target exists.
func (p Pool) Claim(fingerprint, target string) (*Info, error) {
	slots, err := p.Slots()
	if err != nil {
		return nil, err
	}
	for _, slot := range slots {
		info := slot.Info
		if slot.Ending || info == nil || !info.Ready || info.Fingerprint != fingerprint || !info.Daemon.Alive() {
			continue
		}
		err := unix.Renameat2(unix.AT_FDCWD, slot.Dir, unix.AT_FDCWD, target, unix.RENAME_NOREPLACE)
		switch {
		case err == nil:
			return info, nil
		case errors.Is(err, unix.ENOENT):
			continue // another create took it
		case errors.Is(err, unix.EEXIST):
			return nil, fmt.Errorf("%s: %w", target, fs.ErrExist)
		default:
			return nil, fmt.Errorf("claiming pool slot %s: %w", slot.Name, err)
		}
	}
	return nil, ErrEmpty
}

// Take removes a slot from the pool for ending it (draining, or a slot
// that no longer matches the configuration): its directory is renamed out
// of the slots' namespace, so no create can claim it meanwhile. It returns
// the new directory, or "" if a create claimed it first.
func (p Pool) Take(slot *Slot) (string, error) {
	if slot.Ending {
		return slot.Dir, nil
	}
	dir := filepath.Join(p.Dir, endingPrefix+strings.TrimPrefix(slot.Name, SlotPrefix))
	err := unix.Renameat2(unix.AT_FDCWD, slot.Dir, unix.AT_FDCWD, dir, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.ENOENT) {
		return "", nil
	} else if err != nil {
		return "", fmt.Errorf("taking pool slot %s: %w", slot.Name, err)
	}
	return dir, nil
}

// Lock takes the pool's lock, which serialises filling it.
func (p Pool) Lock() (unlock func(), err error) {
	if err := os.MkdirAll(p.Dir, 0o711); err != nil {
		return nil, fmt.Errorf("creating the pool directory: %w", err)
	}
	f, err := os.Open(p.Dir)
	if err != nil {
		return nil, fmt.Errorf("locking the pool: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking the pool: %w", err)
	}
	return func() { f.Close() }, nil
}
