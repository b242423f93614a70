package journal

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
)

// removingPrefix names a VM directory on its way out (RemoveVM): Open
// deletes what is left of it.
const removingPrefix = ".removing-"

// RemoveVM deletes the journal of a VM that is no longer replicated: its
// base and delta disks and its manifest. Its records in the shared
// segments are ignored from then on and go with their segments; a VM
// opened later under the same name starts after them, empty. It is refused
// (model.ErrConflict) while appends of the VM are in flight or readers of
// its points are open; the caller makes sure that no session feeds it. Later calls on the removed VM fail
// with ErrRemoved.
func (s *Store) RemoveVM(vm string) error {
	if s.closed.Load() {
		return ErrClosed
	}
	s.mu.Lock()
	v, ok := s.vms[vm]
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("remove vm %q: %w", vm, model.NotFound("vm", "journal of", vm))
	}
	// no maintenance, no new append
	v.fmu.Lock()
	defer v.fmu.Unlock()
	v.wmu.Lock()
	defer v.wmu.Unlock()
	if n := v.inflight.Load(); n > 0 {
		return fmt.Errorf("remove vm %q: %w: %d points are being appended", vm, model.ErrConflict, n)
	}
	// no new reader from here on (OpenPoint checks removed under mu)
	v.mu.Lock()
	if v.removed.Load() {
		v.mu.Unlock()
		return fmt.Errorf("remove vm %q: %w", vm, ErrRemoved)
	}
	if n := v.readers.Load(); n > 0 {
		v.mu.Unlock()
		return fmt.Errorf("remove vm %q: %w: %d readers of its restore points are open (an export, a download or an NBD export)", vm, model.ErrConflict, n)
	}
	v.removed.Store(true)
	v.mu.Unlock()
	// The rename is the commit point: a directory under this name is not
	// a VM any more, whatever happens to the rest of the removal.
	gone := filepath.Join(s.dir, removingPrefix+strconv.FormatInt(time.Now().UnixNano(), 36)+"-"+filepath.Base(v.dir))
	if err := os.Rename(v.dir, gone); err != nil {
		v.removed.Store(false)
		return fmt.Errorf("remove vm %q: %w", vm, err)
	}
	if err := s.syncDir(s.dir); err != nil {
		s.log.Warn("fsync journal directory after removing a vm", "vm", vm, "err", err.Error())
	}
	s.mu.Lock()
	delete(s.vms, vm)
	s.mu.Unlock()
	v.mu.Lock()
	_ = v.close()
	var layers int64
	for _, l := range v.layers {
		layers += l.size
	}
	v.records, v.idx, v.layers = nil, map[int32]*diskIndex{}, nil
	v.mu.Unlock()
	s.release(layers)
	if err := os.RemoveAll(gone); err != nil {
		// Open finishes it
		s.log.Warn("remove the files of a removed vm", "vm", vm, "dir", gone, "err", err.Error())
	}
	// its records no longer keep segments
	s.dropSegments()
	s.log.Info("vm removed from the journal", "vm", vm)
	return nil
}

// sinceFor is the first segment whose records of vm belong to a VM opened
// now: after every segment that holds a removed VM's records under that
// name, none when the name was never used. Called with s.mu held.
func (s *Store) sinceFor(vm string) uint64 {
	s.segMu.Lock()
	defer s.segMu.Unlock()
	for _, seg := range s.segs {
		if _, ok := seg.maxIDs[vm]; ok {
			return s.nextSeq
		}
	}
	return 0
}
