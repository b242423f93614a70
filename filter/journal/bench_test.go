package journal

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const benchVMs = 8

// BenchmarkAppend appends 1 MiB points from benchVMs concurrent VMs with
// fsync on; "baseline" is the same bytes written sequentially to one file
// by one writer with one fsync per benchVMs points.
func BenchmarkAppend(b *testing.B) {
	const point = 1 << 20
	data := make([]byte, point)
	fillRandom(rand.New(rand.NewPCG(1, 1)), data)
	b.Run("journal", func(b *testing.B) {
		s, err := Open(b.TempDir(), Options{SegmentBytes: 64 << 20})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		disks := []DiskSpec{{Key: 1, Capacity: 1 << 30}}
		vms := make([]*VM, benchVMs)
		for i := range vms {
			v, err := s.OpenVM(fmt.Sprintf("vm-%d", i), disks)
			if err != nil {
				b.Fatal(err)
			}
			if err := v.Append(context.Background(), &Point{ID: 1, Kind: KindInitial, Marker: MarkerInitialSyncDone}); err != nil {
				b.Fatal(err)
			}
			vms[i] = v
		}
		var next atomic.Int64
		b.SetBytes(point)
		b.ResetTimer()
		var wg sync.WaitGroup
		for i, v := range vms {
			wg.Add(1)
			go func(i int, v *VM) {
				defer wg.Done()
				id := uint64(1)
				for next.Add(1) <= int64(b.N) {
					id++
					off := int64((id*7919+uint64(i)*131)%1024) * point
					p := &Point{ID: id, Time: time.Unix(int64(id), 0), Kind: KindShortTerm,
						Extents: []Extent{{Disk: 1, Off: off, Op: OpData, Len: point, Data: data}}}
					if err := v.Append(context.Background(), p); err != nil {
						b.Error(err)
						return
					}
				}
			}(i, v)
		}
		wg.Wait()
		b.StopTimer()
		b.ReportMetric(float64(s.fsyncs.Load())/float64(b.N), "fsyncs/op")
	})
	b.Run("baseline", func(b *testing.B) {
		f, err := os.Create(filepath.Join(b.TempDir(), "raw"))
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		b.SetBytes(point)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := f.Write(data); err != nil {
				b.Fatal(err)
			}
			if (i+1)%benchVMs == 0 || i == b.N-1 {
				if err := f.Sync(); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}

// BenchmarkReadPoint reads 1 MiB at random offsets of the newest point of
// a disk whose journal holds 200 points of scattered writes over a base;
// "baseline" reads the same sizes from a plain file.
func BenchmarkReadPoint(b *testing.B) {
	const capacity = 256 << 20
	r := rand.New(rand.NewPCG(2, 2))
	dir := b.TempDir()
	s, err := Open(dir, Options{SegmentBytes: 64 << 20, NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	disks := []DiskSpec{{Key: 1, Capacity: capacity}}
	v, err := s.OpenVM("vm", disks)
	if err != nil {
		b.Fatal(err)
	}
	chunk := make([]byte, 4<<20)
	fillRandom(r, chunk)
	for off := int64(0); off < capacity; off += int64(len(chunk)) {
		p := &Point{ID: uint64(off/int64(len(chunk))) + 1, Kind: KindInitial, Extents: []Extent{{Disk: 1, Off: off, Op: OpData, Len: int64(len(chunk)), Data: chunk}}}
		if off+int64(len(chunk)) >= capacity {
			p.Marker = MarkerInitialSyncDone
		}
		if err := v.Append(context.Background(), p); err != nil {
			b.Fatal(err)
		}
	}
	id := v.LastID()
	for range 200 {
		id++
		var exts []Extent
		for range 64 {
			n := 4096 + r.Int64N(60<<10)
			off := r.Int64N(capacity - n)
			exts = append(exts, Extent{Disk: 1, Off: off, Op: OpData, Len: n, Data: chunk[:n]})
		}
		if err := v.Append(context.Background(), &Point{ID: id, Kind: KindShortTerm, Extents: exts}); err != nil {
			b.Fatal(err)
		}
	}
	buf := make([]byte, 1<<20)
	b.Run("journal", func(b *testing.B) {
		pr, err := v.OpenPoint(id, 1)
		if err != nil {
			b.Fatal(err)
		}
		b.SetBytes(int64(len(buf)))
		for i := 0; i < b.N; i++ {
			if _, err := pr.ReadAt(buf, r.Int64N(capacity-int64(len(buf)))); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("baseline", func(b *testing.B) {
		f := v.base[1]
		b.SetBytes(int64(len(buf)))
		for i := 0; i < b.N; i++ {
			if _, err := f.ReadAt(buf, r.Int64N(capacity-int64(len(buf)))); err != nil {
				b.Fatal(err)
			}
		}
	})
}
