package source

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/continuum-cdp/continuum/internal/directio"
	"github.com/continuum-cdp/continuum/internal/wire"
)

func TestGetDataCopies(t *testing.T) {
	for _, n := range []int{0, 1, minPooled - 1, minPooled, minPooled + 1, 1 << 20, maxPooled, maxPooled + 1} {
		src := bytes.Repeat([]byte{0xa5}, n)
		got := getData(src)
		if len(got) != n || !bytes.Equal(got, src) {
			t.Fatalf("getData of %d bytes: %d bytes, equal %v", n, len(got), bytes.Equal(got, src))
		}
		if n > 0 && &got[0] == &src[0] {
			t.Fatalf("getData of %d bytes aliases its input", n)
		}
		if n >= minPooled && n <= maxPooled && cap(got)&(cap(got)-1) != 0 {
			t.Fatalf("pooled buffer of %d bytes has capacity %d", n, cap(got))
		}
		putData(got)
	}
	// a buffer that did not come from getData is not kept
	putData(make([]byte, 5000))
	if b := getData(make([]byte, 5000)); cap(b) != 8192 {
		t.Fatalf("class of 5000 bytes has capacity %d, want 8192", cap(b))
	}
}

// An entry acknowledged while a writeLoop still writes it keeps its data
// until that writeLoop is done with it.
func TestEntryReleaseWaitsForSender(t *testing.T) {
	w := &wire.Write{Seq: 1, Op: wire.OpData, Data: getData(bytes.Repeat([]byte{1}, 8192))}
	e := &entry{seq: 1, msg: w, sending: true}
	e.release()
	if w.Data == nil || !e.ackedSending {
		t.Fatal("data released while being sent")
	}
	e.sending = false
	e.ackedSending = false
	e.release()
	if w.Data != nil {
		t.Fatal("data not released once sent and acknowledged")
	}
}

// WriteOwned streams the caller's buffer itself; WriteAt streams a copy.
// Both reach the file and the proxy intact, and a write out of range
// fails and changes nothing.
func TestWriteOwnedStreamsItsBuffer(t *testing.T) {
	dir := t.TempDir()
	const capacity = 1 << 20
	f := newFakeProxy(t, map[int32]int64{0: capacity}, true, true)
	var mu sync.Mutex
	stamped := map[uint64]*byte{}
	opts := testOptions(dir, f, []VMConfig{{Name: "vm1", Disks: []DiskConfig{{Key: 0, Capacity: capacity}}}})
	opts.OnStamp = func(s Stamp) {
		if len(s.Data) > 0 {
			mu.Lock()
			stamped[s.Seq] = &s.Data[0]
			mu.Unlock()
		}
	}
	svc := startService(t, opts)
	waitFor(t, "syncing", func() bool { return svc.Status()[0].Mode == "syncing" })
	d, _ := svc.Disk("vm1", 0)
	owned := d.WriteBuffer(64 << 10)
	for i := range owned {
		owned[i] = byte(i % 251)
	}
	ownedAt := &owned[0]
	want := append([]byte(nil), owned...)
	if err := d.WriteOwned(owned, 4096, false); err != nil {
		t.Fatal(err)
	}
	ownedSeq := svc.Status()[0].Seq
	copied := bytes.Repeat([]byte{7}, 8192)
	if err := d.WriteAt(copied, 128<<10, false); err != nil {
		t.Fatal(err)
	}
	copiedSeq := svc.Status()[0].Seq
	if err := d.WriteOwned(d.WriteBuffer(4096), capacity, false); err == nil {
		t.Fatal("a write past the end was accepted")
	}
	if st := svc.Status()[0]; st.Seq != copiedSeq {
		t.Fatalf("the refused write was stamped: seq %d, want %d", st.Seq, copiedSeq)
	}
	mu.Lock()
	if stamped[ownedSeq] != ownedAt {
		t.Fatal("WriteOwned streamed a copy instead of its buffer")
	}
	if stamped[copiedSeq] == nil || stamped[copiedSeq] == &copied[0] {
		t.Fatal("WriteAt streamed the caller's buffer instead of a copy")
	}
	mu.Unlock()
	waitFor(t, "acknowledged", func() bool { st := svc.Status()[0]; return st.Acked == st.Seq })
	disk, _ := os.ReadFile(d.Path())
	f.mu.Lock()
	defer f.mu.Unlock()
	for name, img := range map[string][]byte{"disk": disk, "proxy": f.img[0]} {
		if !bytes.Equal(img[4096:4096+len(want)], want) || !bytes.Equal(img[128<<10:136<<10], copied) {
			t.Fatalf("the %s does not hold both writes", name)
		}
	}
}

// Aligned writes go to the flat file directly where the file system
// allows it, the others through the page cache; reads see both at once,
// and BufferedIO keeps every write in the page cache.
func TestDirectDiskWrites(t *testing.T) {
	for _, buffered := range []bool{false, true} {
		dir := t.TempDir()
		probe := filepath.Join(dir, "probe")
		os.WriteFile(probe, nil, 0o644)
		if f := directio.Open(probe); f == nil {
			t.Skip("the test directory's file system has no direct I/O")
		} else {
			f.Close()
		}
		f := newFakeProxy(t, map[int32]int64{0: 1 << 20}, true, true)
		opts := testOptions(dir, f, []VMConfig{{Name: "vm1", Disks: []DiskConfig{{Key: 0, Capacity: 1 << 20}}}})
		opts.BufferedIO = buffered
		svc := startService(t, opts)
		d, _ := svc.Disk("vm1", 0)
		aligned := directio.Aligned(64 << 10)
		for i := range aligned {
			aligned[i] = byte(i*13 + 1)
		}
		odd := bytes.Repeat([]byte{9}, 1000)
		if err := d.WriteAt(aligned, 128<<10, false); err != nil {
			t.Fatal(err)
		}
		if err := d.WriteAt(odd, 128<<10+5, false); err != nil { // over the direct write, unaligned
			t.Fatal(err)
		}
		if err := d.WriteAt(aligned[:8192], 256<<10, false); err != nil {
			t.Fatal(err)
		}
		want := append([]byte(nil), aligned...)
		copy(want[5:], odd)
		got := make([]byte, len(want))
		if _, err := d.ReadAt(got, 128<<10); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("buffered %v: a read after mixed writes differs (%v)", buffered, err)
		}
		if _, err := d.ReadAt(got[:8192], 256<<10); err != nil || !bytes.Equal(got[:8192], aligned[:8192]) {
			t.Fatalf("buffered %v: the second direct write does not read back (%v)", buffered, err)
		}
		wantDirect := int64(2)
		if buffered {
			wantDirect = 0
		}
		if n := d.directs.Load(); n != wantDirect {
			t.Fatalf("buffered %v: %d direct writes, want %d", buffered, n, wantDirect)
		}
		svc.Close()
	}
}
