package nbd

import (
	"math/bits"
	"sync"
)

// Payload buffers come from power-of-two size classes so that a busy
// connection reuses its memory instead of allocating per request.
const (
	minClassShift = 12 // 4 KiB
	maxClassShift = 25 // 32 MiB == MaxRequest
)

var bufPools [maxClassShift - minClassShift + 1]sync.Pool

func classOf(n int) int {
	if n <= 1<<minClassShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minClassShift
}

// getBuf returns a buffer of length n (n <= MaxRequest).
func getBuf(n int) *[]byte {
	c := classOf(n)
	if v := bufPools[c].Get(); v != nil {
		b := v.(*[]byte)
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<(c+minClassShift))
	return &b
}

func putBuf(b *[]byte) {
	if b == nil {
		return
	}
	c := classOf(cap(*b))
	if cap(*b) != 1<<(c+minClassShift) {
		return // not one of ours
	}
	bufPools[c].Put(b)
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
