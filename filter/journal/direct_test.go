package journal

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
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

// directRun is a store with one VM after its initial sync and one round
// of directPoints: what the tests below start from.
type directRun struct {
	s     *Store
	v     *VM
	r     *rand.Rand
	state diskModel
	id    uint64
	snaps map[uint64]diskModel
}

func newDirectRun(t *testing.T, dir string, opts Options, seed uint64) *directRun {
	t.Helper()
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	disks := []DiskSpec{{Key: 1, Capacity: 6 << 20}}
	v, err := s.OpenVM("vm-a", disks)
	if err != nil {
		t.Fatal(err)
	}
	d := &directRun{s: s, v: v, r: rand.New(rand.NewPCG(seed, seed+1)), state: newModel(disks)}
	clock := t0
	initialSync(t, d.r, v, disks, d.state, &d.id, &clock)
	d.snaps = map[uint64]diskModel{d.id: d.state.clone()}
	directPoints(t, v, d.state, &d.id, d.snaps)
	return d
}

// reopen closes the store and opens it again.
func (d *directRun) reopen(t *testing.T, dir string, opts Options) {
	t.Helper()
	d.s.Close()
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	d.s = s
	d.v, _ = s.VM("vm-a")
}

// check reads back every point taken so far.
func (d *directRun) check(t *testing.T) {
	t.Helper()
	for pid, want := range d.snaps {
		checkPoint(t, d.r, d.v, pid, want)
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
			d := newDirectRun(t, dir, opts, 1)
			d.check(t)
			d.s.Close()

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

			d.reopen(t, dir, opts)
			defer d.s.Close()
			directPoints(t, d.v, d.state, &d.id, d.snaps)
			d.check(t)
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
	d := newDirectRun(t, dir, opts, 5)
	d.s.Close()
	recs := recordsIn(t, filepath.Join(dir, "journal"))
	last := recs[len(recs)-1]
	if last.id != d.id || last.end-last.start < directMin {
		t.Fatalf("last record %+v is not the big point %d", last, d.id)
	}
	f, err := os.OpenFile(last.seg, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(make([]byte, directAlign), last.start)
	f.Close()

	d.reopen(t, dir, opts)
	if d.v.LastID() != d.id-1 {
		t.Fatalf("LastID %d, want %d", d.v.LastID(), d.id-1)
	}
	tail, _ := os.ReadFile(last.seg)
	for i, b := range tail[last.start:last.end] {
		if b != 0 {
			t.Fatalf("byte %d past the clean end survived the reopen", i)
		}
	}
	delete(d.snaps, d.id)
	d.id--
	d.state = d.snaps[d.id].clone()
	directPoints(t, d.v, d.state, &d.id, d.snaps)
	d.reopen(t, dir, opts)
	defer d.s.Close()
	d.check(t)
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
	d := newDirectRun(t, dir, opts, 7)
	if n := refused.Load(); n != 1 {
		t.Fatalf("%d direct writes tried, want 1 (then the page cache only)", n)
	}
	d.reopen(t, dir, opts)
	defer d.s.Close()
	d.check(t)
}

// A journal directory is opened by one store at a time: opening cuts the
// newest segment's tail, which would destroy a running store's appends.
func TestOneStorePerDirectory(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentBytes: 1 << 20, Logger: testLogger(t)}
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	if s2, err := Open(dir, opts); err == nil {
		s2.Close()
		t.Fatal("a second store opened a journal in use")
	} else if !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second open: %v, want a clear in-use error", err)
	}
	s.Close()
	s, err = Open(dir, opts)
	if err != nil {
		t.Fatalf("reopen after close: %v", err)
	}
	s.Close()
}
