package journal

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// A delta disk (layer) holds, for every disk of a VM, a sparse extent map
// and its data: the newest version of every byte written in the IDs it
// covers. File layout:
//
//	u32 magic "CJDL", u8 version, 3 zero bytes, u64 ID, i64 time, u32 count,
//	count × {i32 disk, u8 op, i64 off, i64 len, i64 file position of data},
//	u32 CRC-32C of the above, the data, u32 CRC-32C of the data.
const (
	layerMagic      = 0x434a444c
	layerVersion    = 1
	layerHeader     = 28
	layerEntryBytes = 29
)

type layerExt struct {
	off, end int64
	zero     bool
	pos      int64
}

type layer struct {
	id     uint64
	time   time.Time
	listed bool
	file   string
	f      *os.File
	size   int64
	exts   map[int32][]layerExt // per disk, sorted, not overlapping
}

func (l *layer) entry() layerEntry {
	return layerEntry{ID: l.id, Time: l.time, Listed: l.listed, File: l.file}
}

func layerName(id uint64) string { return fmt.Sprintf("delta-%016x.dlt", id) }

// candidates lists, per disk, the chunks where w may see a record or a
// layer version; a fold or merge only has to look there.
func (v *VM) candidates(w view) map[int32][]int64 {
	set := map[int32]map[int64]struct{}{}
	addRange := func(d int32, off, end int64) {
		m := set[d]
		if m == nil {
			m = map[int64]struct{}{}
			set[d] = m
		}
		for c := off / chunkBytes; c*chunkBytes < end; c++ {
			m[c] = struct{}{}
		}
	}
	for _, r := range v.records {
		if r.id <= w.floor || r.id > w.hi {
			continue
		}
		for _, e := range r.exts {
			addRange(e.disk, e.off, e.off+e.length)
		}
	}
	for _, l := range w.layers {
		for d, exts := range l.exts {
			for _, e := range exts {
				addRange(d, e.off, e.end)
			}
		}
	}
	out := map[int32][]int64{}
	for d, m := range set {
		cs := make([]int64, 0, len(m))
		for c := range m {
			cs = append(cs, c)
		}
		sort.Slice(cs, func(i, j int) bool { return cs[i] < cs[j] })
		out[d] = cs
	}
	return out
}

type diskSpan struct {
	disk int32
	span
}

// spans resolves w over its candidate chunks, sorted by disk and offset,
// with neighbours from the same place joined.
func (v *VM) spans(w view) []diskSpan {
	w.base = false
	var out []diskSpan
	cands := v.candidates(w)
	disks := make([]int32, 0, len(cands))
	for d := range cands {
		disks = append(disks, d)
	}
	sort.Slice(disks, func(i, j int) bool { return disks[i] < disks[j] })
	for _, d := range disks {
		capacity := v.capacity(d)
		var ds []span
		for _, c := range cands[d] {
			a, b := c*chunkBytes, min((c+1)*chunkBytes, capacity)
			if a >= b {
				continue
			}
			v.resolve(w, d, a, b, func(s span) { ds = append(ds, s) })
		}
		sort.Slice(ds, func(i, j int) bool { return ds[i].off < ds[j].off })
		for _, s := range ds {
			if n := len(out); n > 0 {
				p := &out[n-1]
				if p.disk == d && p.end == s.off && p.src == s.src &&
					(s.src == srcZero || (p.f == s.f && p.pos+(p.end-p.off) == s.pos)) {
					p.end = s.end
					continue
				}
			}
			out = append(out, diskSpan{disk: d, span: s})
		}
	}
	return out
}

// writeLayer writes planned spans (from v.spans) as a new delta file,
// durable before it returns. It needs no lock: the files the spans point
// into are immutable and only maintenance, which is serialised, deletes
// them.
func (v *VM) writeLayer(id uint64, t time.Time, listed bool, spans []diskSpan) (*layer, error) {
	dataStart := int64(layerHeader + len(spans)*layerEntryBytes + 4)
	var dataLen int64
	for _, s := range spans {
		if s.src == srcFile {
			dataLen += s.end - s.off
		}
	}
	size := dataStart + dataLen + 4
	if err := v.s.reserve(size); err != nil {
		return nil, fmt.Errorf("write delta disk %d of %s: %w", id, v.name, err)
	}
	l, err := v.writeLayerFile(id, t, listed, spans, dataStart, size)
	if err != nil {
		v.s.release(size)
		return nil, fmt.Errorf("write delta disk %d of %s: %w", id, v.name, err)
	}
	return l, nil
}

