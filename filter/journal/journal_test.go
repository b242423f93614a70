package journal

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
)

// smallVM opens a store with one VM of one small disk, initial sync done,
// and n short-term points of a few small writes each.
func smallVM(t *testing.T, dir string, opts Options, n int) (*Store, *VM, map[uint64]diskModel, uint64) {
	t.Helper()
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	snaps, id := fillVM(t, s, "vm-a", 7, []DiskSpec{{Key: 1, Capacity: 48 << 10}}, n, 2, 60)
	v, _ := s.VM("vm-a")
	return s, v, snaps, id
}

type recPos struct {
	seg        string
	start, end int64
	id         uint64
}

// records lists every record of a VM directory in order.
func recordsIn(t *testing.T, vdir string) []recPos {
	t.Helper()
	names, _ := filepath.Glob(filepath.Join(vdir, "seg-*.log"))
	sort.Strings(names)
	var out []recPos
	for _, n := range names {
		f, err := os.Open(n)
		if err != nil {
			t.Fatal(err)
		}
		st, _ := f.Stat()
		rr := &recordReader{r: f, size: st.Size()}
		for {
			h, off, err := rr.next()
			if err != nil {
				break
			}
			out = append(out, recPos{seg: n, start: off, end: off + h.size, id: h.id})
		}
		f.Close()
	}
	return out
}

func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
}

func vmDir(dir string) string { return filepath.Join(dir, vmDirName("vm-a")) }

