package journal

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
)

// VM is the journal of one replicated VM.
type VM struct {
	s    *Store
	name string
	dir  string

	// wmu serialises appends (IDs arrive in order); fmu serialises
	// maintenance (long-term points, retention, disks), which runs beside
	// appends; manMu orders manifest writes with the in-memory swaps.
	wmu   sync.Mutex
	fmu   sync.Mutex
	manMu sync.Mutex

	// mu guards the in-memory state below against readers.
	mu      sync.RWMutex
	m       manifest
	lastID  uint64
	base    map[int32]*os.File
	records []*record // journaled, ID > m.DropThrough, ascending
	idx     map[int32]*diskIndex
	layers  []*layer // ascending ID
	scanID  uint64   // last record ID seen while scanning at open

	// asynchronous appends (guarded by wmu): the last ID handed to the
	// committer and its request
	queued uint64
	tail   *appendReq
	// inflight counts asynchronous appends not yet answered; pmu guards
	// failed, the error of a record that failed while others of this VM
	// were queued behind it
	inflight atomic.Int64
	// since is m.Since, fixed when the VM is opened, for the committer
	// and the segment scan
	since uint64
	// removed: RemoveVM deleted the VM; its files are closed
	removed atomic.Bool
	// readers counts open point readers (OpenPoint until Close): a VM
	// being read is not removed
	readers atomic.Int64
	pmu     sync.Mutex
	failed  error
}

func vmDirName(vm string) string { return "vm-" + url.PathEscape(vm) }

func baseName(key int32) string { return fmt.Sprintf("disk-%d.base", key) }

// OpenVM returns the journal of vm, creating it (with sparse base disks of
// full capacity) if needed. An existing VM must have the same disks.
func (s *Store) OpenVM(vm string, disks []DiskSpec) (*VM, error) {
	if vm == "" || len(vm) > 1024 {
		return nil, fmt.Errorf("open vm %q: %w: name must be 1..1024 bytes", vm, model.ErrInvalid)
	}
	if err := checkDisks(disks); err != nil {
		return nil, fmt.Errorf("open vm %q: %w", vm, err)
	}
	if s.closed.Load() {
		return nil, ErrClosed
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if v, ok := s.vms[vm]; ok {
		if err := sameDisks(v.Disks(), disks); err != nil {
			return nil, fmt.Errorf("open vm %q: %w", vm, err)
		}
		return v, nil
	}
	dir := filepath.Join(s.dir, vmDirName(vm))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("open vm %q: %w", vm, err)
	}
	v := &VM{s: s, name: vm, dir: dir, base: map[int32]*os.File{}, idx: map[int32]*diskIndex{}}
	v.m = manifest{VM: vm, Disks: append([]DiskSpec(nil), disks...), Since: s.sinceFor(vm)}
	v.since = v.m.Since
	for _, d := range disks {
		if err := v.openBase(d, true); err != nil {
			v.close()
			return nil, fmt.Errorf("open vm %q: %w", vm, err)
		}
	}
	if err := s.writeManifest(dir, &v.m); err != nil {
		v.close()
		return nil, fmt.Errorf("open vm %q: %w", vm, err)
	}
	s.vms[vm] = v
	return v, nil
}

func checkDisks(disks []DiskSpec) error {
	seen := map[int32]bool{}
	for _, d := range disks {
		if d.Capacity <= 0 {
			return fmt.Errorf("%w: disk %d capacity %d", model.ErrInvalid, d.Key, d.Capacity)
		}
		if seen[d.Key] {
			return fmt.Errorf("%w: disk %d listed twice", model.ErrInvalid, d.Key)
		}
		seen[d.Key] = true
	}
	return nil
}

