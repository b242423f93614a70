package controllers

import (
	"sync"
	"time"
)

// queue is a de-duplicating work queue of keys: a key waiting is queued
// once however often it is added, a key being processed is queued again
// (once) if added meanwhile, and AddAfter delays an add. It is the
// controller-runtime shape, small enough to own.
type queue struct {
	mu         sync.Mutex
	cond       *sync.Cond
	order      []string
	waiting    map[string]bool
	processing map[string]bool
	dirty      map[string]bool // added while processing
	timers     map[string]*time.Timer
	failures   map[string]int
	shutdown   bool

	baseDelay, maxDelay time.Duration
}

func newQueue(base, max time.Duration) *queue {
	q := &queue{
		waiting:    map[string]bool{},
		processing: map[string]bool{},
		dirty:      map[string]bool{},
		timers:     map[string]*time.Timer{},
		failures:   map[string]int{},
		baseDelay:  base,
		maxDelay:   max,
	}
	q.cond = sync.NewCond(&q.mu)
	return q
}

// Add queues key now.
func (q *queue) Add(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.addLocked(key)
}

func (q *queue) addLocked(key string) {
	if q.shutdown {
		return
	}
	if t, ok := q.timers[key]; ok {
		t.Stop()
		delete(q.timers, key)
	}
	if q.processing[key] {
		q.dirty[key] = true
		return
	}
	if q.waiting[key] {
		return
	}
	q.waiting[key] = true
	q.order = append(q.order, key)
	q.cond.Signal()
}

// AddAfter queues key after d, unless it is queued sooner by another add.
// A later AddAfter replaces an earlier pending one only if it fires sooner.
func (q *queue) AddAfter(key string, d time.Duration) {
	if d <= 0 {
		q.Add(key)
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.shutdown || q.waiting[key] {
		return
	}
	if _, ok := q.timers[key]; ok {
		return
	}
	q.timers[key] = time.AfterFunc(d, func() {
		q.mu.Lock()
		defer q.mu.Unlock()
		delete(q.timers, key)
		q.addLocked(key)
	})
}

// Backoff queues key after an exponentially growing delay and returns it.
func (q *queue) Backoff(key string) time.Duration {
	q.mu.Lock()
	n := q.failures[key]
	q.failures[key] = n + 1
	q.mu.Unlock()
	d := q.baseDelay
	for i := 0; i < n && d < q.maxDelay; i++ {
		d *= 2
	}
	if d > q.maxDelay {
		d = q.maxDelay
	}
	q.AddAfter(key, d)
	return d
}

// Forget resets key's backoff after a success.
func (q *queue) Forget(key string) {
	q.mu.Lock()
	delete(q.failures, key)
	q.mu.Unlock()
}

// Get blocks until a key is ready or the queue shuts down (ok false).
func (q *queue) Get() (key string, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.order) == 0 && !q.shutdown {
		q.cond.Wait()
	}
	if q.shutdown {
		return "", false
	}
	key = q.order[0]
	q.order = q.order[1:]
	delete(q.waiting, key)
	q.processing[key] = true
	return key, true
}

// Done ends processing of key; a key added meanwhile is queued again.
func (q *queue) Done(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.processing, key)
	if q.dirty[key] {
		delete(q.dirty, key)
		q.addLocked(key)
	}
}

// Len is the number of keys waiting.
func (q *queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.order)
}

// ShutDown wakes every Get and stops every delayed add.
func (q *queue) ShutDown() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.shutdown = true
	for k, t := range q.timers {
		t.Stop()
		delete(q.timers, k)
	}
	q.cond.Broadcast()
}