// TestTornTailEveryByte tears the last record at every byte offset (the
// rest zeroes, as preallocated, or garbage): reopening keeps every earlier
// point, and the lost point can be appended again.
func TestTornTailEveryByte(t *testing.T) {
	dir := t.TempDir()
	s, _, snaps, last := smallVM(t, dir, Options{SegmentBytes: 64 << 10, Logger: testLogger(t)}, 5)
	s.Close()
	recs := recordsIn(t, filepath.Join(dir, "journal"))
	lr := recs[len(recs)-1]
	if lr.id != last {
		t.Fatalf("last record is %d, want %d", lr.id, last)
	}
	r := rand.New(rand.NewPCG(1, 2))
	size := lr.end - lr.start
	for k := int64(0); k < size; k++ {
		for _, garbage := range []bool{false, true} {
			work := t.TempDir()
			copyDir(t, dir, work)
			seg := filepath.Join(work, filepath.Base(filepath.Dir(lr.seg)), filepath.Base(lr.seg))
			tail := make([]byte, size-k)
			if garbage {
				fillRandom(r, tail)
			}
			f, err := os.OpenFile(seg, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteAt(tail, lr.start+k)
			f.Close()
			s2, err := Open(work, Options{SegmentBytes: 64 << 10, NoSync: true})
			if err != nil {
				t.Fatalf("torn at %d (garbage %v): reopen: %v", k, garbage, err)
			}
			v2, _ := s2.VM("vm-a")
			if v2.LastID() != last-1 {
				t.Fatalf("torn at %d: LastID %d, want %d", k, v2.LastID(), last-1)
			}
			l := v2.List()
			if l[len(l)-1].ID != last-1 {
				t.Fatalf("torn at %d: list %s", k, ids(l))
			}
			if k%16 == 0 {
				for _, p := range l {
					checkPoint(t, r, v2, p.ID, snaps[p.ID])
				}
			}
			s2.Close()
		}
	}
	// After a cut the lost point is appended again and reads right.
	work := t.TempDir()
	copyDir(t, dir, work)
	seg := filepath.Join(work, filepath.Base(filepath.Dir(lr.seg)), filepath.Base(lr.seg))
	f, _ := os.OpenFile(seg, os.O_RDWR, 0)
	f.WriteAt([]byte{0xff, 0xff}, lr.start+size/2)
	f.Close()
	s3, err := Open(work, Options{SegmentBytes: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer s3.Close()
	v3, _ := s3.VM("vm-a")
	want := snaps[last]
	p := &Point{ID: last, Time: t0.Add(time.Hour), Kind: KindShortTerm, Extents: []Extent{{Disk: 1, Off: 0, Op: OpData, Len: int64(len(want[1])), Data: want[1]}}}
	mustAppend(t, v3, p)
	checkPoint(t, r, v3, last, want)
}

// TestCorruptMiddleRecord: a bad record in the middle of the newest
// segment cuts there (earlier points exact, later ones gone, never wrong
// data); one in an older segment is a clear error.
func TestCorruptMiddleRecord(t *testing.T) {
	dir := t.TempDir()
	s, _, snaps, _ := smallVM(t, dir, Options{SegmentBytes: 1 << 10, Logger: testLogger(t)}, 30)
	s.Close()
	recs := recordsIn(t, filepath.Join(dir, "journal"))
	segs := map[string]bool{}
	for _, r := range recs {
		segs[r.seg] = true
	}
	if len(segs) < 3 {
		t.Fatalf("want several segments, have %d", len(segs))
	}
	lastSeg := recs[len(recs)-1].seg
	var inLast []recPos
	for _, r := range recs {
		if r.seg == lastSeg {
			inLast = append(inLast, r)
		}
	}
	if len(inLast) < 3 {
		t.Fatalf("want 3 records in the newest segment, have %d", len(inLast))
	}
	flip := func(work string, rp recPos) {
		seg := filepath.Join(work, "journal", filepath.Base(rp.seg))
		f, err := os.OpenFile(seg, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1)
		at := rp.start + (rp.end-rp.start)/2
		f.ReadAt(b, at)
		b[0] ^= 0x40
		f.WriteAt(b, at)
		f.Close()
	}
	r := rand.New(rand.NewPCG(3, 4))
	t.Run("newest segment", func(t *testing.T) {
		work := t.TempDir()
		copyDir(t, dir, work)
		bad := inLast[1]
		flip(work, bad)
		s2, err := Open(work, Options{SegmentBytes: 1 << 10, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		defer s2.Close()
		v2, _ := s2.VM("vm-a")
		if v2.LastID() != bad.id-1 {
			t.Fatalf("LastID %d, want %d", v2.LastID(), bad.id-1)
		}
		for _, p := range v2.List() {
			if p.ID >= bad.id {
				t.Fatalf("point %d listed after the cut", p.ID)
			}
			checkPoint(t, r, v2, p.ID, snaps[p.ID])
		}
	})
	t.Run("older segment", func(t *testing.T) {
		work := t.TempDir()
		copyDir(t, dir, work)
		flip(work, recs[len(recs)-len(inLast)-1])
		if _, err := Open(work, Options{SegmentBytes: 1 << 10, Logger: testLogger(t)}); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("open with a corrupt older segment: %v, want ErrCorrupt", err)
		}
	})
	t.Run("manifest", func(t *testing.T) {
		work := t.TempDir()
		copyDir(t, dir, work)
		p := filepath.Join(vmDir(work), manifestName)
		b, _ := os.ReadFile(p)
		b[len(b)/2] ^= 0x01
		os.WriteFile(p, b, 0o644)
		if _, err := Open(work, Options{}); err == nil {
			t.Fatal("open with a corrupt manifest succeeded")
		}
	})
}

// TestCorruptDelta: a damaged delta disk is refused at open.
func TestCorruptDelta(t *testing.T) {
	dir := t.TempDir()
	s, v, _, _ := smallVM(t, dir, Options{SegmentBytes: 64 << 10}, 4)
	if _, err := v.CreateLongTerm(t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	names, _ := filepath.Glob(filepath.Join(vmDir(dir), "delta-*.dlt"))
	if len(names) != 1 {
		t.Fatalf("delta files: %v", names)
	}
	b, _ := os.ReadFile(names[0])
	b[len(b)-6] ^= 0x10
	os.WriteFile(names[0], b, 0o644)
	if _, err := Open(dir, Options{}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open with a corrupt delta: %v, want ErrCorrupt", err)
	}
}

// TestENOSPC: a full store fails the append with ENOSPC, lists nothing
// partial, stays consistent across a reopen, and appends again once space
// is back.
func TestENOSPC(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentBytes: 16 << 10, MaxBytes: 64 << 10, Logger: testLogger(t)}
	s, v, snaps, id := smallVM(t, dir, opts, 2)
	defer func() { s.Close() }()
	r := rand.New(rand.NewPCG(5, 5))
	state := snaps[id].clone()
	disks := v.Disks()
	var failed *Point
	for range 100 {
		p := &Point{ID: id + 1, Time: t0.Add(time.Duration(id) * time.Minute), Kind: KindShortTerm, Extents: randomExtents(r, disks, 3, 3000)}
		err := v.Append(context.Background(), p)
		if err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("append on a full store: %v, want ENOSPC", err)
			}
			failed = p
			break
		}
		id++
		state.apply(p)
		snaps[id] = state.clone()
	}
	if failed == nil {
		t.Fatal("the store never filled up")
	}
	check := func(v *VM) {
		t.Helper()
		if v.LastID() != id {
			t.Fatalf("LastID %d, want %d", v.LastID(), id)
		}
		l := v.List()
		if l[len(l)-1].ID != id {
			t.Fatalf("list %s, want newest %d", ids(l), id)
		}
		for _, p := range l {
			checkPoint(t, r, v, p.ID, snaps[p.ID])
		}
	}
	check(v)
	// A long-term point needs space too: it fails cleanly.
	if _, err := v.CreateLongTerm(t0.Add(time.Hour)); err == nil || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("long-term point on a full store: %v", err)
	}
	check(v)
	s.Close()
	if s, _ = Open(dir, opts); s == nil {
		t.Fatal("reopen failed")
	}
	v, _ = s.VM("vm-a")
	check(v)
	if err := v.Append(context.Background(), failed); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("append still full: %v", err)
	}
	s.SetMaxBytes(0)
	mustAppend(t, v, failed)
	id++
	state.apply(failed)
	snaps[id] = state.clone()
	check(v)
}

