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
	"syscall"
)

// segment is one preallocated journal file. Segments are shared by every
// VM of the store so that one fsync commits the points of all of them.
type segment struct {
	seq    uint64
	path   string
	f      *os.File
	df     *os.File          // the active segment's direct writer, or nil (see direct.go)
	size   int64             // preallocated size
	tail   int64             // where the next record goes
	maxIDs map[string]uint64 // per VM, the highest record ID in it
	// abandoned: an fsync failed; nothing more is written to it and
	// rotation does not wait on it.
	abandoned bool
}

func segName(seq uint64) string { return fmt.Sprintf("seg-%016x.log", seq) }

func parseSegName(n string) (uint64, bool) {
	if !strings.HasPrefix(n, "seg-") || !strings.HasSuffix(n, ".log") {
		return 0, false
	}
	v, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(n, "seg-"), ".log"), 16, 64)
	return v, err == nil
}

// writeRecord puts an encoded record at the tail of the active segment,
// rotating to a new segment when it does not fit. Only the committer calls
// it. On failure the partial bytes are zeroed so nothing half-written can
// be read back as a record.
func (s *Store) writeRecord(vm string, since, id uint64, vec [][]byte, n int64) (*segment, int64, error) {
	s.segMu.Lock()
	seg := s.active
	s.segMu.Unlock()
	start := func(seg *segment) int64 {
		if s.direct(seg, n) {
			return alignUp(seg.tail)
		}
		return seg.tail
	}
	// Keep room for a zero length prefix after the record: the clean end.
	// A VM that reuses a removed VM's name writes from segment since on.
	if seg == nil || seg.seq < since || start(seg)+n+4 > seg.size {
		var err error
		if seg, err = s.rotate(n + 4); err != nil {
			return nil, 0, fmt.Errorf("append to journal: %w", err)
		}
	}
	// Mark the segment as holding this VM's point before writing it, so
	// retention can never delete it from under an acknowledged point.
	s.segMu.Lock()
	seg.maxIDs[vm] = max(seg.maxIDs[vm], id)
	s.segMu.Unlock()
	off := start(seg)
	direct := s.direct(seg, n)
	if direct {
		err := s.writeDirect(seg.df, vec, off)
		if errors.Is(err, syscall.EINVAL) {
			// the file system refused after all (a failed direct write
			// changes nothing): the page cache from now on
			s.log.Warn("direct journal writes refused, using the page cache", "segment", seg.path, "err", err.Error())
			s.noDirect = true
			seg.closeDirect()
			direct = false
		} else if err != nil {
			_ = writeZeroes(seg.f, off, alignUp(n))
			return nil, 0, fmt.Errorf("append to journal: write %s: %w", seg.path, err)
		}
	}
	if !direct {
		if w, err := writeVecAt(seg.f, vec, off); err != nil {
			if w > 0 {
				_ = writeZeroes(seg.f, off, w)
			}
			return nil, 0, fmt.Errorf("append to journal: write %s: %w", seg.path, err)
		}
	}
	seg.tail = off + n
	return seg, off, nil
}

// rotate closes the active segment for appends and starts a new one of at
// least need bytes. The old segment is fsynced first so that a torn record
// can only ever be in the newest segment.
func (s *Store) rotate(need int64) (*segment, error) {
	size := s.opts.SegmentBytes
	if need > size {
		size = need
	}
	if err := s.reserve(size); err != nil {
		return nil, err
	}
	s.segMu.Lock()
	old := s.active
	seq := s.nextSeq
	s.segMu.Unlock()
	if old != nil {
		// no more appends go to it; closed while it is still the active
		// segment, which retention never drops
		old.closeDirect()
	}
	if old != nil && !old.abandoned {
		if err := s.syncSeg(old); err != nil {
			s.release(size)
			return nil, fmt.Errorf("fsync segment %s: %w", old.path, err)
		}
	}
	path := filepath.Join(s.segDir, segName(seq))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		s.release(size)
		return nil, fmt.Errorf("create segment: %w", err)
	}
	fail := func(err error) (*segment, error) {
		f.Close()
		os.Remove(path)
		s.release(size)
		return nil, err
	}
	if err := preallocate(f, size); err != nil {
		return fail(fmt.Errorf("preallocate segment %s: %w", path, err))
	}
	if err := s.syncFile(f); err != nil {
		return fail(fmt.Errorf("fsync segment %s: %w", path, err))
	}
	if err := s.syncDir(s.segDir); err != nil {
		return fail(fmt.Errorf("fsync %s: %w", s.segDir, err))
	}
	seg := &segment{seq: seq, path: path, f: f, size: size, maxIDs: map[string]uint64{}}
	if !s.opts.BufferedIO && !s.noDirect {
		seg.df = openDirect(path)
	}
	s.segMu.Lock()
	s.segs = append(s.segs, seg)
	s.active = seg
	s.nextSeq = seq + 1
	s.segMu.Unlock()
	return seg, nil
}

