package watch

import (
	"sync"
	"time"
)

// queue hands images (by reference) to workers. An image is queued once
// however often it is added before a worker takes it (bursts coalesce),
// and is never handed to two workers at once: one added while a worker
// has it is handed out again when that worker is done.
type queue struct {
	mu      sync.Mutex
	cond    *sync.Cond
	order   []string
	queued  map[string]bool
	running map[string]bool
	dirty   map[string]bool
	closed  bool
}

func newQueue() *queue {
	q := &queue{queued: map[string]bool{}, running: map[string]bool{}, dirty: map[string]bool{}}
	q.cond = sync.NewCond(&q.mu)
	return q
}

// add queues key, unless it is queued already; a key a worker has is
// marked to be handed out again when done.
func (q *queue) add(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	switch {
	case q.closed, q.queued[key]:
	case q.running[key]:
		q.dirty[key] = true
	default:
		q.queued[key] = true
		q.order = append(q.order, key)
		q.cond.Signal()
	}
}

// addAfter adds key after d (a retry's backoff).
func (q *queue) addAfter(key string, d time.Duration) {
	time.AfterFunc(d, func() { q.add(key) })
}

// get waits for a key and marks it running; false once the queue is shut
// down.
func (q *queue) get() (string, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.order) == 0 && !q.closed {
		q.cond.Wait()
	}
	if q.closed {
		return "", false
	}
	key := q.order[0]
	q.order = q.order[1:]
	delete(q.queued, key)
	q.running[key] = true
	return key, true
}

// done releases key; it is queued again if it was added meanwhile.
func (q *queue) done(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.running, key)
	if q.dirty[key] && !q.closed {
		delete(q.dirty, key)
		q.queued[key] = true
		q.order = append(q.order, key)
		q.cond.Signal()
	}
}

// shutdown stops handing out keys and returns those that were waiting;
// workers finish the keys they have.
func (q *queue) shutdown() []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	dropped := q.order
	for k := range q.dirty {
		if !q.queued[k] {
			dropped = append(dropped, k)
		}
	}
	q.order = nil
	q.cond.Broadcast()
	return dropped
}

// length is the number of keys waiting.
func (q *queue) length() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.order)
}

// busy reports whether a worker holds a key.
func (q *queue) busy() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.running) > 0
}
