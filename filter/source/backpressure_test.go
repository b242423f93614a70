package source

import (
	"bytes"
	"math/rand/v2"
	"os"
	"testing"
	"time"
)

// burst writes n chunks of 64 KiB over the first 1 MiB of the disk, in
// order, one after the other as a guest would.
func burst(t *testing.T, svc *Service, r *rand.Rand, n int) {
	t.Helper()
	d := svc.Disks()[0]
	for i := range n {
		off := int64(i%16) * (64 << 10)
		if err := d.WriteAt(randBytes(r, 64<<10), off, false); err != nil {
			t.Fatal(err)
		}
	}
}

// startSlowProxyVM runs a VM toward a proxy that takes delay per message:
// far slower than a guest's 64 KiB writes into the page cache, even on a
// loaded machine, so that a burst outruns it.
func startSlowProxyVM(t *testing.T, wait, delay time.Duration) (*Service, *fakeProxy) {
	t.Helper()
	f := newFakeProxy(t, nil, true, true)
	f.img[1] = make([]byte, 1<<20)
	f.delay = delay
	opts := testOptions(t.TempDir(), f, []VMConfig{{Name: "vm1", Disks: []DiskConfig{{Key: 1, Capacity: 1 << 20}}}})
	// four chunks fit: the burst below is many times the buffer
	opts.BufferBytes = 4*(64<<10) + 4*entryOverhead
	opts.BackpressureWait = wait
	svc := startService(t, opts)
	waitFor(t, "syncing", func() bool { return svc.Status()[0].Mode == "syncing" })
	return svc, f
}

// TestBackpressureSlowProxyDelaysWrites: a burst larger than the buffer
// toward a slow but working proxy delays the guest's writes instead of
// dropping the buffer: no CBT mode, every write reaches the replica.
func TestBackpressureSlowProxyDelaysWrites(t *testing.T) {
	svc, f := startSlowProxyVM(t, 5*time.Second, 15*time.Millisecond)
	r := rand.New(rand.NewPCG(4, 4))
	burst(t, svc, r, 48)
	waitFor(t, "everything acknowledged", func() bool { st := svc.Status()[0]; return st.Acked == st.Seq && st.BufferEntries == 0 })
	st := svc.Status()[0]
	if st.CBTEntries != 0 || st.Mode != "syncing" {
		t.Fatalf("a burst toward a slow proxy entered CBT mode: %+v", st)
	}
	if st.ThrottledWrites == 0 || st.ThrottledSeconds <= 0 {
		t.Fatalf("no write was delayed although the burst is 12 times the buffer: %+v", st)
	}
	if n := st.Disks[0].DirtyBlocks; n != 0 {
		t.Fatalf("%d dirty blocks after every write was acknowledged", n)
	}
	want, _ := os.ReadFile(svc.Disks()[0].Path())
	f.mu.Lock()
	defer f.mu.Unlock()
	if !bytes.Equal(f.img[1], want) {
		t.Fatal("replica differs from the disk: a delayed write was lost")
	}
}

// Without the wait the same burst overflows the buffer into CBT mode: the
// test above would see it.
func TestBackpressureDisabledOverflowsToCBT(t *testing.T) {
	svc, _ := startSlowProxyVM(t, -1, 100*time.Millisecond)
	burst(t, svc, rand.New(rand.NewPCG(4, 4)), 48)
	if st := svc.Status()[0]; st.CBTEntries == 0 || st.ThrottledWrites != 0 {
		t.Fatalf("burst without backpressure: %+v, want a CBT entry and no delayed write", st)
	}
}

// TestBackpressureDeadProxyEntersCBT: a proxy that is connected but never
// acknowledges makes the write that does not fit wait at most
// BackpressureWait, then the VM goes to CBT mode as before.
func TestBackpressureDeadProxyEntersCBT(t *testing.T) {
	f := newFakeProxy(t, nil, true, false)
	f.img[1] = make([]byte, 1<<20)
	opts := testOptions(t.TempDir(), f, []VMConfig{{Name: "vm1", Disks: []DiskConfig{{Key: 1, Capacity: 1 << 20}}}})
	opts.BufferBytes = 4*(64<<10) + 4*entryOverhead
	opts.BackpressureWait = 150 * time.Millisecond
	svc := startService(t, opts)
	waitFor(t, "syncing", func() bool { return svc.Status()[0].Mode == "syncing" })
	r := rand.New(rand.NewPCG(5, 5))
	burst(t, svc, r, 4)
	if st := svc.Status()[0]; st.Mode != "syncing" || st.ThrottledWrites != 0 {
		t.Fatalf("writes that fit: %+v", st)
	}
	start := time.Now()
	burst(t, svc, r, 1)
	waited := time.Since(start)
	st := svc.Status()[0]
	if st.Mode != "cbt" || st.Status != "CBT mode" || st.CBTEntries != 1 {
		t.Fatalf("after a write that never fits: %+v, want CBT mode", st)
	}
	if st.ThrottledWrites != 1 || waited < opts.BackpressureWait {
		t.Fatalf("the write waited %s (%d delayed), want at least %s before CBT mode", waited, st.ThrottledWrites, opts.BackpressureWait)
	}
	// in CBT mode writes are only marked dirty: no more waiting (until
	// the resync a second later starts streaming again)
	burst(t, svc, r, 3)
	if now := svc.Status()[0]; now.Mode == "cbt" && (now.ThrottledWrites != 1 || now.BufferEntries != 0 || now.Disks[0].DirtyBlocks == 0) {
		t.Fatalf("writes in CBT mode: %+v", now)
	}
}
