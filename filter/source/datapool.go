package source

import (
	"math/bits"
	"sync"
)

// Write data copies come from size-class pools and go back once the
// target acknowledged them: a steady stream of guest writes then copies
// into warm memory instead of faulting in a fresh buffer per write.
const (
	minPooled = 4 << 10
	maxPooled = 4 << 20
)

var dataPools [23]sync.Pool // *[]byte by power-of-two capacity, up to maxPooled (1<<22)

func poolClass(n int) int { return bits.Len(uint(n - 1)) }

// getData returns a buffer of length n holding a copy of b[:n].
func getData(b []byte) []byte {
	n := len(b)
	if n < minPooled || n > maxPooled {
		return append([]byte(nil), b...)
	}
	var buf []byte
	if p, _ := dataPools[poolClass(n)].Get().(*[]byte); p != nil {
		buf = (*p)[:n]
	} else {
		buf = make([]byte, n, 1<<poolClass(n))
	}
	copy(buf, b)
	return buf
}

// putData hands back a buffer of getData once nothing reads it any more.
func putData(b []byte) {
	c := cap(b)
	if c < minPooled || c > maxPooled || c&(c-1) != 0 {
		return
	}
	b = b[:0]
	dataPools[poolClass(c)].Put(&b)
}
