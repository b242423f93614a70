package journal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"time"
)

// FuzzRecordReader feeds arbitrary bytes to the segment record reader. It
// must never panic, and every record it accepts must re-encode to exactly
// the bytes it was read from.
func FuzzRecordReader(f *testing.F) {
	p1 := &Point{ID: 7, Time: time.Unix(0, 12345), Kind: KindShortTerm, Extents: []Extent{
		{Disk: 1, Off: 10, Op: OpData, Len: 4, Data: []byte("abcd")},
		{Disk: 2, Off: 1 << 30, Op: OpZero, Len: 1 << 20},
	}}
	p2 := &Point{ID: 8, Time: time.Unix(1, 0), Kind: KindInitial, Marker: MarkerInitialSyncDone}
	r1 := appendRecord(nil, "vm-1", p1, false)
	r2 := appendRecord(nil, "vm-1", p2, true)
	seg := append(append(append([]byte(nil), r1...), r2...), make([]byte, 16)...)
	f.Add(seg)
	f.Add(r1)
	f.Add(r1[:len(r1)-1])
	f.Add(append(append([]byte(nil), r1...), 0xff, 0xff, 0xff, 0x7f))
	f.Add([]byte{})
	f.Add(make([]byte, 8))
	bad := append([]byte(nil), r1...)
	binary.LittleEndian.PutUint32(bad, 1<<31)
	f.Add(bad)
	f.Fuzz(func(t *testing.T, data []byte) {
		rr := &recordReader{r: bytes.NewReader(data), size: int64(len(data))}
		for range 1000 {
			h, off, err := rr.next()
			if err == io.EOF {
				return
			}
			if err != nil {
				if !errors.Is(err, errTorn) {
					t.Fatalf("reader error is not errTorn: %v", err)
				}
				return
			}
			raw := data[off : off+h.size]
			p := &Point{ID: h.id, Time: h.time, Kind: h.kind, Marker: h.marker}
			for _, e := range h.exts {
				x := Extent{Disk: e.disk, Off: e.off, Op: e.op, Len: e.length}
				if e.op == OpData {
					x.Data = raw[e.dataPos : e.dataPos+e.length]
				}
				p.Extents = append(p.Extents, x)
			}
			again := appendRecord(nil, h.vm, p, h.flags&flagBaseApplied != 0)
			if !bytes.Equal(again, raw) {
				t.Fatalf("record at %d does not re-encode to its bytes", off)
			}
		}
	})
}
