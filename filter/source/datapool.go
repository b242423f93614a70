package source

import "github.com/continuum-cdp/continuum/internal/bufpool"

// Write data copies come from a free list and go back once the target
// acknowledged them: a steady stream of guest writes then copies into warm
// memory instead of faulting in a fresh buffer per write. The list outlives
// garbage collections (a sync.Pool would empty at each one, and a busy VM
// collects often) and keeps at most dataPoolBytes.
const (
	minPooled     = 4 << 10
	maxPooled     = 4 << 20
	dataPoolBytes = 128 << 20
)

var dataPool = bufpool.New(dataPoolBytes, bufpool.PowerOfTwo)

// newData returns a buffer of length n, from the free list where its size
// is pooled.
func newData(n int) []byte {
	if n < minPooled || n > maxPooled {
		return make([]byte, n)
	}
	return dataPool.Get(n)
}

// getData returns a buffer of length n holding a copy of b[:n].
func getData(b []byte) []byte {
	buf := newData(len(b))
	copy(buf, b)
	return buf
}

// putData hands back a buffer of getData once nothing reads it any more.
func putData(b []byte) {
	if c := cap(b); c < minPooled || c > maxPooled {
		return
	}
	dataPool.Put(b)
}
