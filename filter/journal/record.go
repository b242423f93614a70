package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"time"
)

// A record is one point in a segment:
//
//	u32 n (bytes that follow, CRC included)
//	u32 magic "CJR1", u8 version, u8 kind, u8 marker, u8 flags,
//	u64 point ID, i64 time (unix nanos), u16 len(vm), vm,
//	u32 extent count, extents {i32 disk, u8 op, i64 off, i64 len},
//	the data of the OpData extents in order,
//	u32 CRC-32C of everything before it (length prefix included).
//
// A zero length prefix is the clean end of a segment (segments are
// preallocated with zeroes), or, at an offset that is not a multiple of
// directAlign, the padding after a record written with direct I/O: the
// next record, if any, starts at the next multiple (see direct.go).
const (
	recMagic      = 0x434a5231 // "CJR1"
	recVersion    = 1
	recFixed      = 4 + 4 + 4 + 8 + 8 + 2 // prefix .. vm length
	extEntryBytes = 4 + 1 + 8 + 8
	// flagBaseApplied: the point's data went straight into the base files
	// (initial sync); the record only makes its ID durable.
	flagBaseApplied = 1 << 0
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errTorn marks a record that does not check out; the scan cuts there.
var errTorn = errors.New("torn or corrupt record")

// extMeta is one extent of a decoded record; dataPos is the offset of its
// data from the start of the record (OpData only).
type extMeta struct {
	disk    int32
	op      Op
	off     int64
	length  int64
	dataPos int64
}

// recHeader is a decoded record without its data.
type recHeader struct {
	id     uint64
	time   time.Time
	kind   Kind
	marker Marker
	flags  uint8
	vm     string
	exts   []extMeta
	size   int64 // whole record, prefix and CRC included
}

// recordSize is the encoded size of p's record.
func recordSize(vm string, p *Point, baseApplied bool) int64 {
	n := int64(recFixed + len(vm) + 4 + 4)
	if baseApplied {
		return n
	}
	for _, e := range p.Extents {
		n += extEntryBytes
		if e.Op == OpData {
			n += e.Len
		}
	}
	return n
}

// appendRecord encodes p's record onto b.
func appendRecord(b []byte, vm string, p *Point, baseApplied bool) []byte {
	start := len(b)
	size := recordSize(vm, p, baseApplied)
	var flags uint8
	if baseApplied {
		flags |= flagBaseApplied
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(size-4))
	b = binary.LittleEndian.AppendUint32(b, recMagic)
	b = append(b, recVersion, byte(p.Kind), byte(p.Marker), flags)
	b = binary.LittleEndian.AppendUint64(b, p.ID)
	b = binary.LittleEndian.AppendUint64(b, uint64(unixNanos(p.Time)))
	b = binary.LittleEndian.AppendUint16(b, uint16(len(vm)))
	b = append(b, vm...)
	if baseApplied {
		b = binary.LittleEndian.AppendUint32(b, 0)
	} else {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(p.Extents)))
		for _, e := range p.Extents {
			b = binary.LittleEndian.AppendUint32(b, uint32(e.Disk))
			b = append(b, byte(normOp(e.Op)))
			b = binary.LittleEndian.AppendUint64(b, uint64(e.Off))
			b = binary.LittleEndian.AppendUint64(b, uint64(e.Len))
		}
		for _, e := range p.Extents {
			if e.Op == OpData {
				b = append(b, e.Data...)
			}
		}
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b[start:], castagnoli))
}

// recordVec is appendRecord as the pieces of a record that is not
// base-applied: the header and extent table, the data of each OpData
// extent (p's own slices, not copies) and the CRC trailer. Written one
// after the other they are byte for byte appendRecord's output; p's data
// must stay unchanged until they are written.
func recordVec(vm string, p *Point) (vec [][]byte, size int64) {
	size = recordSize(vm, p, false)
	nData := 0
	for _, e := range p.Extents {
		if e.Op == OpData {
			nData++
		}
	}
	head := recFixed + len(vm) + 4 + len(p.Extents)*extEntryBytes
	b := make([]byte, 0, head+4)
	b = binary.LittleEndian.AppendUint32(b, uint32(size-4))
	b = binary.LittleEndian.AppendUint32(b, recMagic)
	b = append(b, recVersion, byte(p.Kind), byte(p.Marker), 0)
	b = binary.LittleEndian.AppendUint64(b, p.ID)
	b = binary.LittleEndian.AppendUint64(b, uint64(unixNanos(p.Time)))
	b = binary.LittleEndian.AppendUint16(b, uint16(len(vm)))
	b = append(b, vm...)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(p.Extents)))
	for _, e := range p.Extents {
		b = binary.LittleEndian.AppendUint32(b, uint32(e.Disk))
		b = append(b, byte(normOp(e.Op)))
		b = binary.LittleEndian.AppendUint64(b, uint64(e.Off))
		b = binary.LittleEndian.AppendUint64(b, uint64(e.Len))
	}
	vec = make([][]byte, 0, nData+2)
	vec = append(vec, b)
	crc := crc32.Checksum(b, castagnoli)
	for _, e := range p.Extents {
		if e.Op == OpData {
			vec = append(vec, e.Data)
			crc = crc32.Update(crc, castagnoli, e.Data)
		}
	}
	trailer := binary.LittleEndian.AppendUint32(b[len(b):len(b)], crc)
	return append(vec, trailer), size
}

// unixNanos is t in Unix nanoseconds; the zero time is 0 (its UnixNano
// would overflow).
func unixNanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// recordTime is a point time as a record stores and returns it.
func recordTime(t time.Time) time.Time { return time.Unix(0, unixNanos(t)).UTC() }

