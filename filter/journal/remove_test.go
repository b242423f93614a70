package journal

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
)

// fillVM opens vm in s and gives it an initial sync and n short-term
// points of up to exts extents of up to maxLen bytes; it returns each
// point's expected disks and the last ID.
func fillVM(t *testing.T, s *Store, vm string, seed uint64, disks []DiskSpec, n, exts int, maxLen int64) (map[uint64]diskModel, uint64) {
	t.Helper()
	v, err := s.OpenVM(vm, disks)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(seed, seed))
	state := newModel(disks)
	var id uint64
	clock := t0
	initialSync(t, r, v, disks, state, &id, &clock)
	snaps := map[uint64]diskModel{id: state.clone()}
	for range n {
		id++
		clock = clock.Add(time.Second)
		p := &Point{ID: id, Time: clock, Kind: KindShortTerm, Extents: randomExtents(r, disks, exts, maxLen)}
		state.apply(p)
		mustAppend(t, v, p)
		snaps[id] = state.clone()
	}
	return snaps, id
}

func segmentFiles(t *testing.T, dir string) int {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, "journal"))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestRemoveVM: a removed VM's files go, its records stop counting (its
// segments are freed, a reopen does not bring it back), the other VM
// reads exactly as before, and a VM opened later under the same name
// starts empty even though the removed VM's records are still in the
// segments it shares with the other VM.
func TestRemoveVM(t *testing.T) {
	for _, buffered := range []bool{false, true} {
		t.Run(map[bool]string{false: "direct", true: "buffered"}[buffered], func(t *testing.T) {
			dir := t.TempDir()
			opts := Options{SegmentBytes: 256 << 10, BufferedIO: buffered}
			s, err := Open(dir, opts)
			if err != nil {
				t.Fatal(err)
			}
			disksA := []DiskSpec{{Key: 1, Capacity: 256 << 10}}
			disksB := []DiskSpec{{Key: 7, Capacity: 128 << 10}}
			snapsA, _ := fillVM(t, s, "a", 1, disksA, 12, 3, 40<<10)
			snapsB, lastB := fillVM(t, s, "b", 2, disksB, 6, 3, 40<<10)
			a, _ := s.VM("a")
			r := rand.New(rand.NewPCG(3, 3))
			checkPoint(t, r, a, 5, snapsA[5])
			segsBefore := segmentFiles(t, dir)

			// an open reader of a point (an export, a download) holds it
			pr, err := a.OpenPoint(5, 1)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.RemoveVM("a"); !errors.Is(err, model.ErrConflict) {
				t.Fatalf("removal with a reader open: %v", err)
			}
			if _, ok := s.VM("a"); !ok {
				t.Fatal("a refused removal removed the VM")
			}
			pr.Close()
			pr.Close() // a second close changes nothing
			if err := s.RemoveVM("a"); err != nil {
				t.Fatal(err)
			}
			if err := s.RemoveVM("a"); !errors.Is(err, model.ErrNotFound) {
				t.Fatalf("second removal: want not found, got %v", err)
			}
			if _, ok := s.VM("a"); ok || len(s.VMs()) != 1 {
				t.Fatalf("VMs after removal: %v", s.VMs())
			}
			if _, err := os.Stat(filepath.Join(dir, vmDirName("a"))); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("removed VM's directory: %v", err)
			}
			// a holder of the removed VM gets a clear error, not a read of closed files
			if err := a.Append(context.Background(), &Point{ID: 99, Time: t0, Kind: KindShortTerm}); !errors.Is(err, ErrRemoved) {
				t.Fatalf("append to a removed VM: %v", err)
			}
			if _, err := a.OpenPoint(5, 1); !errors.Is(err, ErrRemoved) {
				t.Fatalf("open a point of a removed VM: %v", err)
			}
			if err := a.ApplyRetention(t0, time.Hour, time.Hour); !errors.Is(err, ErrRemoved) {
				t.Fatalf("retention of a removed VM: %v", err)
			}
			// segments that held only a's records are gone
			if n := segmentFiles(t, dir); n >= segsBefore {
				t.Fatalf("segments: %d before the removal, %d after", segsBefore, n)
			}

			// the same name again, other disks: empty, then its own points
			snapsA2, lastA2 := fillVM(t, s, "a", 4, []DiskSpec{{Key: 3, Capacity: 64 << 10}}, 2, 3, 40<<10)
			if lastA2 >= 12 {
				t.Fatalf("test needs the new VM's IDs below the removed one's, got %d", lastA2)
			}
			check := func(s *Store) {
				t.Helper()
				a2, ok := s.VM("a")
				if !ok {
					t.Fatal("new vm a missing")
				}
				if got := a2.LastID(); got != lastA2 {
					t.Fatalf("new vm a: last ID %d, want %d (the removed VM's records came back?)", got, lastA2)
				}
				for id, want := range snapsA2 {
					checkPoint(t, r, a2, id, want)
				}
				b, _ := s.VM("b")
				for _, id := range []uint64{3, lastB} {
					checkPoint(t, r, b, id, snapsB[id])
				}
			}
			check(s)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s, err = Open(dir, opts)
			if err != nil {
				t.Fatal(err)
			}
			check(s)
			s.Close()
		})
	}
}

// TestRemoveInterrupted: a removal that stopped after its rename (the
// commit point) leaves a directory that the next Open deletes without
// loading it.
func TestRemoveInterrupted(t *testing.T) {
	dir := t.TempDir()
	s, v, _, _ := smallVM(t, dir, Options{}, 3)
	_ = v
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	left := filepath.Join(dir, removingPrefix+"x-"+vmDirName("vm-a"))
	if err := os.Rename(vmDir(dir), left); err != nil {
		t.Fatal(err)
	}
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if len(s.VMs()) != 0 {
		t.Fatalf("a half-removed VM came back: %v", s.VMs())
	}
	if _, err := os.Stat(left); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the half-removed directory is still there: %v", err)
	}
}
