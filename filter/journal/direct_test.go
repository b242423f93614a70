package journal

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// directWorks reports whether dir's file system takes direct writes.
func directWorks(t *testing.T, dir string) bool {
	t.Helper()
	p := filepath.Join(dir, "probe")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(p)
	f := openDirect(p)
	if f == nil {
		return false
	}
	f.Close()
	return true
}

// directPoints appends points whose records are small (page cache), just
// over directMin, larger than the staging buffer, and unaligned in length,
// in an order that puts page-cache records right after direct ones.
func directPoints(t *testing.T, v *VM, state diskModel, id *uint64, snaps map[uint64]diskModel) {
	t.Helper()
	r := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int64{100, directMin + 3, stageBytes + 12345, 1000, 200 << 10, 5, stageBytes} {
		*id++
		data := make([]byte, n)
		fillRandom(r, data)
		off := r.Int64N(int64(len(state[1])) - n)
		p := &Point{ID: *id, Time: t0.Add(time.Duration(*id) * time.Second), Kind: KindShortTerm,
			Extents: []Extent{{Disk: 1, Off: off, Op: OpData, Len: n, Data: data}}}
		state.apply(p)
		mustAppend(t, v, p)
		snaps[*id] = state.clone()
	}
}

// Big records go through direct I/O at multiples of directAlign, small
// ones through the page cache right after the record before them; every
// point reads back exactly, before and after a reopen, and appends go on
// after it. With BufferedIO the records lie back to back.
func TestDirectRecords(t *testing.T) {
	for _, buffered := range []bool{false, true} {
		t.Run(map[bool]string{false: "direct", true: "buffered"}[buffered], func(t *testing.T) {
			dir := t.TempDir()
			if !buffered && !directWorks(t, dir) {
				t.Skip("the test directory's file system has no direct I/O")
			}
			opts := Options{SegmentBytes: 32 << 20, Logger: testLogger(t), BufferedIO: buffered}
			s, err := Open(dir, opts)
			if err != nil {
				t.Fatal(err)
			}
			disks := []DiskSpec{{Key: 1, Capacity: 6 << 20}}
			v, err := s.OpenVM("vm-a", disks)
			if err != nil {
				t.Fatal(err)
			}
			r := rand.New(rand.NewPCG(1, 2))
			state := newModel(disks)
			var id uint64
			clock := t0
			initialSync(t, r, v, disks, state, &id, &clock)
			snaps := map[uint64]diskModel{id: state.clone()}
			directPoints(t, v, state, &id, snaps)
			for pid, want := range snaps {
				checkPoint(t, r, v, pid, want)
			}
			s.Close()

			recs := recordsIn(t, filepath.Join(dir, "journal"))
			if len(recs) < 8 {
				t.Fatalf("%d records", len(recs))
			}
			aligned := 0
			for i := 1; i < len(recs); i++ {
				prev, rec := recs[i-1], recs[i]
				if rec.seg != prev.seg {
					continue
				}
				big := rec.end-rec.start >= directMin
				switch {
				case big && !buffered:
					if rec.start%directAlign != 0 || rec.start < prev.end || rec.start >= alignUp(prev.end)+directAlign {
						t.Fatalf("direct record %d at %d (previous ends at %d)", rec.id, rec.start, prev.end)
					}
					aligned++
				case rec.start != prev.end:
					t.Fatalf("record %d at %d, want right after the previous one at %d", rec.id, rec.start, prev.end)
				}
			}
			if !buffered && aligned < 4 {
				t.Fatalf("%d records were written directly, want 4", aligned)
			}

			s, err = Open(dir, opts)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			v, _ = s.VM("vm-a")
			directPoints(t, v, state, &id, snaps)
			for pid, want := range snaps {
				checkPoint(t, r, v, pid, want)
			}
		})
	}
}

// A direct record whose first block never reached the disk while later
// blocks did (a crash with the write half done) is cut like any torn
// tail: the earlier points stay, the bytes past the clean end are
// cleared, and later appends and reopens read right.
func TestDirectTornRecord(t *testing.T) {
	dir := t.TempDir()
	if !directWorks(t, dir) {
		t.Skip("the test directory's file system has no direct I/O")
	}
	opts := Options{SegmentBytes: 32 << 20, Logger: testLogger(t)}
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	disks := []DiskSpec{{Key: 1, Capacity: 6 << 20}}
	v, _ := s.OpenVM("vm-a", disks)
	r := rand.New(rand.NewPCG(5, 6))
	state := newModel(disks)
	var id uint64
	clock := t0
	initialSync(t, r, v, disks, state, &id, &clock)
	snaps := map[uint64]diskModel{id: state.clone()}
	directPoints(t, v, state, &id, snaps)
	s.Close()
	recs := recordsIn(t, filepath.Join(dir, "journal"))
	last := recs[len(recs)-1]
	if last.id != id || last.end-last.start < directMin {
		t.Fatalf("last record %+v is not the big point %d", last, id)
	}
	f, err := os.OpenFile(last.seg, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(make([]byte, directAlign), last.start)
	f.Close()

	s, err = Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	v, _ = s.VM("vm-a")
	if v.LastID() != id-1 {
		t.Fatalf("LastID %d, want %d", v.LastID(), id-1)
	}
	tail, _ := os.ReadFile(last.seg)
	for i, b := range tail[last.start:last.end] {
		if b != 0 {
			t.Fatalf("byte %d past the clean end survived the reopen", i)
		}
	}
	delete(snaps, id)
	id--
	state = snaps[id].clone()
	directPoints(t, v, state, &id, snaps)
	s.Close()
	s, err = Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	v, _ = s.VM("vm-a")
	for pid, want := range snaps {
		checkPoint(t, r, v, pid, want)
	}
}

// A file system that refuses a direct write after it was opened for them
// (EINVAL) costs nothing: the record goes through the page cache, and so
// does everything after it.
func TestDirectRefusedFallsBack(t *testing.T) {
	dir := t.TempDir()
	if !directWorks(t, dir) {
		t.Skip("the test directory's file system has no direct I/O")
	}
	var refused atomic.Int64
	directWriteAt = func(*os.File, []byte, int64) (int, error) {
		refused.Add(1)
		return 0, &os.PathError{Op: "write", Path: "segment", Err: syscall.EINVAL}
	}
	defer func() { directWriteAt = (*os.File).WriteAt }()
	opts := Options{SegmentBytes: 32 << 20, Logger: testLogger(t)}
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	disks := []DiskSpec{{Key: 1, Capacity: 6 << 20}}
	v, _ := s.OpenVM("vm-a", disks)
	r := rand.New(rand.NewPCG(7, 8))
	state := newModel(disks)
	var id uint64
	clock := t0
	initialSync(t, r, v, disks, state, &id, &clock)
	snaps := map[uint64]diskModel{id: state.clone()}
	directPoints(t, v, state, &id, snaps)
	if n := refused.Load(); n != 1 {
		t.Fatalf("%d direct writes tried, want 1 (then the page cache only)", n)
	}
	s.Close()
	s, err = Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	v, _ = s.VM("vm-a")
	for pid, want := range snaps {
		checkPoint(t, r, v, pid, want)
	}
}
