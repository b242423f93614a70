package proxy

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/continuum-cdp/continuum/internal/wire"
)

// TestSourceExtentMapMatchesModel applies random overlapping writes and
// zeroes to the map and to a byte array, then compares the map's extents
// with the array and checks they are sorted and disjoint.
func TestSourceExtentMapMatchesModel(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 200; round++ {
		const size = 4096
		model := make([]byte, size)
		written := make([]bool, size)
		var m sourceExtentMap
		var refs []*frameRef
		for k := 0; k < 1+r.IntN(30); k++ {
			off := r.Int64N(size - 1)
			n := 1 + r.Int64N(min(size-off, 700))
			if r.IntN(4) == 0 {
				m.put(off, n, wire.OpZero, nil, nil)
				for i := off; i < off+n; i++ {
					model[i], written[i] = 0, true
				}
				continue
			}
			d := make([]byte, n)
			for i := range d {
				d[i] = byte(1 + r.IntN(255))
			}
			ref := &frameRef{w: &wire.Write{Op: wire.OpData, Data: d}, n: 1}
			refs = append(refs, ref)
			m.put(off, n, wire.OpData, d, ref)
			copy(model[off:], d)
			for i := off; i < off+n; i++ {
				written[i] = true
			}
		}
		got := make([]byte, size)
		gotW := make([]bool, size)
		var prevEnd int64 = -1
		var dataBytes int64
		// every write's count is the number of extents holding its data
		held := map[*frameRef]int{}
		for _, e := range m.ext {
			if e.ref != nil {
				held[e.ref]++
			}
		}
		for i, ref := range refs {
			if ref.n != held[ref] {
				t.Fatalf("round %d: write %d counted %d extents, %d hold it", round, i, ref.n, held[ref])
			}
		}
		ext, eRefs := m.extents(0, nil, nil)
		if len(eRefs) != len(m.ext)-countZero(m.ext) {
			t.Fatalf("round %d: %d references for %d data extents", round, len(eRefs), len(m.ext)-countZero(m.ext))
		}
		for _, e := range ext {
			if e.Off < prevEnd || e.Len <= 0 {
				t.Fatalf("round %d: extents overlap or empty at %d", round, e.Off)
			}
			prevEnd = e.Off + e.Len
			if e.Op == wire.OpData {
				if int64(len(e.Data)) != e.Len {
					t.Fatalf("round %d: extent at %d has %d bytes for len %d", round, e.Off, len(e.Data), e.Len)
				}
				copy(got[e.Off:], e.Data)
				dataBytes += e.Len
			}
			for i := e.Off; i < e.Off+e.Len; i++ {
				gotW[i] = true
			}
		}
		if !bytes.Equal(got, model) {
			t.Fatalf("round %d: content differs from the model", round)
		}
		for i := range written {
			if written[i] != gotW[i] {
				t.Fatalf("round %d: byte %d written=%v, map covers=%v", round, i, written[i], gotW[i])
			}
		}
		if dataBytes != m.bytes {
			t.Fatalf("round %d: accounted %d data bytes, holds %d", round, m.bytes, dataBytes)
		}
	}
}

func countZero(ext []sourceExtent) int {
	n := 0
	for _, e := range ext {
		if e.op != wire.OpData {
			n++
		}
	}
	return n
}
