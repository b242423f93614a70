package journal

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
)

// TestMaintenanceBesideAppends runs appends, long-term points, retention
// and reads of listed points at the same time; every read point must be
// exact and nothing must be lost.
func TestMaintenanceBesideAppends(t *testing.T) {
	withChunk(t, 16<<10)
	dir := t.TempDir()
	s, err := Open(dir, Options{SegmentBytes: 64 << 10, NoSync: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	disks := []DiskSpec{{Key: 1, Capacity: 96<<10 + 5}, {Key: 2, Capacity: 40 << 10}}
	v, _ := s.OpenVM("vm-c", disks)
	r := rand.New(rand.NewPCG(11, 11))
	state := newModel(disks)
	var id uint64
	clock := t0
	initialSync(t, r, v, disks, state, &id, &clock)

	var mu sync.Mutex
	snaps := map[uint64]diskModel{id: state.clone()}
	times := map[uint64]time.Time{id: clock}
	snap := func(pid uint64) diskModel {
		mu.Lock()
		defer mu.Unlock()
		return snaps[pid]
	}
	const points = 120
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errc := make(chan error, 3)
	wg.Add(1)
	go func() { // appender: one point per simulated second
		defer wg.Done()
		defer close(stop)
		rr := rand.New(rand.NewPCG(12, 12))
		for range points {
			mu.Lock()
			id++
			p := &Point{ID: id, Time: t0.Add(time.Duration(id) * time.Second), Kind: KindShortTerm, Extents: randomExtents(rr, disks, 1+rr.IntN(5), 20<<10)}
			state.apply(p)
			snaps[id] = state.clone()
			times[id] = p.Time
			mu.Unlock()
			if err := v.Append(context.Background(), p); err != nil {
				errc <- err
				return
			}
		}
	}()
	wg.Add(1)
	go func() { // maintenance
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			now := t0.Add(time.Duration(v.LastID()) * time.Second)
			if i%3 == 0 {
				if _, err := v.CreateLongTerm(now); err != nil && !isPrecond(err) {
					errc <- err
					return
				}
			}
			if err := v.ApplyRetention(now, 10*time.Second, 25*time.Second); err != nil {
				errc <- err
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	wg.Add(1)
	go func() { // reader
		defer wg.Done()
		rr := rand.New(rand.NewPCG(13, 13))
		buf := make([]byte, 8<<10)
		for {
			select {
			case <-stop:
				return
			default:
			}
			l := v.List()
			p := l[rr.IntN(len(l))]
			want := snap(p.ID)
			pr, err := v.OpenPoint(p.ID, 1)
			if err != nil {
				continue // retention may have just unlisted it
			}
			off := rr.Int64N(pr.Size() - int64(len(buf)))
			if _, err := pr.ReadAt(buf, off); err != nil {
				if errors.Is(err, ErrNotListed) {
					continue
				}
				errc <- err
				return
			}
			if i := firstDiff(buf, want[1][off:off+int64(len(buf))]); i >= 0 {
				errc <- errors.New("point read differs from the model")
				return
			}
		}
	}()
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	if v.LastID() != id {
		t.Fatalf("LastID %d, want %d", v.LastID(), id)
	}
	for _, p := range v.List() {
		checkPoint(t, r, v, p.ID, snaps[p.ID])
	}
	s.Close()
	s2, err := Open(dir, Options{SegmentBytes: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	v2, _ := s2.VM("vm-c")
	if v2.LastID() != id {
		t.Fatalf("after reopen LastID %d, want %d", v2.LastID(), id)
	}
	for _, p := range v2.List() {
		checkPoint(t, r, v2, p.ID, snaps[p.ID])
	}
}

func isPrecond(err error) bool {
	return err != nil && errors.Is(err, model.ErrPrecond)
}

// TestCloseWithAppendsInFlight: closing the store while appends run never
// strands one; each returns nil (durable) or ErrClosed, and every point
// that returned nil is there after a reopen.
func TestCloseWithAppendsInFlight(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{SegmentBytes: 256 << 10, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	disks := []DiskSpec{{Key: 1, Capacity: 1 << 20}}
	const vms = 6
	acked := make([]uint64, vms)
	var wg sync.WaitGroup
	for i := range vms {
		v, err := s.OpenVM("vm-"+string(rune('a'+i)), disks)
		if err != nil {
			t.Fatal(err)
		}
		mustAppend(t, v, &Point{ID: 1, Kind: KindInitial, Marker: MarkerInitialSyncDone})
		wg.Add(1)
		go func(i int, v *VM) {
			defer wg.Done()
			for id := uint64(2); ; id++ {
				p := &Point{ID: id, Kind: KindShortTerm, Extents: []Extent{{Disk: 1, Off: int64(id%200) * 4096, Op: OpData, Len: 4096, Data: make([]byte, 4096)}}}
				err := v.Append(context.Background(), p)
				if errors.Is(err, ErrClosed) {
					return
				}
				if err != nil {
					t.Errorf("vm %d point %d: %v", i, id, err)
					return
				}
				acked[i] = id
			}
		}(i, v)
	}
	time.Sleep(50 * time.Millisecond)
	s.Close()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("appends stranded by Close")
	}
	s, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range vms {
		v, _ := s.VM("vm-" + string(rune('a'+i)))
		if v.LastID() < acked[i] {
			t.Fatalf("vm %d: LastID %d below acknowledged %d", i, v.LastID(), acked[i])
		}
	}
}