func sameDisks(have, want []DiskSpec) error {
	h := map[int32]int64{}
	for _, d := range have {
		h[d.Key] = d.Capacity
	}
	if len(have) != len(want) {
		return fmt.Errorf("%w: journal has %d disks, asked for %d", model.ErrConflict, len(have), len(want))
	}
	for _, d := range want {
		if c, ok := h[d.Key]; !ok || c != d.Capacity {
			return fmt.Errorf("%w: disk %d (capacity %d) does not match the journal", model.ErrConflict, d.Key, d.Capacity)
		}
	}
	return nil
}

// openBase opens (or creates) the base file of disk d at full capacity.
func (v *VM) openBase(d DiskSpec, create bool) error {
	path := filepath.Join(v.dir, baseName(d.Key))
	flags := os.O_RDWR
	if create {
		flags |= os.O_CREATE
	}
	f, err := os.OpenFile(path, flags, 0o644)
	if err != nil {
		return fmt.Errorf("open base disk %d: %w", d.Key, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("open base disk %d: %w", d.Key, err)
	}
	if st.Size() != d.Capacity {
		if st.Size() != 0 && !create {
			f.Close()
			return fmt.Errorf("%w: base disk %d is %d bytes, want %d", ErrCorrupt, d.Key, st.Size(), d.Capacity)
		}
		if err := f.Truncate(d.Capacity); err != nil {
			f.Close()
			return fmt.Errorf("size base disk %d: %w", d.Key, err)
		}
		if err := v.s.syncFile(f); err != nil {
			f.Close()
			return fmt.Errorf("fsync base disk %d: %w", d.Key, err)
		}
	}
	v.base[d.Key] = f
	return nil
}

// loadVM reopens a VM directory: manifest, base disks, delta disks, then a
// scan of every segment to rebuild the index.
func loadVM(s *Store, dir string) (*VM, error) {
	m, err := readManifest(dir)
	if err != nil {
		return nil, err
	}
	v := &VM{s: s, name: m.VM, dir: dir, m: *m, since: m.Since, base: map[int32]*os.File{}, idx: map[int32]*diskIndex{}}
	fail := func(err error) (*VM, error) {
		v.close()
		return nil, fmt.Errorf("reopen vm %q: %w", m.VM, err)
	}
	for _, d := range m.Disks {
		if err := v.openBase(d, false); err != nil {
			return fail(err)
		}
	}
	for _, e := range m.Layers {
		l, err := v.loadLayer(e)
		if err != nil {
			return fail(err)
		}
		v.layers = append(v.layers, l)
		s.used.Add(l.size)
	}
	v.lastID = m.LastID
	v.removeStrays()
	return v, nil
}

// replay applies one scanned record to the in-memory state.
func (v *VM) replay(seg *segment, h recHeader, off int64) error {
	if h.id <= v.m.DropThrough {
		return nil // folded away already
	}
	if h.id <= v.scanID {
		// Only a point whose append failed (fsync error) and was sent
		// again can repeat; its first copy is the same point.
		v.s.log.Warn("skipping repeated journal record", "vm", v.name, "segment", seg.path, "point", h.id, "after", v.scanID)
		return nil
	}
	v.scanID = h.id
	v.lastID = max(v.lastID, h.id)
	if h.flags&flagBaseApplied != 0 {
		if h.marker == MarkerInitialSyncDone && !v.m.InitialSyncDone {
			v.initialSyncDone(h.id, h.time)
		}
		return nil
	}
	for _, e := range h.exts {
		if v.capacity(e.disk) < e.off+e.length {
			return fmt.Errorf("%w: segment %s: point %d writes past disk %d", ErrCorrupt, seg.path, h.id, e.disk)
		}
	}
	v.addRecord(&record{id: h.id, time: h.time, kind: h.kind, marker: h.marker, seg: seg, off: off, exts: h.exts})
	return nil
}

// removeStrays deletes temp files and delta files no manifest names (left
// by a crash between writing them and the manifest).
func (v *VM) removeStrays() {
	known := map[string]bool{}
	for _, l := range v.layers {
		known[l.file] = true
	}
	ents, _ := os.ReadDir(v.dir)
	for _, e := range ents {
		n := e.Name()
		if filepath.Ext(n) == ".tmp" || (filepath.Ext(n) == ".dlt" && !known[n]) {
			v.s.log.Info("removing stray journal file", "vm", v.name, "file", n)
			os.Remove(filepath.Join(v.dir, n))
		}
	}
}

func (v *VM) initialSyncDone(id uint64, t time.Time) {
	v.m.InitialSyncDone = true
	v.m.BaseTime = t
	v.m.BaseID = id
	v.m.BaseListed = true
	v.m.DropThrough = id
}

func (v *VM) addRecord(r *record) {
	v.records = append(v.records, r)
	for _, e := range r.exts {
		x := v.idx[e.disk]
		if x == nil {
			x = &diskIndex{chunks: map[int64][]piece{}}
			v.idx[e.disk] = x
		}
		x.add(r, e)
	}
}

// rebuildIndex drops records at or below DropThrough and rebuilds the
// extent index from those left.
func (v *VM) rebuildIndex() {
	old := v.records
	v.records = nil
	v.idx = map[int32]*diskIndex{}
	for _, r := range old {
		if r.id > v.m.DropThrough {
			v.addRecord(r)
		}
	}
}

func (v *VM) capacity(disk int32) int64 {
	for _, d := range v.m.Disks {
		if d.Key == disk {
			return d.Capacity
		}
	}
	return -1
}

func (v *VM) close() error {
	var first error
	for _, f := range v.base {
		if err := f.Close(); err != nil && first == nil {
			first = err
		}
	}
	for _, l := range v.layers {
		l.f.Close()
	}
	return first
}

// Name is the VM's name.
func (v *VM) Name() string { return v.name }

// LastID is the highest durable point ID (0 if none).
func (v *VM) LastID() uint64 {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.lastID
}

// InitialSyncDone reports whether the base holds the first long-term point.
func (v *VM) InitialSyncDone() bool {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.m.InitialSyncDone
}

// Disks lists the VM's disks.
func (v *VM) Disks() []DiskSpec {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return append([]DiskSpec(nil), v.m.Disks...)
}

// AddDisk adds a disk (its base starts empty, reading as zeroes at every
// point, earlier ones included).
func (v *VM) AddDisk(d DiskSpec) error {
	v.fmu.Lock()
	defer v.fmu.Unlock()
	if v.removed.Load() {
		return fmt.Errorf("add disk %d to %s: %w", d.Key, v.name, ErrRemoved)
	}
	v.wmu.Lock()
	defer v.wmu.Unlock()
	v.manMu.Lock()
	defer v.manMu.Unlock()
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := checkDisks(append(append([]DiskSpec(nil), v.m.Disks...), d)); err != nil {
		return fmt.Errorf("add disk %d to %s: %w", d.Key, v.name, err)
	}
	if err := v.openBase(d, true); err != nil {
		return fmt.Errorf("add disk %d to %s: %w", d.Key, v.name, err)
	}
	m := v.cloneManifest()
	m.Disks = append(m.Disks, d)
	if err := v.s.writeManifest(v.dir, &m); err != nil {
		v.base[d.Key].Close()
		delete(v.base, d.Key)
		return fmt.Errorf("add disk %d to %s: %w", d.Key, v.name, err)
	}
	v.m = m
	return nil
}

// commitManifest writes m and then, with the manifest durable, applies
// swap to the in-memory state, so no other manifest write can come
// between the two.
func (v *VM) commitManifest(m *manifest, swap func()) error {
	v.manMu.Lock()
	defer v.manMu.Unlock()
	if err := v.s.writeManifest(v.dir, m); err != nil {
		return err
	}
	v.mu.Lock()
	swap()
	v.mu.Unlock()
	return nil
}

// saveManifest writes the current in-memory state.
func (v *VM) saveManifest() error {
	v.manMu.Lock()
	defer v.manMu.Unlock()
	v.mu.RLock()
	m := v.cloneManifest()
	v.mu.RUnlock()
	return v.s.writeManifest(v.dir, &m)
}

// validate checks a point against the VM's disks before anything is written.
func (v *VM) validate(p *Point) error {
	if p.ID == 0 {
		return fmt.Errorf("%w: point ID 0", model.ErrInvalid)
	}
	if p.Kind < KindInitial || p.Kind > KindShortTerm {
		return fmt.Errorf("%w: point %d: unknown kind %d", model.ErrInvalid, p.ID, p.Kind)
	}
	if p.Marker > MarkerResyncDone {
		return fmt.Errorf("%w: point %d: unknown marker %d", model.ErrInvalid, p.ID, p.Marker)
	}
	if len(p.Extents) > 1<<24 {
		return fmt.Errorf("%w: point %d: %d extents", model.ErrInvalid, p.ID, len(p.Extents))
	}
	for i, e := range p.Extents {
		c := v.capacity(e.Disk)
		if c < 0 {
			return fmt.Errorf("%w: point %d extent %d: unknown disk %d", model.ErrInvalid, p.ID, i, e.Disk)
		}
		if e.Off < 0 || e.Len <= 0 || e.Off+e.Len > c || e.Off+e.Len < e.Off {
			return fmt.Errorf("%w: point %d extent %d: range %d+%d outside disk %d of %d bytes", model.ErrInvalid, p.ID, i, e.Off, e.Len, e.Disk, c)
		}
		switch e.Op {
		case OpData:
			if int64(len(e.Data)) != e.Len {
				return fmt.Errorf("%w: point %d extent %d: %d data bytes for length %d", model.ErrInvalid, p.ID, i, len(e.Data), e.Len)
			}
		case OpZero, OpTrim:
			if len(e.Data) != 0 {
				return fmt.Errorf("%w: point %d extent %d: zero extent with data", model.ErrInvalid, p.ID, i)
			}
		default:
			return fmt.Errorf("%w: point %d extent %d: unknown op %d", model.ErrInvalid, p.ID, i, e.Op)
		}
	}
	if size := recordSize(v.name, p, false); size > maxRecordBytes {
		return fmt.Errorf("%w: point %d: %d bytes is over the %d byte limit", model.ErrInvalid, p.ID, size, maxRecordBytes)
	}
	return nil
}

// Append makes p durable. Concurrent appends (of any VM of the store) share
// one fsync per segment. A point at or below LastID is already there: it is
// acknowledged again (nil) and not written twice. Before the initial sync
// is done, points go straight into the base files; the one flagged
// MarkerInitialSyncDone makes the base the first long-term point.
func (v *VM) Append(ctx context.Context, p *Point) error {
	wait, err := v.AppendAsync(ctx, p)
	if err != nil {
		return err
	}
	return wait()
}

// AppendAsync queues p behind the VM's earlier appends and returns a wait
// that says when p is durable (or failed). Several points of a VM may so
// share one fsync: the caller queues the next point while waiting for the
// previous one. Points must be queued in ID order; when a queued point
// fails, every point queued after it fails too and nothing newer is
// accepted until all of them have been answered, so a point is never
// durable without its predecessor. Before the initial sync is done,
// appends are synchronous (they write the base files). The record is
// written from p's extent data itself: the caller keeps that data
// unchanged until wait has returned.
func (v *VM) AppendAsync(ctx context.Context, p *Point) (wait func() error, err error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("append point %d of %s: %w", p.ID, v.name, err)
	}
	v.wmu.Lock()
	defer v.wmu.Unlock()
	if v.removed.Load() {
		return nil, fmt.Errorf("append point %d of %s: %w", p.ID, v.name, ErrRemoved)
	}
	if v.inflight.Load() == 0 {
		// everything queued was answered: failures are over, start again
		// from what is durable
		v.pmu.Lock()
		v.failed = nil
		v.pmu.Unlock()
		v.tail = nil
	} else if err := v.poisoned(); err != nil {
		return nil, fmt.Errorf("append point %d of %s: an earlier point failed: %w", p.ID, v.name, err)
	}
	v.mu.RLock()
	last, done := v.lastID, v.m.InitialSyncDone
	err = v.validate(p)
	v.mu.RUnlock()
	if v.tail != nil && v.queued > last {
		last = v.queued
	}
	if p.ID <= last && p.ID != 0 {
		if t := v.tail; t != nil && p.ID > v.lastIDNow() {
			// queued already: durable when the newest queued one is
			return func() error { <-t.done; return t.res }, nil
		}
		return func() error { return nil }, nil
	}
	if err != nil {
		return nil, fmt.Errorf("append point of %s: %w", v.name, err)
	}
	if !done || p.Marker == MarkerInitialSyncDone {
		if t := v.tail; t != nil {
			<-t.done // the base path runs alone
			if t.res != nil {
				return nil, fmt.Errorf("append point %d of %s: an earlier point failed: %w", p.ID, v.name, t.res)
			}
		}
		err := v.appendSync(p, !done)
		return func() error { return err }, nil
	}
	// The record is written from p's extent data directly (no copy into
	// a record buffer): p must stay unchanged until wait returns.
	vec, size := recordVec(v.name, p)
	req := &appendReq{vm: v, id: p.ID, vec: vec, size: size, p: p, done: make(chan struct{})}
	if v.s.closed.Load() {
		return nil, fmt.Errorf("append point %d of %s: %w", p.ID, v.name, ErrClosed)
	}
	v.inflight.Add(1)
	select {
	case v.s.reqs <- req:
	case <-v.s.quit:
		v.inflight.Add(-1)
		return nil, fmt.Errorf("append point %d of %s: %w", p.ID, v.name, ErrClosed)
	}
	v.queued, v.tail = p.ID, req
	return func() error {
		select {
		case <-req.done:
		case <-v.s.done:
			// the committer answers everything it took before it stops
			select {
			case <-req.done:
			default:
				return fmt.Errorf("append point %d of %s: %w", p.ID, v.name, ErrClosed)
			}
		}
		if req.res != nil {
			return fmt.Errorf("append point %d of %s: %w", p.ID, v.name, req.res)
		}
		return nil
	}, nil
}

