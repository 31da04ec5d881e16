// Package admission bounds how many guests start at once on the host, for
// every husk process alike (the command line's daemons, the pool's and the
// containerd shims). Under TCG a guest's boot or restore, and the creation
// of its first container, keep a core busy translating code: twenty at once
// on two cores each take twenty times as long, and all of them run out of
// time together. Queued, each takes what it takes alone, and the first come
// are the first done.
//
// The queue is a directory of tickets, one file per waiting or starting
// process, named so that names sort in order of arrival. A ticket's owner
// holds an exclusive flock on it for as long as it waits or starts; the
// first Slots live tickets are the ones starting. A process that dies
// (killed while it waits, or while its guest starts) loses its lock with
// its last descriptor, and the next process that looks removes its ticket.
package admission

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Dir is the host's queue: one for every husk on the host, whatever its
// state root or configuration.
const Dir = "/run/husk-starts"

// DefaultSlots is how many guests start at once when the configuration
// does not say: one per host core.
func DefaultSlots() int { return max(1, runtime.NumCPU()) }

// recheck bounds how long a waiter sleeps without looking at the queue: a
// ticket whose owner died stays until someone looks, and no event says
// when a lock is lost.
const recheck = 250 * time.Millisecond

// newTicketAge is how old an unfinished ticket (one whose owner died
// between creating and naming it) must be before another process removes it.
const newTicketAge = 10 * time.Second

// orderLock, in the queue, is held while a ticket takes its place.
const orderLock = ".order"

// Gate is the queue in Dir, letting Slots guests start at once.
type Gate struct {
	Dir   string
	Slots int
}

// Turn is a process's place in the queue; its guest may start once Enter
// has returned it, until Leave.
type Turn struct {
	file  *os.File
	path  string
	once  sync.Once
	Since time.Time // when the turn came
	// Waited is how long the process queued for it.
	Waited time.Duration
	// Ahead is how many starts were ahead of it when it joined the queue.
	Ahead int
}

// Leave ends the turn and lets the next waiter start, and returns how long
// the turn lasted. It may be called more than once, and on a nil Turn:
// only the call that ended it returns a non-zero duration.
func (t *Turn) Leave() (held time.Duration) {
	if t == nil {
		return 0
	}
	t.once.Do(func() {
		// Measured before the next waiter can start.
		held = max(time.Since(t.Since), time.Nanosecond)
		_ = os.Remove(t.path)
		t.file.Close()
	})
	return held
}

// ErrQueueWait says that the caller's context ended while it queued.
var ErrQueueWait = errors.New("waiting for a turn to start the guest")

// Enter joins the queue and returns once fewer than Slots live tickets are
// ahead of the caller's. It gives up when ctx ends, leaving the queue; the
// error then wraps ErrQueueWait and ctx's error.
func (g Gate) Enter(ctx context.Context) (*Turn, error) {
	if g.Slots < 1 {
		return nil, fmt.Errorf("admission: %d slots: must be at least 1", g.Slots)
	}
	if err := os.MkdirAll(g.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating the start queue: %w", err)
	}
	joined := time.Now()
	// Watching starts before the first look, so that no departure after it
	// is missed.
	watch, err := watchDepartures(g.Dir)
	if err != nil {
		return nil, err
	}
	defer watch.close()
	turn, err := g.take()
	if err != nil {
		return nil, err
	}
	// The first look counts every live ticket ahead, for the caller to
	// report; later ones stop at Slots.
	limit := math.MaxInt
	for {
		ahead, err := g.liveAhead(filepath.Base(turn.path), limit)
		if err != nil {
			turn.Leave()
			return nil, err
		}
		if limit == math.MaxInt {
			turn.Ahead, limit = ahead, g.Slots
		}
		if ahead < g.Slots {
			turn.Since = time.Now()
			turn.Waited = turn.Since.Sub(joined)
			return turn, nil
		}
		if err := watch.wait(ctx, recheck); err != nil {
			turn.Leave()
			return nil, fmt.Errorf("%w (%d ahead, %s): %w", ErrQueueWait, ahead, time.Since(joined).Round(time.Millisecond), err)
		}
	}
}