func normOp(o Op) Op {
	if o == OpTrim {
		return OpZero
	}
	return o
}

// parseRecord decodes a whole record (prefix to CRC). Every field is
// checked; anything off is errTorn.
func parseRecord(b []byte) (recHeader, error) {
	var h recHeader
	if len(b) < recFixed+8 {
		return h, fmt.Errorf("%w: %d bytes is too short", errTorn, len(b))
	}
	n := int64(binary.LittleEndian.Uint32(b))
	if n+4 != int64(len(b)) {
		return h, fmt.Errorf("%w: length %d does not match %d bytes", errTorn, n, len(b)-4)
	}
	body := b[:len(b)-4]
	if crc32.Checksum(body, castagnoli) != binary.LittleEndian.Uint32(b[len(b)-4:]) {
		return h, fmt.Errorf("%w: checksum mismatch", errTorn)
	}
	if binary.LittleEndian.Uint32(b[4:]) != recMagic {
		return h, fmt.Errorf("%w: bad magic", errTorn)
	}
	if b[8] != recVersion {
		return h, fmt.Errorf("%w: unknown version %d", errTorn, b[8])
	}
	h.kind, h.marker, h.flags = Kind(b[9]), Marker(b[10]), b[11]
	if h.kind < KindInitial || h.kind > KindShortTerm || h.marker > MarkerResyncDone || h.flags&^flagBaseApplied != 0 {
		return h, fmt.Errorf("%w: bad kind/marker/flags %d/%d/%d", errTorn, h.kind, h.marker, h.flags)
	}
	h.id = binary.LittleEndian.Uint64(b[12:])
	h.time = time.Unix(0, int64(binary.LittleEndian.Uint64(b[20:]))).UTC()
	vmLen := int(binary.LittleEndian.Uint16(b[28:]))
	p := recFixed
	if p+vmLen+4 > len(body) {
		return h, fmt.Errorf("%w: vm name overruns record", errTorn)
	}
	h.vm = string(b[p : p+vmLen])
	p += vmLen
	count := int64(binary.LittleEndian.Uint32(b[p:]))
	p += 4
	if count*extEntryBytes > int64(len(body)-p) {
		return h, fmt.Errorf("%w: %d extents overrun record", errTorn, count)
	}
	if h.flags&flagBaseApplied != 0 && count != 0 {
		return h, fmt.Errorf("%w: base-applied record with extents", errTorn)
	}
	h.exts = make([]extMeta, count)
	data := int64(p) + count*extEntryBytes
	for i := range h.exts {
		e := &h.exts[i]
		e.disk = int32(binary.LittleEndian.Uint32(b[p:]))
		e.op = Op(b[p+4])
		e.off = int64(binary.LittleEndian.Uint64(b[p+5:]))
		e.length = int64(binary.LittleEndian.Uint64(b[p+13:]))
		p += extEntryBytes
		if e.off < 0 || e.length <= 0 || e.off+e.length < e.off {
			return h, fmt.Errorf("%w: extent %d has bad range %d+%d", errTorn, i, e.off, e.length)
		}
		switch e.op {
		case OpData:
			if e.length > int64(len(body))-data {
				return h, fmt.Errorf("%w: extent %d data overruns record", errTorn, i)
			}
			e.dataPos = data
			data += e.length
		case OpZero:
		default:
			return h, fmt.Errorf("%w: extent %d has unknown op %d", errTorn, i, e.op)
		}
	}
	if data != int64(len(body)) {
		return h, fmt.Errorf("%w: %d trailing bytes", errTorn, int64(len(body))-data)
	}
	h.size = int64(len(b))
	return h, nil
}

// recordReader walks the records of one segment from a given offset.
type recordReader struct {
	r    io.ReaderAt
	size int64 // bytes of the segment file
	off  int64 // offset of the next record
	buf  []byte
}

// next returns the next record and its offset. io.EOF is the clean end
// (zero length prefix or end of file); an error wrapping errTorn means the
// record at r.off does not check out.
func (r *recordReader) next() (recHeader, int64, error) {
	var pre [4]byte
	var n int64
	for {
		if r.off+4 > r.size {
			return recHeader{}, r.off, io.EOF
		}
		if _, err := r.r.ReadAt(pre[:], r.off); err != nil {
			return recHeader{}, r.off, fmt.Errorf("%w: read length at %d: %v", errTorn, r.off, err)
		}
		if n = int64(binary.LittleEndian.Uint32(pre[:])); n != 0 {
			break
		}
		// zeroes up to a multiple of directAlign pad a direct write
		a := alignUp(r.off)
		if a == r.off {
			return recHeader{}, r.off, io.EOF
		}
		r.off = a
	}
	if n+4 > maxRecordBytes || r.off+4+n > r.size {
		return recHeader{}, r.off, fmt.Errorf("%w: length %d at %d overruns segment", errTorn, n, r.off)
	}
	if int64(cap(r.buf)) < n+4 {
		r.buf = make([]byte, n+4)
	}
	b := r.buf[:n+4]
	if _, err := r.r.ReadAt(b, r.off); err != nil {
		return recHeader{}, r.off, fmt.Errorf("%w: read record at %d: %v", errTorn, r.off, err)
	}
	h, err := parseRecord(b)
	if err != nil {
		return h, r.off, fmt.Errorf("at offset %d: %w", r.off, err)
	}
	at := r.off
	r.off += h.size
	return h, at, nil
}