func (v *VM) lastIDNow() uint64 {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.lastID
}

func (v *VM) poisoned() error {
	v.pmu.Lock()
	defer v.pmu.Unlock()
	return v.failed
}

func (v *VM) poison(err error) {
	v.pmu.Lock()
	if v.failed == nil {
		v.failed = err
	}
	v.pmu.Unlock()
}

// finishAsync is called by the committer, in commit order, once an
// asynchronous record is durable or failed: the record is published before
// its waiter is released.
func (v *VM) finishAsync(r *appendReq, err error) {
	if err == nil {
		v.mu.Lock()
		v.lastID = r.id
		h, perr := parseRecordHeaderFromPoint(v.name, r.p)
		if perr == nil {
			v.addRecord(&record{id: r.id, time: recordTime(r.p.Time), kind: r.p.Kind, marker: r.p.Marker, seg: r.seg, off: r.off, exts: h})
		}
		v.mu.Unlock()
	} else {
		v.poison(err)
	}
	r.res = err
	r.p, r.vec = nil, nil
	v.inflight.Add(-1)
	close(r.done)
}

// appendSync is the synchronous append (base path and the point that
// completes the initial sync), with wmu held.
func (v *VM) appendSync(p *Point, baseApplied bool) error {
	if baseApplied {
		if err := v.applyToBase(p); err != nil {
			return fmt.Errorf("append point %d of %s: %w", p.ID, v.name, err)
		}
	}
	size := recordSize(v.name, p, baseApplied)
	buf := appendRecord(v.s.getBuf(size), v.name, p, baseApplied)
	req := &appendReq{vm: v, id: p.ID, vec: [][]byte{buf}, size: int64(len(buf))}
	err := v.s.submit(req)
	v.s.putBuf(buf)
	if err != nil {
		return fmt.Errorf("append point %d of %s: %w", p.ID, v.name, err)
	}
	v.mu.Lock()
	v.lastID = p.ID
	if baseApplied {
		if p.Marker == MarkerInitialSyncDone {
			v.initialSyncDone(p.ID, recordTime(p.Time))
		}
	} else {
		h, perr := parseRecordHeaderFromPoint(v.name, p)
		if perr == nil {
			v.addRecord(&record{id: p.ID, time: recordTime(p.Time), kind: p.Kind, marker: p.Marker, seg: req.seg, off: req.off, exts: h})
		}
	}
	v.mu.Unlock()
	if baseApplied && p.Marker == MarkerInitialSyncDone {
		// The record already makes this durable; the manifest keeps it
		// once the record's segment is folded away.
		if err := v.saveManifest(); err != nil {
			v.s.log.Warn("manifest after initial sync", "vm", v.name, "err", err.Error())
		}
	}
	return nil
}

