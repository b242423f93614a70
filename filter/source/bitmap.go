package source

import (
	"fmt"
	"os"
)

// dirtyMap is the per-disk dirty-block bitmap. A bit is set (and written
// to the file, without fsync) before the data of a write reaches the disk
// file, so that a crash of the process never leaves a block that changed
// without its bit; Sync makes the bits durable against a host crash, on
// guest flush and FUA. A bit is cleared once the target holds the block's
// latest data; clearing is written lazily because a stale bit only costs
// a resync of that block.
type dirtyMap struct {
	blockSize int64
	nblocks   int64
	bits      []byte
	ndirty    int
	// last is the sequence of the newest write of a dirty block whose data
	// is in flight; a dirty block without an entry was never sent (CBT mode,
	// restart) and is cleared only by a resync. Entries exist only for data
	// in flight, so memory follows the buffer, not the disk size.
	last  map[int64]uint64
	f     *os.File
	stale bool // cleared bits not yet written
}

const seqUnsent = ^uint64(0)

// openDirtyMap opens or creates the bitmap file. A file of the wrong size
// (another block size or capacity) cannot be trusted: every block is dirty.
// A new bitmap is clean, unless the disk already had data (unknown): then
// nothing says what of it the target has, and every block is dirty.
func openDirtyMap(path string, capacity, blockSize int64, unknown bool) (*dirtyMap, error) {
	n := (capacity + blockSize - 1) / blockSize
	size := (n + 7) / 8
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open dirty bitmap %s: %w", path, err)
	}
	d := &dirtyMap{blockSize: blockSize, nblocks: n, bits: make([]byte, size), last: map[int64]uint64{}, f: f}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("stat dirty bitmap %s: %w", path, err)
	}
	switch {
	case st.Size() == size:
		if _, err := f.ReadAt(d.bits, 0); err != nil && size > 0 {
			f.Close()
			return nil, fmt.Errorf("read dirty bitmap %s: %w", path, err)
		}
	case st.Size() == 0 && !unknown:
		// new disk: nothing is dirty, the initial sync covers it
		if err := f.Truncate(size); err != nil {
			f.Close()
			return nil, fmt.Errorf("size dirty bitmap %s: %w", path, err)
		}
	default:
		for i := range d.bits {
			d.bits[i] = 0xff
		}
		if err := f.Truncate(size); err != nil {
			f.Close()
			return nil, fmt.Errorf("size dirty bitmap %s: %w", path, err)
		}
		if _, err := f.WriteAt(d.bits, 0); err != nil {
			f.Close()
			return nil, fmt.Errorf("reset dirty bitmap %s: %w", path, err)
		}
	}
	for b := int64(0); b < n; b++ {
		if d.isSet(b) {
			d.ndirty++
		}
	}
	return d, nil
}

func (d *dirtyMap) isSet(b int64) bool { return d.bits[b/8]&(1<<(b%8)) != 0 }

func (d *dirtyMap) blocks(off, length int64) (first, last int64) {
	return off / d.blockSize, (off + length - 1) / d.blockSize
}

// mark sets the bits of [off, off+length) with the given sequence and
// writes the bytes whose bits changed.
func (d *dirtyMap) mark(off, length int64, seq uint64) error {
	if length <= 0 {
		return nil
	}
	first, last := d.blocks(off, length)
	lo, hi := int64(-1), int64(-1)
	for b := first; b <= last && b < d.nblocks; b++ {
		if seq == seqUnsent {
			delete(d.last, b)
		} else {
			d.last[b] = seq
		}
		i := b / 8
		m := byte(1 << (b % 8))
		if d.bits[i]&m == 0 {
			d.bits[i] |= m
			d.ndirty++
			if lo < 0 {
				lo = i
			}
			hi = i
		}
	}
	if lo < 0 {
		return nil
	}
	if _, err := d.f.WriteAt(d.bits[lo:hi+1], lo); err != nil {
		return fmt.Errorf("write dirty bitmap: %w", err)
	}
	return nil
}

// markAll makes every block dirty and never sent, durably: the state of
// the disk at the target is unknown.
func (d *dirtyMap) markAll() error {
	clear(d.last)
	for i := range d.bits {
		d.bits[i] = 0xff
	}
	d.ndirty = int(d.nblocks)
	if _, err := d.f.WriteAt(d.bits, 0); err != nil {
		return fmt.Errorf("write dirty bitmap: %w", err)
	}
	if err := d.f.Sync(); err != nil {
		return fmt.Errorf("sync dirty bitmap: %w", err)
	}
	return nil
}

// restamp records seq for the blocks of [off, off+length) that are dirty:
// a sync scan sent their current data.
func (d *dirtyMap) restamp(off, length int64, seq uint64) {
	if length <= 0 {
		return
	}
	first, last := d.blocks(off, length)
	for b := first; b <= last && b < d.nblocks; b++ {
		if d.isSet(b) {
			d.last[b] = seq
		}
	}
}

// unsendAll marks every dirty block as never sent (CBT mode drops the
// buffer that held their data).
func (d *dirtyMap) unsendAll() { clear(d.last) }

// ack clears the blocks whose newest write is at or below seq.
func (d *dirtyMap) ack(seq uint64) {
	for b, s := range d.last {
		if s <= seq {
			delete(d.last, b)
			d.bits[b/8] &^= 1 << (b % 8)
			d.ndirty--
			d.stale = true
		}
	}
}

// dirtyRuns lists the dirty blocks as byte runs of at most maxLen bytes,
// in offset order, clipped to capacity.
func (d *dirtyMap) dirtyRuns(capacity, maxLen int64) []span {
	var runs []span
	for b := int64(0); b < d.nblocks; b++ {
		if d.bits[b/8] == 0 {
			b |= 7 // skip a clean byte
			continue
		}
		if !d.isSet(b) {
			continue
		}
		off := b * d.blockSize
		end := min(off+d.blockSize, capacity)
		if n := len(runs); n > 0 && runs[n-1].end == off && end-runs[n-1].off <= maxLen {
			runs[n-1].end = end
			continue
		}
		runs = append(runs, span{off, end})
	}
	return runs
}

func (d *dirtyMap) count() int { return d.ndirty }

// sync writes cleared bits and makes the file durable.
func (d *dirtyMap) sync() error {
	if d.stale {
		if _, err := d.f.WriteAt(d.bits, 0); err != nil {
			return fmt.Errorf("write dirty bitmap: %w", err)
		}
		d.stale = false
	}
	if err := d.f.Sync(); err != nil {
		return fmt.Errorf("sync dirty bitmap: %w", err)
	}
	return nil
}

func (d *dirtyMap) close() error { return d.f.Close() }
