package admission

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// holdEnv makes the test binary a process that takes a turn, says so on
// stdout, and holds it until killed.
const holdEnv = "HUSK_ADMISSION_TEST_HOLD"

// held keeps the holder's turn referenced: a dropped Turn's file would be
// closed by the garbage collector, and its lock lost.
var held *Turn

func TestMain(m *testing.M) {
	if dir := os.Getenv(holdEnv); dir != "" {
		var err error
		held, err = Gate{Dir: dir, Slots: 1}.Enter(context.Background())
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println("holding", filepath.Base(held.path))
		time.Sleep(time.Hour)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// enterAll has waiters take turns, each holding its turn for a moment, and
// returns the order in which the turns came and the most held at once.
// With sequential, the caller holds a turn of its own until all have
// joined, one after the other.
func enterAll(t *testing.T, g Gate, waiters int, sequential bool) (order []int, most int) {
	t.Helper()
	var first *Turn
	if sequential {
		var err error
		if first, err = g.Enter(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	inside := 0
	var wg sync.WaitGroup
	for i := 0; i < waiters; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			turn, err := g.Enter(context.Background())
			if err != nil {
				t.Errorf("waiter %d: %v", i, err)
				return
			}
			mu.Lock()
			inside++
			most = max(most, inside)
			order = append(order, i)
			mu.Unlock()
			time.Sleep(20 * time.Millisecond)
			mu.Lock()
			inside--
			mu.Unlock()
			turn.Leave()
		}(i)
		// The next joins once this one has its place in the queue (a
		// named ticket: a ".new-" one has none yet), behind the caller's
		// turn, which lets none of them start.
		for sequential && len(placed(tickets(t, g.Dir))) < i+2 {
			time.Sleep(time.Millisecond)
		}
	}
	first.Leave()
	wg.Wait()
	if left := tickets(t, g.Dir); len(left) != 0 {
		t.Errorf("tickets left in the queue: %q", left)
	}
	return order, most
}

func TestTurnsComeInOrderOfArrival(t *testing.T) {
	order, _ := enterAll(t, Gate{Dir: t.TempDir(), Slots: 1}, 8, true)
	for k, i := range order {
		if i != k {
			t.Fatalf("turns came in order %v, want 0..7", order)
		}
	}
}

func TestAtMostSlotsAtOnce(t *testing.T) {
	_, most := enterAll(t, Gate{Dir: t.TempDir(), Slots: 3}, 12, false)
	if most != 3 {
		t.Errorf("at most %d turns at once, want 3", most)
	}
}

// tickets lists the queue's tickets.
func tickets(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if e.Name() != orderLock {
			names = append(names, e.Name())
		}
	}
	return names
}

// placed is the tickets that have their place in the order.
func placed(names []string) []string {
	var out []string
	for _, n := range names {
		if !strings.HasPrefix(n, ".new-") {
			out = append(out, n)
		}
	}
	return out
}

func TestDeadTicketIsPassed(t *testing.T) {
	g := Gate{Dir: t.TempDir(), Slots: 1}
	// A ticket whose owner is gone: nobody holds its lock.
	dead := filepath.Join(g.Dir, fmt.Sprintf("%020d-%d", 1, 99999))
	if err := os.WriteFile(dead, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	turn, err := g.Enter(ctx)
	if err != nil {
		t.Fatalf("Enter behind a dead ticket: %v", err)
	}
	defer turn.Leave()
	if turn.Ahead != 0 {
		t.Errorf("Ahead = %d, want 0", turn.Ahead)
	}
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("the dead ticket is still there: %v", err)
	}
}

func TestCancelledWaiterLeaves(t *testing.T) {
	g := Gate{Dir: t.TempDir(), Slots: 1}
	first, err := g.Enter(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer first.Leave()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = g.Enter(ctx)
	if !errors.Is(err, ErrQueueWait) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Enter past its deadline: %v, want ErrQueueWait and DeadlineExceeded", err)
	}
	if n := len(tickets(t, g.Dir)); n != 1 {
		t.Errorf("%d tickets in the queue, want only the first's", n)
	}
}

// A process killed while it holds its turn hands it on, and leaves no
// ticket behind once someone looked.
func TestKilledHolderHandsOn(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), holdEnv+"="+dir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("the holder: %v", err)
	}
	t.Logf("holder: %s", line)
	g := Gate{Dir: dir, Slots: 1}
	got := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		turn, err := g.Enter(ctx)
		if err == nil {
			turn.Leave()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("Enter returned while the holder lived: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if err := <-got; err != nil {
		t.Fatalf("Enter after the holder was killed: %v", err)
	}
	if n := len(tickets(t, dir)); n != 0 {
		t.Errorf("%d tickets left in the queue", n)
	}
}

func TestUnfinishedTicketIsRemovedWhenOld(t *testing.T) {
	g := Gate{Dir: t.TempDir(), Slots: 1}
	young := filepath.Join(g.Dir, ".new-young")
	old := filepath.Join(g.Dir, ".new-old")
	for _, p := range []string{young, old} {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	past := time.Now().Add(-time.Minute)
	if err := os.Chtimes(old, past, past); err != nil {
		t.Fatal(err)
	}
	turn, err := g.Enter(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	turn.Leave()
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Errorf("an old unfinished ticket is still there: %v", err)
	}
	if _, err := os.Stat(young); err != nil {
		t.Errorf("a young unfinished ticket was removed: %v", err)
	}
}

func TestNoSlots(t *testing.T) {
	if _, err := (Gate{Dir: t.TempDir()}).Enter(context.Background()); err == nil {
		t.Fatal("Enter with no slots: no error")
	}
}