// parseRecordHeaderFromPoint computes the extent table of p's record
// without re-reading it.
func parseRecordHeaderFromPoint(vm string, p *Point) ([]extMeta, error) {
	exts := make([]extMeta, len(p.Extents))
	data := int64(recFixed + len(vm) + 4 + len(p.Extents)*extEntryBytes)
	for i, e := range p.Extents {
		exts[i] = extMeta{disk: e.Disk, op: normOp(e.Op), off: e.Off, length: e.Len}
		if e.Op == OpData {
			exts[i].dataPos = data
			data += e.Len
		}
	}
	return exts, nil
}

// applyToBase writes an initial-sync point into the base files and makes
// them durable. Rewriting the same point after a crash gives the same
// bytes, so resending everything above LastID is safe.
func (v *VM) applyToBase(p *Point) error {
	touched := map[int32]bool{}
	for _, e := range p.Extents {
		f := v.base[e.Disk]
		var err error
		if e.Op == OpData {
			_, err = f.WriteAt(e.Data, e.Off)
		} else {
			err = punchZero(f, e.Off, e.Len)
		}
		if err != nil {
			return fmt.Errorf("write base disk %d at %d: %w", e.Disk, e.Off, err)
		}
		touched[e.Disk] = true
	}
	for d := range touched {
		if err := v.s.syncFile(v.base[d]); err != nil {
			return fmt.Errorf("fsync base disk %d: %w", d, err)
		}
	}
	return nil
}

