package journal

import (
	"fmt"
	"io"
	"os"
	"sort"
	"sync/atomic"

	"github.com/continuum-cdp/continuum/internal/model"
)

// PointReader reads one disk as it was at one listed point.
type PointReader interface {
	io.ReaderAt
	Size() int64
	Close() error
}

type pointReader struct {
	v      *VM
	id     uint64
	disk   int32
	size   int64
	closed atomic.Bool
}

// OpenPoint opens a read-only view of disk at the listed point id. Each read
// sees the journal's current layout, so retention may run meanwhile; once
// the point is no longer listed, reads fail with ErrNotListed.
func (v *VM) OpenPoint(id uint64, disk int32) (PointReader, error) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if v.removed.Load() {
		return nil, fmt.Errorf("open point %d of %s: %w", id, v.name, ErrRemoved)
	}
	c := v.capacity(disk)
	if c < 0 {
		return nil, fmt.Errorf("open point %d of %s: disk %d: %w", id, v.name, disk, model.ErrNotFound)
	}
	if !v.isListed(id) {
		return nil, fmt.Errorf("open point %d of %s: %w", id, v.name, ErrNotListed)
	}
	v.readers.Add(1)
	return &pointReader{v: v, id: id, disk: disk, size: c}, nil
}

func (r *pointReader) Size() int64 { return r.size }
func (r *pointReader) Close() error {
	if !r.closed.Swap(true) {
		r.v.readers.Add(-1)
	}
	return nil
}

func (r *pointReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read point %d disk %d: negative offset %d", r.id, r.disk, off)
	}
	if off >= r.size {
		return 0, io.EOF
	}
	n := int64(len(p))
	if off+n > r.size {
		n = r.size - off
	}
	v := r.v
	v.mu.RLock()
	defer v.mu.RUnlock()
	if !v.isListed(r.id) {
		return 0, fmt.Errorf("read point %d of %s: %w", r.id, v.name, ErrNotListed)
	}
	if err := v.readLocked(v.viewAt(r.id), r.disk, p[:n], off); err != nil {
		return 0, fmt.Errorf("read point %d of %s disk %d at %d: %w", r.id, v.name, r.disk, off, err)
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// viewAt is what point id reads: records above the newest layer at or
// before it, then those layers, then the base.
func (v *VM) viewAt(id uint64) view {
	w := view{hi: id, floor: v.m.BaseID, base: true}
	for i := len(v.layers) - 1; i >= 0; i-- {
		l := v.layers[i]
		if l.id > id {
			continue
		}
		if l.id > w.floor && len(w.layers) == 0 {
			w.floor = l.id
		}
		w.layers = append(w.layers, l)
	}
	return w
}

func (v *VM) readLocked(w view, disk int32, p []byte, off int64) error {
	var ferr error
	base := v.base[disk]
	v.resolve(w, disk, off, off+int64(len(p)), func(s span) {
		if ferr != nil {
			return
		}
		dst := p[s.off-off : s.end-off]
		switch s.src {
		case srcZero:
			clear(dst)
		case srcFile:
			if _, err := s.f.ReadAt(dst, s.pos); err != nil {
				ferr = err
			}
		case srcBase:
			if _, err := base.ReadAt(dst, s.off); err != nil {
				ferr = err
			}
		}
	})
	return ferr
}

// isListed: is id a listed point? Callers hold v.mu.
func (v *VM) isListed(id uint64) bool {
	if !v.m.InitialSyncDone {
		return false
	}
	if v.m.BaseListed && id == v.m.BaseID {
		return true
	}
	for _, l := range v.layers {
		if l.listed && l.id == id {
			return true
		}
	}
	i := sort.Search(len(v.records), func(i int) bool { return v.records[i].id >= id })
	return i < len(v.records) && v.records[i].id == id && v.shortListed(v.records[i])
}

// Export writes disk at the listed point id as a raw sparse image at path
// (all-zero blocks are left as holes). On error the file is removed.
func (v *VM) Export(id uint64, disk int32, path string) (err error) {
	r, err := v.OpenPoint(id, disk)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	defer r.Close()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("export point %d of %s disk %d: %w", id, v.name, disk, err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("export point %d of %s disk %d: %w", id, v.name, disk, cerr)
		}
		if err != nil {
			os.Remove(path)
		}
	}()
	if err := f.Truncate(r.Size()); err != nil {
		return fmt.Errorf("export point %d of %s disk %d: %w", id, v.name, disk, err)
	}
	buf := v.s.getBuf(1 << 20)[:1<<20]
	defer v.s.putBuf(buf)
	for off := int64(0); off < r.Size(); off += int64(len(buf)) {
		n, rerr := r.ReadAt(buf, off)
		if rerr != nil && rerr != io.EOF {
			return fmt.Errorf("export: %w", rerr)
		}
		if allZero(buf[:n]) {
			continue
		}
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			return fmt.Errorf("export point %d of %s disk %d: %w", id, v.name, disk, err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("export point %d of %s disk %d: %w", id, v.name, disk, err)
	}
	return nil
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
