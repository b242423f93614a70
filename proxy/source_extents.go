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
}

// sourceExtentMap holds the latest content of every byte range of one disk
// written since the last cut: a later write replaces exactly the bytes it
// covers, splitting older extents at byte granularity.
type sourceExtentMap struct {
	ext   []sourceExtent // sorted by off, non-overlapping
	bytes int64          // data bytes held
}

// put records a write; data is owned by the map from now on.
func (m *sourceExtentMap) put(off, length int64, op uint8, data []byte) {
	if length <= 0 {
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

// extents returns the map as wire extents of the given disk.
func (m *sourceExtentMap) extents(disk int32, out []wire.Extent) []wire.Extent {
	for _, e := range m.ext {
		out = append(out, wire.Extent{Disk: disk, Off: e.off, Op: e.op, Len: e.end - e.off, Data: e.data})
	}
	return out
}