// TestGroupCommitSharesFsyncs: concurrent appenders of several VMs share
// fsyncs, and every point is durable and exact afterwards.
func TestGroupCommitSharesFsyncs(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentBytes: 1 << 20, CommitWindow: 3 * time.Millisecond, Logger: testLogger(t)}
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	const vms, points = 8, 12
	disks := []DiskSpec{{Key: 1, Capacity: 64 << 10}}
	type res struct {
		snaps map[uint64]diskModel
	}
	results := make([]res, vms)
	var wg sync.WaitGroup
	errc := make(chan error, vms)
	for i := range vms {
		v, err := s.OpenVM("vm-"+string(rune('a'+i)), disks)
		if err != nil {
			t.Fatal(err)
		}
		state := newModel(disks)
		p := &Point{ID: 1, Time: t0, Kind: KindInitial, Marker: MarkerInitialSyncDone}
		mustAppend(t, v, p)
		results[i].snaps = map[uint64]diskModel{1: state.clone()}
		wg.Add(1)
		go func(i int, v *VM) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(i), 1))
			for id := uint64(2); id < 2+points; id++ {
				p := &Point{ID: id, Time: t0.Add(time.Duration(id) * time.Second), Kind: KindShortTerm, Extents: randomExtents(r, disks, 3, 2000)}
				if err := v.Append(context.Background(), p); err != nil {
					errc <- err
					return
				}
				state.apply(p)
				results[i].snaps[id] = state.clone()
			}
		}(i, v)
	}
	before := s.fsyncs.Load()
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	fsyncs := s.fsyncs.Load() - before
	if fsyncs >= vms*points {
		t.Fatalf("%d fsyncs for %d appends: commits are not shared", fsyncs, vms*points)
	}
	t.Logf("%d appends, %d segment fsyncs", vms*points, fsyncs)
	if st := s.Stats(); st.Appends < vms*(points+1) || st.Batches > st.Appends || st.Fsyncs != s.fsyncs.Load() || st.BytesWritten <= 0 {
		t.Fatalf("stats %+v", st)
	}
	s.Close()
	s, err = Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := len(s.VMs()); got != vms {
		t.Fatalf("%d VMs after reopen, want %d", got, vms)
	}
	r := rand.New(rand.NewPCG(9, 9))
	for i := range vms {
		v, _ := s.VM("vm-" + string(rune('a'+i)))
		if v.LastID() != 1+points {
			t.Fatalf("vm %d LastID %d", i, v.LastID())
		}
		for _, p := range v.List() {
			checkPoint(t, r, v, p.ID, results[i].snaps[p.ID])
		}
	}
}

