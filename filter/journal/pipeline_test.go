package journal

import (
	"context"
	"errors"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"
)

// TestAppendAsyncSharesFsync: points of one VM queued behind an fsync in
// progress are made durable together, published in ID order, and restore
// exactly after a reopen.
func TestAppendAsyncSharesFsync(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentBytes: 64 << 10, Logger: testLogger(t)}
	s, v, snaps, id := smallVM(t, dir, opts, 2)
	defer func() { s.Close() }()
	r := rand.New(rand.NewPCG(8, 8))
	state := snaps[id].clone()
	release := make(chan struct{})
	first := true
	s.syncErr = func() error {
		if first { // the committer's goroutine only
			first = false
			<-release
		}
		return nil
	}
	before := s.Stats()
	var waits []func() error
	const n = 8
	for i := range n {
		id++
		p := &Point{ID: id, Time: t0.Add(time.Duration(i+10) * time.Minute), Kind: KindShortTerm, Extents: randomExtents(r, v.Disks(), 3, 500)}
		w, err := v.AppendAsync(context.Background(), p)
		if err != nil {
			t.Fatal(err)
		}
		waits = append(waits, w)
		state.apply(p)
		snaps[id] = state.clone()
		if i == 0 {
			// the first point's fsync is held until the others are queued
			for s.Stats().Appends == before.Appends && len(s.reqs) > 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}
	if got := v.LastID(); got >= id {
		t.Fatalf("LastID %d before any fsync finished", got)
	}
	close(release)
	for i, w := range waits {
		if err := w(); err != nil {
			t.Fatalf("point %d: %v", i, err)
		}
	}
	after := s.Stats()
	if a, b := after.Appends-before.Appends, after.Batches-before.Batches; a != n || b >= n || b < 1 {
		t.Fatalf("%d appends in %d batches: want fewer batches than points", a, b)
	}
	if v.LastID() != id {
		t.Fatalf("LastID %d, want %d", v.LastID(), id)
	}
	// a point already queued or durable is acknowledged again, not written
	if w, err := v.AppendAsync(context.Background(), &Point{ID: id - 1, Kind: KindShortTerm}); err != nil || w() != nil {
		t.Fatalf("resent point: %v", err)
	}
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

// TestAppendAsyncFailureFailsLater: when a queued point fails (full
// datastore), the points queued behind it fail too and none of them is
// durable; once all are answered the VM takes them again in order.
func TestAppendAsyncFailureFailsLater(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentBytes: 64 << 10, Logger: testLogger(t)}
	s, v, snaps, id := smallVM(t, dir, opts, 2)
	defer func() { s.Close() }()
	r := rand.New(rand.NewPCG(9, 9))
	state := snaps[id].clone()
	durable := id
	release := make(chan struct{})
	first := true
	s.syncErr = func() error {
		if first {
			first = false
			<-release
		}
		return nil
	}
	// point A is being fsynced while B (too big for the space left), C and
	// D queue behind it
	mk := func(i int, size int64) *Point {
		id++
		return &Point{ID: id, Time: t0.Add(time.Duration(i+10) * time.Minute), Kind: KindShortTerm, Extents: randomExtents(r, v.Disks(), 2, size)}
	}
	pa := mk(0, 300)
	wa, err := v.AppendAsync(context.Background(), pa)
	if err != nil {
		t.Fatal(err)
	}
	for len(s.reqs) > 0 {
		time.Sleep(time.Millisecond)
	}
	// B needs a new segment, which no longer fits; C and D would fit in
	// the current one but must not be durable without B
	s.SetMaxBytes(s.UsedBytes() + 1)
	var pts []*Point
	var waits []func() error
	for i := 1; i <= 3; i++ {
		p := mk(i, 300)
		if i == 1 {
			big := func(b byte) []byte { d := make([]byte, 48<<10); d[0], d[len(d)-1] = b, b; return d }
			p.Extents = []Extent{{Disk: 1, Off: 0, Op: OpData, Len: 48 << 10, Data: big(1)}, {Disk: 1, Off: 0, Op: OpData, Len: 48 << 10, Data: big(2)}}
		}
		w, err := v.AppendAsync(context.Background(), p)
		if err != nil {
			t.Fatal(err)
		}
		pts, waits = append(pts, p), append(waits, w)
	}
	close(release)
	if err := wa(); err != nil {
		t.Fatalf("point A: %v", err)
	}
	state.apply(pa)
	durable = pa.ID
	snaps[durable] = state.clone()
	for i, w := range waits {
		if err := w(); !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("queued point %d: want ENOSPC, got %v", pts[i].ID, err)
		}
	}
	if v.LastID() != durable {
		t.Fatalf("LastID %d, want %d", v.LastID(), durable)
	}
	// space again: the refused points are taken in order
	s.SetMaxBytes(0)
	for _, p := range pts {
		mustAppend(t, v, p)
		state.apply(p)
		snaps[p.ID] = state.clone()
	}
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