// List returns the listed points, oldest first: the base and the delta
// disks that are long-term points, and the short-term points still in the
// window. A long-term point made from a short-term one is listed once, as
// long-term.
func (v *VM) List() []PointInfo {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.listLocked()
}

func (v *VM) listLocked() []PointInfo {
	var out []PointInfo
	if !v.m.InitialSyncDone {
		return nil
	}
	long := map[uint64]bool{}
	if v.m.BaseListed {
		out = append(out, PointInfo{ID: v.m.BaseID, Time: v.m.BaseTime, Kind: model.PointLongTerm})
		long[v.m.BaseID] = true
	}
	for _, l := range v.layers {
		if l.listed {
			out = append(out, PointInfo{ID: l.id, Time: l.time, Kind: model.PointLongTerm})
			long[l.id] = true
		}
	}
	for _, r := range v.records {
		if v.shortListed(r) && !long[r.id] {
			out = append(out, PointInfo{ID: r.id, Time: r.time, Kind: model.PointShortTerm})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (v *VM) shortListed(r *record) bool {
	return r.kind == KindShortTerm && r.id > v.m.ShortCut && r.id > v.m.BaseID
}

// listed reports whether id is a listed point.
func (v *VM) listed(id uint64) bool {
	for _, p := range v.listLocked() {
		if p.ID == id {
			return true
		}
	}
	return false
}