// TestIdempotentAndBadInput: a resent point changes nothing; bad points
// get a clear error and change nothing.
func TestIdempotentAndBadInput(t *testing.T) {
	dir := t.TempDir()
	s, v, snaps, id := smallVM(t, dir, Options{SegmentBytes: 64 << 10}, 3)
	defer s.Close()
	r := rand.New(rand.NewPCG(1, 1))
	resend := &Point{ID: id, Time: t0, Kind: KindShortTerm, Extents: []Extent{{Disk: 1, Off: 0, Op: OpData, Len: 3, Data: []byte("xyz")}}}
	mustAppend(t, v, resend)
	checkPoint(t, r, v, id, snaps[id])
	bad := []Point{
		{ID: id + 1, Kind: KindShortTerm, Extents: []Extent{{Disk: 9, Off: 0, Op: OpData, Len: 1, Data: []byte{1}}}},
		{ID: id + 1, Kind: KindShortTerm, Extents: []Extent{{Disk: 1, Off: 48<<10 - 1, Op: OpData, Len: 2, Data: []byte{1, 2}}}},
		{ID: id + 1, Kind: KindShortTerm, Extents: []Extent{{Disk: 1, Off: -1, Op: OpZero, Len: 2}}},
		{ID: id + 1, Kind: KindShortTerm, Extents: []Extent{{Disk: 1, Off: 0, Op: OpData, Len: 2, Data: []byte{1}}}},
		{ID: id + 1, Kind: KindShortTerm, Extents: []Extent{{Disk: 1, Off: 0, Op: 9, Len: 2}}},
		{ID: id + 1, Kind: 7},
		{ID: id + 1, Kind: KindShortTerm, Marker: 9},
	}
	for i := range bad {
		err := v.Append(context.Background(), &bad[i])
		if !errors.Is(err, model.ErrInvalid) {
			t.Fatalf("bad point %d: %v, want ErrInvalid", i, err)
		}
	}
	if v.LastID() != id || len(v.List()) != 4 {
		t.Fatalf("bad input changed the journal: LastID %d, list %s", v.LastID(), ids(v.List()))
	}
	if _, err := v.OpenPoint(id+1, 1); !errors.Is(err, ErrNotListed) {
		t.Fatalf("open unknown point: %v", err)
	}
	if _, err := v.OpenPoint(id, 5); !errors.Is(err, model.ErrNotFound) {
		t.Fatalf("open unknown disk: %v", err)
	}
	if _, err := s.OpenVM("vm-a", []DiskSpec{{Key: 1, Capacity: 1}}); !errors.Is(err, model.ErrConflict) {
		t.Fatalf("reopen with other disks: %v", err)
	}
	pr, _ := v.OpenPoint(id, 1)
	if _, err := pr.ReadAt(make([]byte, 10), pr.Size()); err != io.EOF {
		t.Fatalf("read past the end: %v", err)
	}
}

