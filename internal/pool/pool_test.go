package pool

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/husk-runtime/husk/internal/state"
)

func readySlot(t *testing.T, p Pool, fingerprint string) *Slot {
	t.Helper()
	slot, err := p.NewSlot()
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteInfo(slot.Dir, Info{Fingerprint: fingerprint, Daemon: state.Self(), Ready: true}); err != nil {
		t.Fatal(err)
	}
	return slot
}

func TestClaimTakesOnlyReadyMatchingLiveSlots(t *testing.T) {
	root := t.TempDir()
	p := Of(root)
	if _, err := p.Claim("f1", filepath.Join(root, "c0")); !errors.Is(err, ErrEmpty) {
		t.Fatalf("claim from a pool never made: %v, want ErrEmpty", err)
	}
	other := readySlot(t, p, "f2")
	booting, err := p.NewSlot()
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteInfo(booting.Dir, Info{Fingerprint: "f1", Daemon: state.Self()}); err != nil {
		t.Fatal(err)
	}
	dead := readySlot(t, p, "f1")
	if err := WriteInfo(dead.Dir, Info{Fingerprint: "f1", Daemon: state.Process{PID: 1 << 22, StartTime: 1}, Ready: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Claim("f1", filepath.Join(root, "c1")); !errors.Is(err, ErrEmpty) {
		t.Fatalf("claim with only a foreign, a booting and a dead slot: %v, want ErrEmpty", err)
	}

	good := readySlot(t, p, "f1")
	if err := os.WriteFile(filepath.Join(good.Dir, "console.log"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(root, "c1")
	info, err := p.Claim("f1", target)
	if err != nil || info.Fingerprint != "f1" {
		t.Fatalf("claim: %+v, %v", info, err)
	}
	if _, err := os.Stat(filepath.Join(target, "console.log")); err != nil {
		t.Errorf("the claimed slot's files did not move to the container's directory: %v", err)
	}
	if _, err := os.Stat(good.Dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the claimed slot is still in the pool: %v", err)
	}
	if err := RemoveInfo(target); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(other.Dir); err != nil {
		t.Errorf("a foreign slot went: %v", err)
	}
}

func TestClaimNeverReplacesAContainer(t *testing.T) {
	root := t.TempDir()
	p := Of(root)
	slot := readySlot(t, p, "f")
	target := filepath.Join(root, "taken")
	if err := os.Mkdir(target, 0o711); err != nil {
		t.Fatal(err)
	}
	// An empty directory too: a plain rename would replace it.
	if _, err := p.Claim("f", target); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("claim onto an existing container directory: %v, want fs.ErrExist", err)
	}
	if _, err := os.Stat(slot.Dir); err != nil {
		t.Errorf("the slot left the pool on a failed claim: %v", err)
	}
}

func TestConcurrentClaimsTakeEachSlotOnce(t *testing.T) {
	root := t.TempDir()
	p := Of(root)
	const slots, claimers = 3, 8
	for i := 0; i < slots; i++ {
		readySlot(t, p, "f")
	}
	var wg sync.WaitGroup
	results := make([]error, claimers)
	for i := 0; i < claimers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, results[i] = p.Claim("f", filepath.Join(root, "c"+string(rune('a'+i))))
		}(i)
	}
	wg.Wait()
	claimed := 0
	for i, err := range results {
		switch {
		case err == nil:
			claimed++
		case !errors.Is(err, ErrEmpty):
			t.Errorf("claimer %d: %v", i, err)
		}
	}
	if claimed != slots {
		t.Errorf("%d claims succeeded for %d slots", claimed, slots)
	}
}

func TestTakeRemovesASlotFromClaims(t *testing.T) {
	root := t.TempDir()
	p := Of(root)
	slot := readySlot(t, p, "f")
	dir, err := p.Take(slot)
	if err != nil || dir == "" {
		t.Fatalf("take: %q, %v", dir, err)
	}
	if _, err := p.Claim("f", filepath.Join(root, "c")); !errors.Is(err, ErrEmpty) {
		t.Errorf("claim of a slot being ended: %v, want ErrEmpty", err)
	}
	slots, err := p.Slots()
	if err != nil || len(slots) != 1 || !slots[0].Ending || slots[0].Info == nil {
		t.Fatalf("slots: %+v, %v; want the one being ended", slots, err)
	}
	// Taking it again (a drain after an interrupted one) gives the same.
	if again, err := p.Take(slots[0]); err != nil || again != dir {
		t.Errorf("second take: %q, %v; want %q", again, err, dir)
	}
	// A slot claimed meanwhile is not taken.
	other := readySlot(t, p, "f")
	if _, err := p.Claim("f", filepath.Join(root, "c")); err != nil {
		t.Fatal(err)
	}
	if dir, err := p.Take(other); err != nil || dir != "" {
		t.Errorf("take of a claimed slot: %q, %v; want nothing", dir, err)
	}
}

func TestSlotsIgnoresOtherEntries(t *testing.T) {
	root := t.TempDir()
	p := Of(root)
	readySlot(t, p, "f")
	for _, name := range []string{"stray", ".hidden"} {
		if err := os.Mkdir(filepath.Join(p.Dir, name), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(p.Dir, "slot-file"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	slots, err := p.Slots()
	if err != nil || len(slots) != 1 {
		t.Fatalf("slots: %+v, %v; want the one slot", slots, err)
	}
}

func TestRecordSpawnNeverReplacesTheDaemonsOwn(t *testing.T) {
	p := Of(t.TempDir())
	slot := readySlot(t, p, "f")
	if err := RecordSpawn(slot.Dir, Info{Fingerprint: "f", Daemon: state.Self()}); err != nil {
		t.Fatal(err)
	}
	info, err := ReadInfo(slot.Dir)
	if err != nil || !info.Ready {
		t.Errorf("after RecordSpawn on a ready slot: %+v, %v; want it still ready", info, err)
	}
	fresh, err := p.NewSlot()
	if err != nil {
		t.Fatal(err)
	}
	if err := RecordSpawn(fresh.Dir, Info{Fingerprint: "f", Daemon: state.Self()}); err != nil {
		t.Fatal(err)
	}
	if info, err := ReadInfo(fresh.Dir); err != nil || info.Daemon.PID != os.Getpid() || info.Ready {
		t.Errorf("a new slot's recorded spawn: %+v, %v", info, err)
	}
}
