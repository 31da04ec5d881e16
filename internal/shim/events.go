package shim

import (
	"context"
	"log/slog"
	"sync"

	"github.com/containerd/containerd/events"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/runtime/v2/shim"
)

// eventQueue publishes events to containerd in the order they were queued.
// Queueing never blocks, so it is safe under any lock, including the
// sandbox's own while it reports an exit.
type eventQueue struct {
	publisher shim.Publisher
	ctx       context.Context
	log       *slog.Logger

	mu     sync.Mutex
	cond   *sync.Cond
	queue  []queuedEvent
	closed bool
	done   chan struct{}
}

type queuedEvent struct {
	topic string
	event events.Event
}

func newEventQueue(publisher shim.Publisher, namespace string, log *slog.Logger) *eventQueue {
	q := &eventQueue{
		publisher: publisher, log: log, done: make(chan struct{}),
		// Not the shim's own context, which ends at shutdown: the last
		// events must still go out, and containerd's publisher retries
		// with the context it was given.
		ctx: namespaces.WithNamespace(context.Background(), namespace),
	}
	q.cond = sync.NewCond(&q.mu)
	go q.forward()
	return q
}

func (q *eventQueue) publish(topic string, event events.Event) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		q.log.Warn("event after shutdown dropped", "topic", topic)
		return
	}
	q.queue = append(q.queue, queuedEvent{topic, event})
	q.cond.Signal()
}

func (q *eventQueue) forward() {
	defer close(q.done)
	defer q.publisher.Close()
	for {
		q.mu.Lock()
		for len(q.queue) == 0 && !q.closed {
			q.cond.Wait()
		}
		if len(q.queue) == 0 {
			q.mu.Unlock()
			return
		}
		e := q.queue[0]
		q.queue = q.queue[1:]
		q.mu.Unlock()
		if err := q.publisher.Publish(q.ctx, e.topic, e.event); err != nil {
			q.log.Warn("publishing an event", "topic", e.topic, "err", err)
		}
	}
}

// close publishes what is queued, then closes the publisher.
func (q *eventQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.cond.Signal()
	q.mu.Unlock()
	<-q.done
}
