// Package bufpool keeps released byte buffers for reuse, by size class, up
// to a bound in bytes.
//
// Unlike a sync.Pool it keeps them across garbage collections. The data
// path moves megabytes per write and per point; a buffer dropped at a
// collection comes back as fresh memory, and on the hypervisors we run on
// the first touch of every page is a fault that costs more than the copy
// into it. A bounded free list turns a steady stream into reused, warm
// memory; what it keeps is bounded by the pool, not by the traffic.
package bufpool

import (
	"math/bits"
	"sync"
)

// Pool is a free list of byte buffers. The zero value is not usable; make
// one with New. Methods are safe for concurrent use.
type Pool struct {
	class func(n int) int // capacity of the class holding n-byte buffers
	max   int64

	mu    sync.Mutex
	free  map[int][][]byte // by class capacity
	bytes int64            // capacities held
	stats Stats
}

// Stats counts what a pool did.
type Stats struct {
	Gets, Reused, Puts, Dropped int64
	// Held is the capacity of the buffers the pool keeps now.
	Held int64
}

// PowerOfTwo is the default class: the next power of two (at least 4 KiB).
func PowerOfTwo(n int) int {
	if n <= 4<<10 {
		return 4 << 10
	}
	return 1 << bits.Len(uint(n-1))
}

// Sixteenths rounds n up in steps of 1/16 of its power of two (at least
// 64 KiB): a buffer is at most 1/8 larger than asked, for pools of large
// buffers of varied sizes.
func Sixteenths(n int) int {
	g := max(64<<10, 1<<max(0, bits.Len(uint(n))-4))
	return (n + g - 1) / g * g
}

// New returns a pool that keeps at most maxBytes of buffers; class maps a
// length to the capacity of its class (nil means PowerOfTwo) and must
// satisfy class(n) >= n and class(class(n)) == class(n).
func New(maxBytes int64, class func(n int) int) *Pool {
	if class == nil {
		class = PowerOfTwo
	}
	return &Pool{class: class, max: maxBytes, free: map[int][][]byte{}}
}

// Get returns a buffer of length n: a released one of n's class, else of
// the smallest class at most a quarter bigger, or a new one with the
// class's capacity.
func (p *Pool) Get(n int) []byte {
	c := p.class(n)
	p.mu.Lock()
	p.stats.Gets++
	if l := p.free[c]; len(l) > 0 {
		b := l[len(l)-1]
		l[len(l)-1] = nil
		p.free[c] = l[:len(l)-1]
		p.bytes -= int64(c)
		p.stats.Reused++
		p.mu.Unlock()
		return b[:n]
	}
	// A free buffer of a somewhat bigger class serves too: released
	// buffers of many close sizes would otherwise sit beside fresh ones.
	if b := p.takeLarger(c); b != nil {
		p.mu.Unlock()
		return b[:n]
	}
	p.mu.Unlock()
	return make([]byte, n, c)
}

// takeLarger takes the smallest free buffer whose capacity is over c by at
// most a quarter; p.mu is held.
func (p *Pool) takeLarger(c int) []byte {
	best := 0
	for bc, l := range p.free {
		if bc > c && bc <= c+c/4 && len(l) > 0 && (best == 0 || bc < best) {
			best = bc
		}
	}
	if best == 0 {
		return nil
	}
	l := p.free[best]
	b := l[len(l)-1]
	l[len(l)-1] = nil
	p.free[best] = l[:len(l)-1]
	p.bytes -= int64(best)
	p.stats.Reused++
	return b
}

// Put hands back a buffer nothing uses any more. A buffer that is not of a
// class capacity (not from Get), or that would take the pool past its
// bound, is left to the garbage collector.
func (p *Pool) Put(b []byte) {
	c := cap(b)
	if c == 0 || p.class(c) != c {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stats.Puts++
	if p.bytes+int64(c) > p.max {
		p.stats.Dropped++
		return
	}
	p.free[c] = append(p.free[c], b[:0])
	p.bytes += int64(c)
}

// Stats returns the pool's counters.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stats
	s.Held = p.bytes
	return s
}
