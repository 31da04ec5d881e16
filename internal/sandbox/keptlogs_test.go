package sandbox

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/husk-runtime/husk/internal/pool"
)

// Kept logs are bounded, the newest kept: pooled sandboxes' to their own
// share, which they cannot exceed at the others' expense.
func TestPruneKeptLogs(t *testing.T) {
	dir := t.TempDir()
	old := time.Now().Add(-time.Hour)
	write := func(name string, age int) {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte("log"), 0o644); err != nil {
			t.Fatal(err)
		}
		at := old.Add(time.Duration(age) * time.Second)
		if err := os.Chtimes(path, at, at); err != nil {
			t.Fatal(err)
		}
	}
	for i := range keptPoolLogs + 5 {
		write(fmt.Sprintf("%s%d.daemon.log", PooledID(pool.SlotPrefix), i), i)
	}
	for i := range keptLogs + 3 {
		write(fmt.Sprintf("c%d.console.log", i), 100+i)
	}
	write("notes.txt", 0) // not a log: left alone
	pruneKeptLogs(dir)

	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if len(names) != keptPoolLogs+keptLogs+1 {
		t.Errorf("%d files left, want %d pool logs, %d others and notes.txt: %v", len(names), keptPoolLogs, keptLogs, names)
	}
	for _, gone := range []string{PooledID(pool.SlotPrefix) + "4.daemon.log", "c2.console.log"} {
		if slices.Contains(names, gone) {
			t.Errorf("%s, among the oldest, was kept", gone)
		}
	}
	for _, kept := range []string{PooledID(pool.SlotPrefix) + "5.daemon.log", "c3.console.log", "notes.txt"} {
		if !slices.Contains(names, kept) {
			t.Errorf("%s was removed", kept)
		}
	}
}