// listSegments opens the store's segments in order.
func (s *Store) listSegments() ([]*segment, error) {
	ents, err := os.ReadDir(s.segDir)
	if err != nil {
		return nil, err
	}
	var segs []*segment
	for _, e := range ents {
		seq, ok := parseSegName(e.Name())
		if !ok {
			continue
		}
		path := filepath.Join(s.segDir, e.Name())
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
		segs = append(segs, &segment{seq: seq, path: path, f: f, size: st.Size(), maxIDs: map[string]uint64{}})
	}
	sort.Slice(segs, func(i, j int) bool { return segs[i].seq < segs[j].seq })
	return segs, nil
}

// loadSegments scans every segment in order and hands each record to its
// VM, rebuilding their indexes.
func (s *Store) loadSegments() error {
	segs, err := s.listSegments()
	if err != nil {
		return fmt.Errorf("list segments: %w", err)
	}
	s.segs = segs
	for i, seg := range segs {
		s.used.Add(seg.size)
		err := s.scanSegment(seg, i == len(segs)-1, func(h recHeader, off int64) error {
			// noted for every name, so that a VM opened later under a
			// removed VM's name knows to start after these records
			seg.maxIDs[h.vm] = max(seg.maxIDs[h.vm], h.id)
			v := s.vms[h.vm]
			if v == nil || seg.seq < v.since {
				// the VM was removed (its directory is gone), or this is
				// a removed VM's record under the name of a newer one
				return nil
			}
			return v.replay(seg, h, off)
		})
		if err != nil {
			return err
		}
		s.nextSeq = seg.seq + 1
	}
	if n := len(segs); n > 0 {
		s.active = segs[n-1]
		if !s.opts.BufferedIO {
			s.active.df = openDirect(s.active.path)
		}
	}
	return nil
}

// dropSegments deletes segments no VM needs any more (never the active
// one, which appends keep using).
func (s *Store) dropSegments() {
	s.mu.Lock()
	type need struct{ dropThrough, since uint64 }
	drop := map[string]need{}
	for name, v := range s.vms {
		v.mu.RLock()
		drop[name] = need{v.m.DropThrough, v.since}
		v.mu.RUnlock()
	}
	s.mu.Unlock()
	s.segMu.Lock()
	var keep, gone []*segment
	for _, seg := range s.segs {
		dead := seg != s.active
		for vm, id := range seg.maxIDs {
			// records of removed VMs (no VM, or before a newer VM of the
			// same name began) keep nothing
			if t, ok := drop[vm]; ok && seg.seq >= t.since && id > t.dropThrough {
				dead = false
			}
		}
		if dead {
			gone = append(gone, seg)
		} else {
			keep = append(keep, seg)
		}
	}
	s.segs = keep
	s.segMu.Unlock()
	for _, seg := range gone {
		seg.closeDirect()
		seg.f.Close()
		if err := os.Remove(seg.path); err != nil {
			s.log.Warn("remove journal segment", "segment", seg.path, "err", err.Error())
			continue
		}
		s.release(seg.size)
	}
}

func closeSegs(segs []*segment) {
	for _, s := range segs {
		s.closeDirect()
		s.f.Close()
	}
}

func (seg *segment) closeDirect() {
	if seg.df != nil {
		seg.df.Close()
		seg.df = nil
	}
}

// scanSegment reads every record of seg, calling fn for each. A record that
// does not check out ends the segment: in the newest segment that is a torn
// tail and is cut (zeroed) and logged; in an older one it is corruption.
func (s *Store) scanSegment(seg *segment, last bool, fn func(h recHeader, off int64) error) error {
	r := &recordReader{r: seg.f, size: seg.size}
	for {
		h, off, err := r.next()
		if err == io.EOF {
			seg.tail = off
			if last && off < seg.size {
				// Whatever a crash left past the clean end (blocks of a
				// record whose first block never reached the disk) is
				// zeroed, so later appends cannot end next to stale bytes.
				if err := cutTail(seg, off); err != nil {
					return fmt.Errorf("clear the tail of %s at %d: %w", seg.path, off, err)
				}
				if err := s.syncFile(seg.f); err != nil {
					return fmt.Errorf("fsync %s: %w", seg.path, err)
				}
			}
			return nil
		}
		if err != nil {
			if !errors.Is(err, errTorn) {
				return err
			}
			if !last {
				return fmt.Errorf("%w: segment %s (not the newest): %v", ErrCorrupt, seg.path, err)
			}
			s.log.Warn("cutting torn journal tail", "segment", seg.path, "offset", off, "reason", err.Error())
			if err := cutTail(seg, off); err != nil {
				return fmt.Errorf("cut torn tail of %s at %d: %w", seg.path, off, err)
			}
			if err := s.syncFile(seg.f); err != nil {
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