func (v *VM) writeLayerFile(id uint64, t time.Time, listed bool, spans []diskSpan, dataStart, size int64) (*layer, error) {
	name := layerName(id)
	tmp := filepath.Join(v.dir, name+".tmp")
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	l := &layer{id: id, time: t, listed: listed, file: name, size: size, exts: map[int32][]layerExt{}}
	bw := bufio.NewWriterSize(f, 1<<20)
	hdr := make([]byte, 0, dataStart)
	hdr = binary.LittleEndian.AppendUint32(hdr, layerMagic)
	hdr = append(hdr, layerVersion, 0, 0, 0)
	hdr = binary.LittleEndian.AppendUint64(hdr, id)
	hdr = binary.LittleEndian.AppendUint64(hdr, uint64(unixNanos(t)))
	hdr = binary.LittleEndian.AppendUint32(hdr, uint32(len(spans)))
	pos := dataStart
	for _, s := range spans {
		op, p := OpZero, int64(0)
		if s.src == srcFile {
			op, p = OpData, pos
			pos += s.end - s.off
		}
		hdr = binary.LittleEndian.AppendUint32(hdr, uint32(s.disk))
		hdr = append(hdr, byte(op))
		hdr = binary.LittleEndian.AppendUint64(hdr, uint64(s.off))
		hdr = binary.LittleEndian.AppendUint64(hdr, uint64(s.end-s.off))
		hdr = binary.LittleEndian.AppendUint64(hdr, uint64(p))
		l.exts[s.disk] = append(l.exts[s.disk], layerExt{off: s.off, end: s.end, zero: op == OpZero, pos: p})
	}
	hdr = binary.LittleEndian.AppendUint32(hdr, crc32.Checksum(hdr, castagnoli))
	if _, err := bw.Write(hdr); err != nil {
		return nil, err
	}
	crc := crc32.New(castagnoli)
	out := io.MultiWriter(bw, crc)
	buf := v.s.getBuf(1 << 20)[:1<<20]
	defer v.s.putBuf(buf)
	for _, s := range spans {
		if s.src != srcFile {
			continue
		}
		if err := copyAt(out, s.f, s.pos, s.end-s.off, buf); err != nil {
			return nil, err
		}
	}
	if _, err := bw.Write(binary.LittleEndian.AppendUint32(nil, crc.Sum32())); err != nil {
		return nil, err
	}
	if err := bw.Flush(); err != nil {
		return nil, err
	}
	if err := v.s.syncFile(f); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, filepath.Join(v.dir, name)); err != nil {
		return nil, err
	}
	if err := v.s.syncDir(v.dir); err != nil {
		return nil, err
	}
	ok = true
	l.f = f
	return l, nil
}

// copyAt copies n bytes at pos of src to w.
func copyAt(w io.Writer, src *os.File, pos, n int64, buf []byte) error {
	for n > 0 {
		c := min(n, int64(len(buf)))
		if _, err := src.ReadAt(buf[:c], pos); err != nil {
			return fmt.Errorf("read %s at %d: %w", src.Name(), pos, err)
		}
		if _, err := w.Write(buf[:c]); err != nil {
			return err
		}
		pos += c
		n -= c
	}
	return nil
}

// loadLayer opens a delta file and checks both of its checksums.
func (v *VM) loadLayer(e layerEntry) (*layer, error) {
	path := filepath.Join(v.dir, e.File)
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open delta disk: %w", err)
	}
	l, err := readLayer(f, e)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("delta disk %s: %w", path, err)
	}
	return l, nil
}

func readLayer(f *os.File, e layerEntry) (*layer, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	h := make([]byte, layerHeader)
	if _, err := f.ReadAt(h, 0); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrCorrupt, err)
	}
	if binary.LittleEndian.Uint32(h) != layerMagic || h[4] != layerVersion {
		return nil, fmt.Errorf("%w: bad magic or version", ErrCorrupt)
	}
	id := binary.LittleEndian.Uint64(h[8:])
	if id != e.ID {
		return nil, fmt.Errorf("%w: holds point %d, manifest says %d", ErrCorrupt, id, e.ID)
	}
	count := int64(binary.LittleEndian.Uint32(h[24:]))
	dataStart := layerHeader + count*layerEntryBytes + 4
	if dataStart+4 > size {
		return nil, fmt.Errorf("%w: %d entries overrun the file", ErrCorrupt, count)
	}
	tab := make([]byte, dataStart)
	if _, err := f.ReadAt(tab, 0); err != nil {
		return nil, fmt.Errorf("%w: table: %v", ErrCorrupt, err)
	}
	if crc32.Checksum(tab[:dataStart-4], castagnoli) != binary.LittleEndian.Uint32(tab[dataStart-4:]) {
		return nil, fmt.Errorf("%w: table checksum mismatch", ErrCorrupt)
	}
	l := &layer{id: id, time: e.Time, listed: e.Listed, file: e.File, f: f, size: size, exts: map[int32][]layerExt{}}
	pos := dataStart
	for p := int64(layerHeader); p < dataStart-4; p += layerEntryBytes {
		d := int32(binary.LittleEndian.Uint32(tab[p:]))
		op := Op(tab[p+4])
		off := int64(binary.LittleEndian.Uint64(tab[p+5:]))
		n := int64(binary.LittleEndian.Uint64(tab[p+13:]))
		at := int64(binary.LittleEndian.Uint64(tab[p+21:]))
		if off < 0 || n <= 0 || off+n < off {
			return nil, fmt.Errorf("%w: bad extent %d+%d", ErrCorrupt, off, n)
		}
		x := layerExt{off: off, end: off + n, zero: op == OpZero}
		switch op {
		case OpData:
			if at != pos {
				return nil, fmt.Errorf("%w: data of extent at %d misplaced", ErrCorrupt, off)
			}
			x.pos = at
			pos += n
		case OpZero:
		default:
			return nil, fmt.Errorf("%w: unknown op %d", ErrCorrupt, op)
		}
		if prev := l.exts[d]; len(prev) > 0 && prev[len(prev)-1].end > off {
			return nil, fmt.Errorf("%w: extents not sorted", ErrCorrupt)
		}
		l.exts[d] = append(l.exts[d], x)
	}
	if pos+4 != size {
		return nil, fmt.Errorf("%w: size %d, want %d", ErrCorrupt, size, pos+4)
	}
	crc := crc32.New(castagnoli)
	if _, err := io.Copy(crc, io.NewSectionReader(f, dataStart, pos-dataStart)); err != nil {
		return nil, fmt.Errorf("read data: %w", err)
	}
	var tail [4]byte
	if _, err := f.ReadAt(tail[:], pos); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if crc.Sum32() != binary.LittleEndian.Uint32(tail[:]) {
		return nil, fmt.Errorf("%w: data checksum mismatch", ErrCorrupt)
	}
	return l, nil
}