// TestInitialSyncCrashResend: a crash after an initial point reached the
// base but before its record leaves LastID below it; resending everything
// above LastID gives the same disks.
func TestInitialSyncCrashResend(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentBytes: 64 << 10}
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	disks := []DiskSpec{{Key: 1, Capacity: 100 << 10}, {Key: 2, Capacity: 70<<10 + 3}}
	v, _ := s.OpenVM("vm-a", disks)
	r := rand.New(rand.NewPCG(4, 4))
	var pts []*Point
	for i := uint64(1); i <= 6; i++ {
		p := &Point{ID: i, Time: t0.Add(time.Duration(i) * time.Second), Kind: KindInitial, Extents: randomExtents(r, disks, 5, 30<<10)}
		pts = append(pts, p)
	}
	pts[5].Marker = MarkerInitialSyncDone
	state := newModel(disks)
	for _, p := range pts[:3] {
		mustAppend(t, v, p)
		state.apply(p)
	}
	if len(v.List()) != 0 || v.InitialSyncDone() {
		t.Fatal("listed before the initial sync is done")
	}
	// Point 4 reaches the base, then the process dies.
	if err := v.applyToBase(pts[3]); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	v, _ = s.VM("vm-a")
	if v.LastID() != 3 {
		t.Fatalf("LastID %d, want 3", v.LastID())
	}
	for _, p := range pts {
		mustAppend(t, v, p) // 1..3 are acknowledged again, 4..6 applied
		if p.ID > 3 {
			state.apply(p)
		}
	}
	l := v.List()
	if !v.InitialSyncDone() || len(l) != 1 || l[0].ID != 6 || l[0].Kind != model.PointLongTerm {
		t.Fatalf("after initial sync: %s", ids(l))
	}
	checkPoint(t, r, v, 6, state)
	checkExport(t, v, 6, state)
}

// TestAddDiskAndSparseExport: a disk added later reads as zeroes at older
// points and as written at newer ones; exports leave zero ranges as holes.
func TestAddDiskAndSparseExport(t *testing.T) {
	dir := t.TempDir()
	s, v, snaps, id := smallVM(t, dir, Options{SegmentBytes: 64 << 10}, 2)
	defer func() { s.Close() }()
	r := rand.New(rand.NewPCG(8, 8))
	old := id
	nd := DiskSpec{Key: 7, Capacity: 8 << 20}
	if err := v.AddDisk(nd); err != nil {
		t.Fatal(err)
	}
	if err := v.AddDisk(nd); !errors.Is(err, model.ErrInvalid) {
		t.Fatalf("adding a disk twice: %v", err)
	}
	state := snaps[id].clone()
	state[7] = make([]byte, nd.Capacity)
	id++
	p := &Point{ID: id, Time: t0.Add(time.Hour), Kind: KindShortTerm, Extents: []Extent{{Disk: 7, Off: 5 << 20, Op: OpData, Len: 3, Data: []byte("end")}}}
	mustAppend(t, v, p)
	state.apply(p)
	checkPoint(t, r, v, id, state)
	pr, err := v.OpenPoint(old, 7)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 3)
	if _, err := pr.ReadAt(b, 5<<20); err != nil || string(b) != "\x00\x00\x00" {
		t.Fatalf("new disk at an older point: %q %v", b, err)
	}
	path := filepath.Join(t.TempDir(), "d7.img")
	if err := v.Export(id, 7, path); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != nd.Capacity || st.Blocks*512 >= nd.Capacity/2 {
		t.Fatalf("export: size %d, %d bytes allocated; want a sparse %d-byte image", st.Size, st.Blocks*512, nd.Capacity)
	}
	s.Close()
	s, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	v, _ = s.VM("vm-a")
	if len(v.Disks()) != 2 {
		t.Fatalf("disks after reopen: %v", v.Disks())
	}
	checkPoint(t, r, v, id, state)
}

