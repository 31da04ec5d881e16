package agent

import (
	"os"
	"os/signal"
	"sync"

	"golang.org/x/sys/unix"
)

// reaper collects every child of PID 1: container processes, and orphans
// re-parented to the agent when a container's PID namespace ends.
//
// libcontainer waits for its own bootstrap processes while it starts a
// container, so reaping pauses during a start (spawn holds the lock) and
// resumes once the new process's PID is registered. Exit statuses are then
// delivered to whoever registered the PID; orphans are just collected.
type reaper struct {
	mu      sync.Mutex
	waiters map[int]chan int
}

func newReaper() *reaper {
	r := &reaper{waiters: map[int]chan int{}}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, unix.SIGCHLD)
	go func() {
		for range sigs {
			r.reap()
		}
	}()
	return r
}

// spawn runs start, which creates a process, with reaping paused, and
// registers the PID it returns. The channel receives the exit status.
func (r *reaper) spawn(start func() (int, error)) (int, <-chan int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pid, err := start()
	if err != nil {
		return 0, nil, err
	}
	ch := make(chan int, 1)
	r.waiters[pid] = ch
	return pid, ch, nil
}

func (r *reaper) reap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		if ch, ok := r.waiters[pid]; ok {
			delete(r.waiters, pid)
			ch <- exitStatus(ws)
		}
	}
}

// exitStatus follows the shell's convention, as runc does: the exit code, or
// 128 plus the number of the signal that killed the process.
func exitStatus(ws unix.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}
