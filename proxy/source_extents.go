package proxy

import (
	"sort"

	"github.com/continuum-cdp/continuum/internal/wire"
)

// sourceExtent is one byte range of a disk in the open interval.
type sourceExtent struct {
	off, end int64
	op       uint8 // wire.OpData or wire.OpZero
	data     []byte
	ref      *frameRef // the write whose read buffer data aliases
}

// frameRef counts the extents that hold data of one write, so that its
// read buffer goes back to the decoder (wire.Release) when the last of
// them is overwritten or encoded. Counted under the proxy's mu while the
// extents are in the open interval; after a cut only the encoder holds
// them.
type frameRef struct {
	w *wire.Write
	n int
}

func (r *frameRef) add(d int) {
	if r == nil {
		return
	}
	r.n += d
	if r.n == 0 {
		wire.Release(r.w)
	}
}

// sourceExtentMap holds the latest content of every byte range of one disk
// written since the last cut: a later write replaces exactly the bytes it
// covers, splitting older extents at byte granularity.
type sourceExtentMap struct {
	ext   []sourceExtent // sorted by off, non-overlapping
	bytes int64          // data bytes held
}

// put records a write; data is owned by the map from now on. ref, for a
// data write, counts one for the extent put here.
func (m *sourceExtentMap) put(off, length int64, op uint8, data []byte, ref *frameRef) {
	if length <= 0 {
		ref.add(-1)
		return
	}
	if op == wire.OpTrim {
		op = wire.OpZero
	}
	end := off + length
	// first extent that ends after off
	i := sort.Search(len(m.ext), func(i int) bool { return m.ext[i].end > off })
	j := i
	var repl []sourceExtent
	for j < len(m.ext) && m.ext[j].off < end {
		e := m.ext[j]
		m.bytes -= int64(len(e.data))
		// pieces of e that stay: before off, after end
		kept := 0
		if e.off < off {
			kept++
		}
		if e.end > end {
			kept++
		}
		e.ref.add(kept - 1)
		if e.off < off {
			l := e
			l.end = off
			if l.op == wire.OpData {
				l.data = e.data[:off-e.off]
				m.bytes += int64(len(l.data))
			}
			repl = append(repl, l)
		}
		j++
	}
	n := sourceExtent{off: off, end: end, op: op}
	if op == wire.OpData {
		n.data = data
		n.ref = ref
		m.bytes += int64(len(data))
	}
	repl = append(repl, n)
	if j > i {
		if e := m.ext[j-1]; e.end > end {
			r := e
			r.off = end
			if r.op == wire.OpData {
				r.data = e.data[end-e.off:]
				m.bytes += int64(len(r.data))
			}
			repl = append(repl, r)
		}
	}
	m.ext = append(m.ext[:i], append(repl, m.ext[j:]...)...)
}

// extents returns the map as wire extents of the given disk, and the
// references of their data, to be dropped once they are encoded.
func (m *sourceExtentMap) extents(disk int32, out []wire.Extent, refs []*frameRef) ([]wire.Extent, []*frameRef) {
	for _, e := range m.ext {
		out = append(out, wire.Extent{Disk: disk, Off: e.off, Op: e.op, Len: e.end - e.off, Data: e.data})
		if e.ref != nil {
			refs = append(refs, e.ref)
		}
	}
	return out, refs
}