// TestCrashDuringMergeIntoBase: the base is rewritten with the layers to
// merge but the process dies before the manifest says so; after a reopen
// every listed point still reads exactly, and retention completes.
func TestCrashDuringMergeIntoBase(t *testing.T) {
	withChunk(t, 8<<10)
	dir := t.TempDir()
	opts := Options{SegmentBytes: 64 << 10}
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	disks := []DiskSpec{{Key: 1, Capacity: 64<<10 + 3}}
	v, _ := s.OpenVM("vm-m", disks)
	r := rand.New(rand.NewPCG(21, 21))
	state := newModel(disks)
	var id uint64
	clock := t0
	initialSync(t, r, v, disks, state, &id, &clock)
	snaps := map[uint64]diskModel{id: state.clone()}
	add := func(n int) {
		for range n {
			id++
			clock = clock.Add(time.Second)
			p := &Point{ID: id, Time: clock, Kind: KindShortTerm, Extents: randomExtents(r, disks, 4, 8<<10)}
			state.apply(p)
			mustAppend(t, v, p)
			snaps[id] = state.clone()
		}
	}
	add(5)
	clock = clock.Add(time.Second)
	lt1, err := v.CreateLongTerm(clock)
	if err != nil {
		t.Fatal(err)
	}
	add(5)
	// The base (first long-term point) and the early short-term points
	// expire; the delta disk is then the oldest listed point.
	now := clock
	if err := v.retainShort(now, 3*time.Second, now.Sub(t0)-5*time.Second); err != nil {
		t.Fatal(err)
	}
	v.mu.RLock()
	listed := v.listLocked()
	var merge []*layer
	for i := len(v.layers) - 1; i >= 0; i-- {
		if v.layers[i].id <= listed[0].ID {
			merge = append(merge, v.layers[i])
		}
	}
	if len(merge) == 0 || merge[0].id != lt1.ID || listed[0].ID != lt1.ID {
		v.mu.RUnlock()
		t.Fatalf("setup: listed %s, %d layers to merge", ids(listed), len(merge))
	}
	plan := v.spans(view{hi: merge[0].id, floor: merge[0].id, layers: merge})
	v.mu.RUnlock()
	if err := v.applyToBaseFiles(plan); err != nil {
		t.Fatal(err)
	}
	s.Close() // the process dies here: the manifest still has the layers
	s, err = Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	v, _ = s.VM("vm-m")
	after := v.List()
	if ids(after) != ids(listed) {
		t.Fatalf("listing changed across the crash: %s, want %s", ids(after), ids(listed))
	}
	for _, p := range after {
		checkPoint(t, r, v, p.ID, snaps[p.ID])
	}
	if err := v.ApplyRetention(now, 3*time.Second, now.Sub(t0)-5*time.Second); err != nil {
		t.Fatal(err)
	}
	v.mu.RLock()
	base := v.m.BaseID
	v.mu.RUnlock()
	if base != lt1.ID {
		t.Fatalf("base is point %d, want %d", base, lt1.ID)
	}
	for _, p := range v.List() {
		checkPoint(t, r, v, p.ID, snaps[p.ID])
	}
}

// TestFailedFsync: an append whose fsync fails returns the error and is not
// acknowledged; the segment is abandoned, the point is sent again and
// lands once; a reopen reads every point exactly.
func TestFailedFsync(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentBytes: 64 << 10, Logger: testLogger(t)}
	s, v, snaps, id := smallVM(t, dir, opts, 3)
	defer func() { s.Close() }()
	r := rand.New(rand.NewPCG(6, 6))
	state := snaps[id].clone()
	p := &Point{ID: id + 1, Time: t0.Add(time.Hour), Kind: KindShortTerm, Extents: randomExtents(r, v.Disks(), 3, 500)}
	var once sync.Once
	s.syncErr = func() error {
		var err error
		once.Do(func() { err = syscall.EIO })
		return err
	}
	if err := v.Append(context.Background(), p); !errors.Is(err, syscall.EIO) {
		t.Fatalf("append with a failing fsync: %v", err)
	}
	if v.LastID() != id {
		t.Fatalf("LastID %d after a failed append, want %d", v.LastID(), id)
	}
	mustAppend(t, v, p)
	id++
	state.apply(p)
	snaps[id] = state.clone()
	q := &Point{ID: id + 1, Time: t0.Add(2 * time.Hour), Kind: KindShortTerm, Extents: randomExtents(r, v.Disks(), 3, 500)}
	mustAppend(t, v, q)
	id++
	state.apply(q)
	snaps[id] = state.clone()
	s.Close()
	if s, _ = Open(dir, opts); s == nil {
		t.Fatal("reopen failed")
	}
	v, _ = s.VM("vm-a")
	if v.LastID() != id {
		t.Fatalf("LastID %d after reopen, want %d", v.LastID(), id)
	}
	for _, pi := range v.List() {
		checkPoint(t, r, v, pi.ID, snaps[pi.ID])
	}
}
