package source

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/continuum-cdp/continuum/internal/wire"
)

// TestInitialSyncOfSparseDisk: the initial sync of a mostly sparse disk,
// with guest writes into its holes while it runs, leaves a replica equal
// to the disk (chunks in holes are not read but sent as zero ranges).
func TestInitialSyncOfSparseDisk(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(6, 6))
	const capacity = 8 << 20
	if err := os.MkdirAll(filepath.Join(dir, "vm1"), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, "vm1", "vm1-flat.vmdk"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(capacity); err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{100, 1<<20 + 7, 5<<20 - 3, capacity - 9000} {
		if _, err := f.WriteAt(randBytes(r, 5000), off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	p := newFakeProxy(t, nil, false, true)
	p.img[0] = make([]byte, capacity)
	svc, err := New(testOptions(dir, p, []VMConfig{{Name: "vm1", Disks: []DiskConfig{{Key: 0, Capacity: capacity}}}}))
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	if err := svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	d, _ := svc.Disk("vm1", 0)
	for range 40 {
		off := r.Int64N(capacity - 3000)
		if err := d.WriteAt(randBytes(r, 1+r.IntN(2999)), off, false); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "syncing", func() bool { st := svc.Status()[0]; return st.Mode == "syncing" && st.Acked == st.Seq })
	want, _ := os.ReadFile(d.Path())
	p.mu.Lock()
	defer p.mu.Unlock()
	if !bytes.Equal(p.img[0], want) {
		t.Fatalf("replica differs from the sparse disk at byte %d", firstDiff(p.img[0], want))
	}
	if len(p.markers) != 1 || p.markers[0] != wire.MarkerInitialSyncDone {
		t.Fatalf("markers %v, want one InitialSyncDone", p.markers)
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func TestNextDataFindsDataAfterHole(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(4 << 20); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("x"), 2<<20+5); err != nil {
		t.Fatal(err)
	}
	at, ok := nextData(f, 0)
	if !ok {
		t.Skip("the filesystem does not report holes")
	}
	if at > 2<<20+5 {
		t.Fatalf("data at %d reported from %d", 2<<20+5, at)
	}
	if at, ok := nextData(f, 3<<20); ok && at < 4<<20 {
		t.Fatalf("data reported at %d in the trailing hole", at)
	}
}
