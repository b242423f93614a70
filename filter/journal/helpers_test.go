package journal

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// withChunk runs a test with a small index chunk so extents cross chunks.
func withChunk(t testing.TB, n int64) {
	old := chunkBytes
	chunkBytes = n
	t.Cleanup(func() { chunkBytes = old })
}

// diskModel is the expected content of a VM's disks.
type diskModel map[int32][]byte

func newModel(disks []DiskSpec) diskModel {
	m := diskModel{}
	for _, d := range disks {
		m[d.Key] = make([]byte, d.Capacity)
	}
	return m
}

func (m diskModel) apply(p *Point) {
	for _, e := range p.Extents {
		dst := m[e.Disk][e.Off : e.Off+e.Len]
		if e.Op == OpData {
			copy(dst, e.Data)
		} else {
			clear(dst)
		}
	}
}

func (m diskModel) clone() diskModel {
	c := diskModel{}
	for k, v := range m {
		c[k] = bytes.Clone(v)
	}
	return c
}

// randomExtents makes n writes at unaligned offsets and sizes, some zeroes
// and trims, overlapping freely.
func randomExtents(r *rand.Rand, disks []DiskSpec, n int, maxLen int64) []Extent {
	var out []Extent
	for range n {
		d := disks[r.IntN(len(disks))]
		off := r.Int64N(d.Capacity)
		l := 1 + r.Int64N(min(maxLen, d.Capacity-off))
		e := Extent{Disk: d.Key, Off: off, Len: l, Op: OpData}
		switch x := r.IntN(10); {
		case x < 2:
			e.Op = OpZero
		case x < 3:
			e.Op = OpTrim
		default:
			e.Data = make([]byte, l)
			fillRandom(r, e.Data)
		}
		out = append(out, e)
	}
	return out
}

func fillRandom(r *rand.Rand, b []byte) {
	// Mostly random bytes, sometimes runs, so zero-detection paths run too.
	if r.IntN(4) == 0 {
		v := byte(r.IntN(256))
		for i := range b {
			b[i] = v
		}
		return
	}
	var seed [32]byte
	for i := range 4 {
		x := r.Uint64()
		for j := range 8 {
			seed[i*8+j] = byte(x >> (8 * j))
		}
	}
	rand.NewChaCha8(seed).Read(b)
}

// checkPoint reads disk at point id through OpenPoint in random pieces and
// compares with want.
func checkPoint(t testing.TB, r *rand.Rand, v *VM, id uint64, want diskModel) {
	t.Helper()
	for key, exp := range want {
		pr, err := v.OpenPoint(id, key)
		if err != nil {
			t.Fatalf("open point %d disk %d: %v", id, key, err)
		}
		if pr.Size() != int64(len(exp)) {
			t.Fatalf("point %d disk %d: size %d, want %d", id, key, pr.Size(), len(exp))
		}
		got := make([]byte, len(exp))
		for off := int64(0); off < int64(len(got)); {
			n := 1 + r.Int64N(96<<10)
			n = min(n, int64(len(got))-off)
			if _, err := pr.ReadAt(got[off:off+n], off); err != nil && err != io.EOF {
				t.Fatalf("read point %d disk %d at %d: %v", id, key, off, err)
			}
			off += n
		}
		pr.Close()
		if i := firstDiff(got, exp); i >= 0 {
			t.Fatalf("point %d disk %d differs at byte %d: got %d, want %d", id, key, i, got[i], exp[i])
		}
	}
}

func checkExport(t testing.TB, v *VM, id uint64, want diskModel) {
	t.Helper()
	for key, exp := range want {
		path := t.TempDir() + "/export.img"
		if err := v.Export(id, key, path); err != nil {
			t.Fatalf("export point %d disk %d: %v", id, key, err)
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if i := firstDiff(got, exp); i >= 0 || len(got) != len(exp) {
			t.Fatalf("export of point %d disk %d differs at byte %d (len %d, want %d)", id, key, i, len(got), len(exp))
		}
	}
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return n
	}
	return -1
}

func mustAppend(t testing.TB, v *VM, p *Point) {
	t.Helper()
	if err := v.Append(context.Background(), p); err != nil {
		t.Fatalf("append point %d: %v", p.ID, err)
	}
}

// initialSync sends a few initial points and the InitialSyncDone marker.
func initialSync(t testing.TB, r *rand.Rand, v *VM, disks []DiskSpec, model diskModel, id *uint64, clock *time.Time) {
	t.Helper()
	for i := range 3 {
		*id++
		*clock = clock.Add(time.Second)
		p := &Point{ID: *id, Time: *clock, Kind: KindInitial, Extents: randomExtents(r, disks, 4, 64<<10)}
		if i == 2 {
			p.Marker = MarkerInitialSyncDone
		}
		model.apply(p)
		mustAppend(t, v, p)
	}
}

func ids(l []PointInfo) string {
	var b bytes.Buffer
	for _, p := range l {
		fmt.Fprintf(&b, "%d(%s) ", p.ID, p.Kind[:1])
	}
	return b.String()
}
