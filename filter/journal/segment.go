package journal

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// segment is one preallocated journal file of a VM.
type segment struct {
	seq   uint64
	path  string
	f     *os.File
	size  int64  // preallocated size
	tail  int64  // where the next record goes
	maxID uint64 // highest record ID in it (0: none)
}

func segName(seq uint64) string { return fmt.Sprintf("seg-%016x.log", seq) }

func parseSegName(n string) (uint64, bool) {
	if !strings.HasPrefix(n, "seg-") || !strings.HasSuffix(n, ".log") {
		return 0, false
	}
	v, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(n, "seg-"), ".log"), 16, 64)
	return v, err == nil
}

// writeRecord puts an encoded record at the tail of the VM's active
// segment, rotating to a new segment when it does not fit. Only the
// committer calls it. On failure the partial bytes are zeroed so nothing
// half-written can be read back as a record.
func (v *VM) writeRecord(rec []byte) (*segment, int64, error) {
	n := int64(len(rec))
	v.segMu.Lock()
	seg := v.active
	v.segMu.Unlock()
	// Keep room for a zero length prefix after the record: the clean end.
	if seg == nil || seg.tail+n+4 > seg.size {
		var err error
		if seg, err = v.rotate(n + 4); err != nil {
			return nil, 0, fmt.Errorf("append to journal of %s: %w", v.name, err)
		}
	}
	off := seg.tail
	if w, err := seg.f.WriteAt(rec, off); err != nil {
		if w > 0 {
			_ = writeZeroes(seg.f, off, int64(w))
		}
		return nil, 0, fmt.Errorf("append to journal of %s: write %s: %w", v.name, seg.path, err)
	}
	seg.tail += n
	return seg, off, nil
}

// rotate closes the active segment for appends and starts a new one of at
// least need bytes. The old segment is fsynced first so that a torn record
// can only ever be in the newest segment.
func (v *VM) rotate(need int64) (*segment, error) {
	size := v.s.opts.SegmentBytes
	if need > size {
		size = need
	}
	if err := v.s.reserve(size); err != nil {
		return nil, err
	}
	v.segMu.Lock()
	old := v.active
	seq := v.nextSeq
	v.segMu.Unlock()
	if old != nil {
		if err := v.s.syncSeg(old); err != nil {
			v.s.release(size)
			return nil, fmt.Errorf("fsync segment %s: %w", old.path, err)
		}
	}
	path := filepath.Join(v.dir, segName(seq))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		v.s.release(size)
		return nil, fmt.Errorf("create segment: %w", err)
	}
	fail := func(err error) (*segment, error) {
		f.Close()
		os.Remove(path)
		v.s.release(size)
		return nil, err
	}
	if err := preallocate(f, size); err != nil {
		return fail(fmt.Errorf("preallocate segment %s: %w", path, err))
	}
	if err := v.s.syncFile(f); err != nil {
		return fail(fmt.Errorf("fsync segment %s: %w", path, err))
	}
	if err := v.s.syncDir(v.dir); err != nil {
		return fail(fmt.Errorf("fsync %s: %w", v.dir, err))
	}
	seg := &segment{seq: seq, path: path, f: f, size: size}
	v.segMu.Lock()
	v.segs = append(v.segs, seg)
	v.active = seg
	v.nextSeq = seq + 1
	v.segMu.Unlock()
	return seg, nil
}

// listSegments opens the VM's segments in order.
func (v *VM) listSegments() ([]*segment, error) {
	ents, err := os.ReadDir(v.dir)
	if err != nil {
		return nil, err
	}
	var segs []*segment
	for _, e := range ents {
		seq, ok := parseSegName(e.Name())
		if !ok {
			continue
		}
		path := filepath.Join(v.dir, e.Name())
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			closeSegs(segs)
			return nil, err
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			closeSegs(segs)
			return nil, err
		}
		segs = append(segs, &segment{seq: seq, path: path, f: f, size: st.Size()})
	}
	sort.Slice(segs, func(i, j int) bool { return segs[i].seq < segs[j].seq })
	return segs, nil
}

func closeSegs(segs []*segment) {
	for _, s := range segs {
		s.f.Close()
	}
}

// scanSegment reads every record of seg, calling fn for each. A record that
// does not check out ends the segment: in the newest segment that is a torn
// tail and is cut (zeroed) and logged; in an older one it is corruption.
func (v *VM) scanSegment(seg *segment, last bool, fn func(h recHeader, off int64) error) error {
	r := &recordReader{r: seg.f, size: seg.size}
	for {
		h, off, err := r.next()
		if err == io.EOF {
			seg.tail = off
			return nil
		}
		if err != nil {
			if !errors.Is(err, errTorn) {
				return err
			}
			if !last {
				return fmt.Errorf("%w: segment %s (not the newest): %v", ErrCorrupt, seg.path, err)
			}
			v.s.log.Warn("cutting torn journal tail", "vm", v.name, "segment", seg.path, "offset", off, "reason", err.Error())
			if err := cutTail(seg, off); err != nil {
				return fmt.Errorf("cut torn tail of %s at %d: %w", seg.path, off, err)
			}
			if err := v.s.syncFile(seg.f); err != nil {
				return fmt.Errorf("fsync %s: %w", seg.path, err)
			}
			seg.tail = off
			return nil
		}
		if err := fn(h, off); err != nil {
			return err
		}
	}
}

// cutTail zeroes everything from off to the end of the segment, keeping
// its preallocated size.
func cutTail(seg *segment, off int64) error {
	if err := seg.f.Truncate(off); err != nil {
		return err
	}
	if seg.size > off {
		return preallocate(seg.f, seg.size)
	}
	return nil
}

var zeroBuf = make([]byte, 1<<16)

// writeZeroes writes n zero bytes at off.
func writeZeroes(f *os.File, off, n int64) error {
	for n > 0 {
		c := min(n, int64(len(zeroBuf)))
		if _, err := f.WriteAt(zeroBuf[:c], off); err != nil {
			return err
		}
		off += c
		n -= c
	}
	return nil
}