// take makes the caller's ticket: created under a name that no waiter
// counts and locked, then given its place in the order and renamed there
// under the queue's order lock, so that no ticket is ever seen unlocked
// while its owner lives, and none appears ahead of a ticket already seen.
func (g Gate) take() (*Turn, error) {
	tmp, err := os.CreateTemp(g.Dir, ".new-")
	if err != nil {
		return nil, fmt.Errorf("joining the start queue: %w", err)
	}
	fail := func(what string, err error) (*Turn, error) {
		tmp.Close()
		os.Remove(tmp.Name())
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if err := unix.Flock(int(tmp.Fd()), unix.LOCK_EX); err != nil {
		return fail("locking a start ticket", err)
	}
	order, err := os.OpenFile(filepath.Join(g.Dir, orderLock), os.O_CREATE|os.O_RDONLY, 0o600)
	if err != nil {
		return fail("joining the start queue", err)
	}
	defer order.Close()
	if err := unix.Flock(int(order.Fd()), unix.LOCK_EX); err != nil {
		return fail("joining the start queue", err)
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return fail("reading the clock", err)
	}
	// The monotonic clock is the host's: the same order for every process.
	path := filepath.Join(g.Dir, fmt.Sprintf("%020d-%d", ts.Nano(), os.Getpid()))
	if err := unix.Renameat2(unix.AT_FDCWD, tmp.Name(), unix.AT_FDCWD, path, unix.RENAME_NOREPLACE); err != nil {
		return fail("joining the start queue", err)
	}
	return &Turn{file: tmp, path: path}, nil
}

// liveAhead counts the live tickets before mine, up to limit, removing the
// dead ones it passes.
func (g Gate) liveAhead(mine string, limit int) (int, error) {
	entries, err := os.ReadDir(g.Dir)
	if err != nil {
		return 0, fmt.Errorf("reading the start queue: %w", err)
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		name := e.Name()
		if name == orderLock {
			continue
		}
		if strings.HasPrefix(name, ".new-") {
			g.removeUnfinished(name)
			continue
		}
		if name < mine {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	live := 0
	for _, name := range names {
		if live >= limit {
			break
		}
		if g.alive(name) {
			live++
		}
	}
	return live, nil
}

// alive says whether the ticket's owner holds it; a ticket nobody holds is
// removed.
func (g Gate) alive(name string) bool {
	path := filepath.Join(g.Dir, name)
	f, err := os.Open(path)
	if err != nil {
		return false // left since the listing
	}
	defer f.Close()
	// A shared lock: checkers never make each other see a dead ticket live.
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		return true
	}
	_ = os.Remove(path)
	return false
}

// removeUnfinished removes a ticket whose owner died before naming it.
func (g Gate) removeUnfinished(name string) {
	path := filepath.Join(g.Dir, name)
	fi, err := os.Stat(path)
	if err != nil || time.Since(fi.ModTime()) < newTicketAge {
		return
	}
	g.alive(name)
}

// departures watches the queue for tickets leaving it.
type departures struct{ fd int }

func watchDepartures(dir string) (*departures, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("watching the start queue: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_DELETE|unix.IN_MOVED_FROM); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("watching the start queue: %w", err)
	}
	return &departures{fd: fd}, nil
}

// wait returns when a ticket may have left, after at most timeout, or with
// ctx's error once it ends.
func (d *departures) wait(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		// Short polls, so that a cancelled context is noticed soon.
		left := time.Until(deadline)
		if left <= 0 {
			return nil
		}
		ms := int(min(left, 50*time.Millisecond) / time.Millisecond)
		fds := []unix.PollFd{{Fd: int32(d.fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, max(ms, 1))
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("watching the start queue: %w", err)
		}
		if n > 0 {
			d.drain()
			return nil
		}
	}
}

func (d *departures) drain() {
	buf := make([]byte, 4096)
	for {
		if n, err := unix.Read(d.fd, buf); n <= 0 || err != nil {
			return
		}
	}
}

func (d *departures) close() { unix.Close(d.fd) }
