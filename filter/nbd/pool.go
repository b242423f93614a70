package nbd

import (
	"sync"

	"github.com/continuum-cdp/continuum/internal/bufpool"
)

// Payload buffers come from a free list of power-of-two size classes, so a
// busy connection reuses warm memory instead of allocating (and faulting
// in) a buffer per request. The list outlives garbage collections and
// keeps at most poolBytes.
const (
	minClassShift = 12 // 4 KiB
	maxClassShift = 25 // 32 MiB == MaxRequest
	poolBytes     = 64 << 20
)

var payloads = bufpool.New(poolBytes, bufpool.PowerOfTwo)

// getBuf returns a buffer of length n (n <= MaxRequest).
func getBuf(n int) *[]byte {
	b := payloads.Get(n)
	return &b
}

func putBuf(b *[]byte) {
	if b == nil || cap(*b) < 1<<minClassShift || cap(*b) > 1<<maxClassShift {
		return
	}
	payloads.Put(*b)
}

// budget bounds the bytes and requests in flight on one connection. A
// request larger than the whole byte budget still runs, alone.
type budget struct {
	mu       sync.Mutex
	cond     sync.Cond
	maxBytes int64
	maxReqs  int
	bytes    int64
	reqs     int
}

func newBudget(maxBytes int64, maxReqs int) *budget {
	b := &budget{maxBytes: maxBytes, maxReqs: maxReqs}
	b.cond.L = &b.mu
	return b
}

func (b *budget) acquire(n int64) {
	b.mu.Lock()
	for b.reqs > 0 && (b.reqs >= b.maxReqs || b.bytes+n > b.maxBytes) {
		b.cond.Wait()
	}
	b.reqs++
	b.bytes += n
	b.mu.Unlock()
}

func (b *budget) release(n int64) {
	b.mu.Lock()
	b.reqs--
	b.bytes -= n
	b.mu.Unlock()
	b.cond.Broadcast()
}
