package journal

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
)

// TestModelRandomWorkload drives random multi-disk workloads with random
// cuts, long-term points, retention and reopenings, and checks after every
// step that each listed point reads exactly as the model did at that point.
func TestModelRandomWorkload(t *testing.T) {
	withChunk(t, 64<<10)
	for seed := uint64(1); seed <= 4; seed++ {
		// fsync is real for one seed; the others skip it to stay fast (what
		// they check is the indexing and folding, not durability).
		t.Run("seed"+string(rune('0'+seed)), func(t *testing.T) { runModel(t, seed, 70, seed > 1) })
	}
}

func runModel(t *testing.T, seed uint64, steps int, noSync bool) {
	r := rand.New(rand.NewPCG(seed, 99))
	dir := t.TempDir()
	opts := Options{SegmentBytes: 256 << 10, Logger: testLogger(t), NoSync: noSync}
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	disks := []DiskSpec{{Key: 2000, Capacity: 100 << 10}, {Key: 2001, Capacity: 200<<10 + 7}, {Key: 2002, Capacity: 333<<10 + 1}}
	v, err := s.OpenVM("vm-1", disks)
	if err != nil {
		t.Fatal(err)
	}
	state := newModel(disks)
	var id uint64
	clock := t0
	initialSync(t, r, v, disks, state, &id, &clock)
	snaps := map[uint64]diskModel{id: state.clone()}
	kinds := map[uint64]Kind{id: KindShortTerm}
	times := map[uint64]time.Time{id: clock}
	if l := v.List(); len(l) != 1 || l[0].ID != id || l[0].Kind != model.PointLongTerm {
		t.Fatalf("after initial sync: %s", ids(l))
	}
	// A second VM shares the segments: retention of one must never delete
	// what the other still needs.
	other := []DiskSpec{{Key: 1, Capacity: 50<<10 + 1}}
	v2, err := s.OpenVM("vm-2", other)
	if err != nil {
		t.Fatal(err)
	}
	state2 := newModel(other)
	var id2 uint64
	clock2 := t0
	initialSync(t, r, v2, other, state2, &id2, &clock2)
	last2 := state2.clone()
	const st, lt = 12 * time.Second, 40 * time.Second
	var lastRet time.Time
	longTerm := map[uint64]time.Time{id: clock}
	inResync := false
	for step := 0; step < steps; step++ {
		// After a fold, a long-term point or a reopen every listed point is
		// read back; after a plain append, the newest and a few others.
		checkAll := true
		switch x := r.IntN(20); {
		case x < 12:
			id++
			clock = clock.Add(time.Second)
			p := &Point{ID: id, Time: clock, Kind: KindShortTerm, Extents: randomExtents(r, disks, 1+r.IntN(8), 40<<10)}
			if r.IntN(6) == 0 && !inResync {
				p.Kind, p.Marker, inResync = KindResync, MarkerResyncStart, true
			} else if inResync && r.IntN(3) == 0 {
				p.Marker, inResync = MarkerResyncDone, false
			} else if inResync {
				p.Kind = KindResync
			}
			if r.IntN(15) == 0 {
				p.Extents = nil // an idle interval
			}
			state.apply(p)
			mustAppend(t, v, p)
			kinds[id] = p.Kind
			times[id] = clock
			if p.Kind == KindShortTerm {
				snaps[id] = state.clone()
			}
			checkAll = false
		case x < 13:
			// A resent point is acknowledged again and changes nothing.
			old := id - uint64(r.IntN(3))
			p := &Point{ID: old, Time: clock, Kind: KindShortTerm, Extents: randomExtents(r, disks, 2, 4096)}
			mustAppend(t, v, p)
		case x < 15:
			clock = clock.Add(time.Second)
			info, err := v.CreateLongTerm(clock)
			if err != nil {
				if model.ErrorCode(err) != model.CodeFailedPrecond {
					t.Fatalf("long-term point: %v", err)
				}
				continue
			}
			if snaps[info.ID] == nil {
				t.Fatalf("long-term point %d is not a short-term point", info.ID)
			}
			longTerm[info.ID] = clock
		case x < 18:
			clock = clock.Add(time.Duration(r.IntN(5)) * time.Second)
			if err := v.ApplyRetention(clock, st, lt); err != nil {
				t.Fatalf("retention: %v", err)
			}
			lastRet = clock
			if r.IntN(2) == 0 {
				if err := v2.ApplyRetention(clock2, 3*time.Second, 0); err != nil {
					t.Fatalf("retention of the other vm: %v", err)
				}
			}
		default:
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if s, err = Open(dir, opts); err != nil {
				t.Fatalf("reopen: %v", err)
			}
			var ok bool
			if v, ok = s.VM("vm-1"); !ok {
				t.Fatal("vm lost on reopen")
			}
			if v2, ok = s.VM("vm-2"); !ok {
				t.Fatal("vm lost on reopen")
			}
		}
		if r.IntN(2) == 0 {
			id2++
			clock2 = clock2.Add(time.Second)
			p := &Point{ID: id2, Time: clock2, Kind: KindShortTerm, Extents: randomExtents(r, other, 2, 5000)}
			state2.apply(p)
			mustAppend(t, v2, p)
			last2 = state2.clone()
		}
		if l2 := v2.List(); l2[len(l2)-1].ID != id2 || v2.LastID() != id2 {
			t.Fatalf("step %d: other vm at %d, list %s", step, id2, ids(l2))
		} else if checkAll {
			checkPoint(t, r, v2, id2, last2)
		}
		if v.LastID() != id {
			t.Fatalf("step %d: LastID %d, want %d", step, v.LastID(), id)
		}
		listed := v.List()
		if len(listed) == 0 {
			t.Fatalf("step %d: nothing listed", step)
		}
		seen := map[uint64]bool{}
		for _, p := range listed {
			want := snaps[p.ID]
			if want == nil {
				t.Fatalf("step %d: listed point %d (%s) was never a consistent point; list %s", step, p.ID, p.Kind, ids(listed))
			}
			seen[p.ID] = true
		}
		for i, p := range listed {
			if checkAll || i == len(listed)-1 || r.IntN(len(listed)) < 2 {
				checkPoint(t, r, v, p.ID, snaps[p.ID])
			}
		}
		// Nothing inside its window is gone.
		for pid, tm := range times {
			if kinds[pid] == KindShortTerm && !lastRet.IsZero() && !tm.Before(lastRet.Add(-st)) && !seen[pid] {
				t.Fatalf("step %d: short-term point %d (%v) within the window is not listed: %s", step, pid, tm, ids(listed))
			}
			if kinds[pid] == KindShortTerm && lastRet.IsZero() && !seen[pid] {
				t.Fatalf("step %d: point %d lost before any retention: %s", step, pid, ids(listed))
			}
		}
		for pid, tm := range longTerm {
			if !tm.Before(lastRet.Add(-lt)) && !seen[pid] {
				t.Fatalf("step %d: long-term point %d within retention is not listed: %s", step, pid, ids(listed))
			}
		}
		// Points no longer listed cannot be opened.
		for pid := range snaps {
			if !seen[pid] {
				if _, err := v.OpenPoint(pid, disks[0].Key); err == nil {
					t.Fatalf("step %d: unlisted point %d opens", step, pid)
				}
				delete(snaps, pid)
			}
		}
	}
	last := v.List()
	checkExport(t, v, last[len(last)-1].ID, snaps[last[len(last)-1].ID])
	checkExport(t, v, last[0].ID, snaps[last[0].ID])
	// Retention far in the future leaves only the newest point, still exact,
	// and deletes the segments nothing needs.
	if err := v.ApplyRetention(clock.Add(time.Hour), st, lt); err != nil {
		t.Fatal(err)
	}
	l := v.List()
	if len(l) != 1 {
		t.Fatalf("after full retention: %s", ids(l))
	}
	checkPoint(t, r, v, l[0].ID, snaps[l[0].ID])
}
