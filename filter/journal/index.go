package journal

import (
	"os"
	"sort"
	"time"
)

// chunkBytes is the granularity of the in-memory extent index: a read
// looks only at the pieces of the chunks it touches.
var chunkBytes int64 = 1 << 20

// record is a journaled point kept in memory without its data.
type record struct {
	id     uint64
	time   time.Time
	kind   Kind
	marker Marker
	seg    *segment
	off    int64 // of the record in its segment
	exts   []extMeta
}

// piece is the part of one record extent that falls in one chunk.
type piece struct {
	id         uint64
	start, end int64
	zero       bool
	f          *os.File
	pos        int64 // file position of byte start
}

// diskIndex maps chunk number → the pieces written there, oldest first
// (records are appended in ID order). It grows with the journal's content,
// never with the disk's size.
type diskIndex struct {
	chunks map[int64][]piece
}

func (x *diskIndex) add(r *record, e extMeta) {
	for c := e.off / chunkBytes; c*chunkBytes < e.off+e.length; c++ {
		a := max(e.off, c*chunkBytes)
		b := min(e.off+e.length, (c+1)*chunkBytes)
		p := piece{id: r.id, start: a, end: b, zero: e.op == OpZero}
		if !p.zero {
			p.f = r.seg.f
			p.pos = r.off + e.dataPos + (a - e.off)
		}
		x.chunks[c] = append(x.chunks[c], p)
	}
}

// span is a resolved byte range and where its bytes are.
type span struct {
	off, end int64
	src      srcKind
	f        *os.File
	pos      int64 // file position of byte off (srcFile)
}

type srcKind uint8

const (
	srcBase srcKind = iota // the base file at the same offset
	srcZero
	srcFile
)

// view says which versions a read sees: records with floor < ID <= hi,
// then the given layers (newest first), then (if base) the base file.
type view struct {
	hi, floor uint64
	layers    []*layer
	base      bool
}

type ival struct{ a, b int64 }

// cover takes [a,b) out of gaps, calling fn on each part that was a gap.
func cover(gaps []ival, a, b int64, fn func(x, y int64)) []ival {
	out := gaps[:0:0]
	for _, g := range gaps {
		if b <= g.a || a >= g.b {
			out = append(out, g)
			continue
		}
		x, y := max(a, g.a), min(b, g.b)
		fn(x, y)
		if g.a < x {
			out = append(out, ival{g.a, x})
		}
		if y < g.b {
			out = append(out, ival{y, g.b})
		}
	}
	return out
}

// resolve emits the spans of [off,end) of disk as seen by w, in no
// particular order. Without w.base, ranges no version covers are skipped.
func (v *VM) resolve(w view, disk int32, off, end int64, emit func(span)) {
	x := v.idx[disk]
	for c := off / chunkBytes; c*chunkBytes < end; c++ {
		gaps := []ival{{max(off, c*chunkBytes), min(end, (c+1)*chunkBytes)}}
		if x != nil {
			ps := x.chunks[c]
			for i := len(ps) - 1; i >= 0 && len(gaps) > 0; i-- {
				p := &ps[i]
				if p.id > w.hi {
					continue
				}
				if p.id <= w.floor {
					break
				}
				gaps = cover(gaps, p.start, p.end, func(a, b int64) {
					if p.zero {
						emit(span{off: a, end: b, src: srcZero})
					} else {
						emit(span{off: a, end: b, src: srcFile, f: p.f, pos: p.pos + (a - p.start)})
					}
				})
			}
		}
		for _, l := range w.layers {
			if len(gaps) == 0 {
				break
			}
			exts := l.exts[disk]
			var next []ival
			for _, g := range gaps {
				cur := g.a
				i := sort.Search(len(exts), func(i int) bool { return exts[i].end > g.a })
				for ; i < len(exts) && exts[i].off < g.b; i++ {
					e := exts[i]
					a, b := max(e.off, g.a), min(e.end, g.b)
					if a > cur {
						next = append(next, ival{cur, a})
					}
					if e.zero {
						emit(span{off: a, end: b, src: srcZero})
					} else {
						emit(span{off: a, end: b, src: srcFile, f: l.f, pos: e.pos + (a - e.off)})
					}
					cur = b
				}
				if cur < g.b {
					next = append(next, ival{cur, g.b})
				}
			}
			gaps = next
		}
		if w.base {
			for _, g := range gaps {
				emit(span{off: g.a, end: g.b, src: srcBase})
			}
		}
	}
}
