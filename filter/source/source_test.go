package source

import (
	"bytes"
	"context"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/internal/wire"
)

// fakeProxy plays the source proxy and the target at once: it applies every
// write to an image per disk and, when acking, acknowledges every message.
type fakeProxy struct {
	t        *testing.T
	l        net.Listener
	mu       sync.Mutex
	ack      bool
	acked    uint64
	initDone bool
	img      map[int32][]byte
	lastSeq  uint64
	markers  []uint8
	flags    map[uint8]int
	// delay slows the proxy: it waits this long before taking each message
	delay time.Duration
}

func newFakeProxy(t *testing.T, caps map[int32]int64, initDone, ack bool) *fakeProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeProxy{t: t, l: l, ack: ack, initDone: initDone, img: map[int32][]byte{}, flags: map[uint8]int{}}
	for k, c := range caps {
		f.img[k] = make([]byte, c)
	}
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			go f.serve(nc)
		}
	}()
	t.Cleanup(func() { l.Close() })
	return f
}

func (f *fakeProxy) dial(ctx context.Context) (net.Conn, error) {
	return (&net.Dialer{}).DialContext(ctx, "tcp", f.l.Addr().String())
}

func (f *fakeProxy) serve(nc net.Conn) {
	c := wire.NewConn(nc)
	defer c.Close()
	if _, err := wire.Expect[*wire.Hello](c); err != nil {
		return
	}
	f.mu.Lock()
	ack := &wire.HelloAck{Resume: f.acked, InitialSyncDone: f.initDone}
	f.mu.Unlock()
	if c.Send(ack) != nil {
		return
	}
	for {
		m, err := c.ReadMsg()
		if err != nil {
			return
		}
		f.mu.Lock()
		delay := f.delay
		f.mu.Unlock()
		if delay > 0 {
			time.Sleep(delay)
		}
		f.mu.Lock()
		var seq uint64
		switch m := m.(type) {
		case *wire.Write:
			seq = m.Seq
			if seq > f.lastSeq {
				img := f.img[m.Disk]
				if img == nil {
					// benchmarks keep no image
				} else if m.Op == wire.OpData {
					copy(img[m.Off:], m.Data)
				} else {
					clear(img[m.Off : m.Off+int64(m.Len)])
				}
				f.flags[m.Flags]++
			}
		case *wire.Marker:
			seq = m.Seq
			if seq > f.lastSeq {
				f.markers = append(f.markers, m.Kind)
				if m.Kind == wire.MarkerInitialSyncDone {
					f.initDone = true
				}
			}
		default:
			f.mu.Unlock()
			continue
		}
		if seq <= f.lastSeq {
			f.t.Errorf("seq %d after %d", seq, f.lastSeq)
		}
		f.lastSeq = max(f.lastSeq, seq)
		doAck := f.ack
		if doAck {
			f.acked = f.lastSeq
		}
		f.mu.Unlock()
		if doAck && c.Send(&wire.Ack{Seq: seq}) != nil {
			return
		}
	}
}

// startService creates and starts a service; it is closed when the test
// ends.
func startService(t *testing.T, opts Options) *Service {
	t.Helper()
	svc, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	if err := svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return svc
}

func testOptions(dir string, f *fakeProxy, vms []VMConfig) Options {
	return Options{Datastore: dir, VMs: vms, Dial: f.dial, BlockSize: 4096, ScanChunk: 64 << 10,
		BufferBytes: 8 << 20, Grace: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// TestInitialSyncCopiesExistingData: a disk with content is read whole,
// flagged Initial, while guest writes go on; then the InitialSyncDone
// marker, and the replica equals the disk.
func TestInitialSyncCopiesExistingData(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(1, 1))
	const capacity = 2 << 20
	if err := os.MkdirAll(filepath.Join(dir, "vm1"), 0o755); err != nil {
		t.Fatal(err)
	}
	content := randBytes(r, capacity)
	clear(content[1<<20 : 1<<20+256<<10]) // a hole travels as zeroes
	if err := os.WriteFile(filepath.Join(dir, "vm1", "vm1-flat.vmdk"), content, 0o600); err != nil {
		t.Fatal(err)
	}
	f := newFakeProxy(t, nil, false, true)
	f.img[0] = make([]byte, capacity)
	svc, err := New(testOptions(dir, f, []VMConfig{{Name: "vm1", Disks: []DiskConfig{{Key: 0, Capacity: capacity}}}}))
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	if st := svc.Status()[0]; st.Status != "Initial sync" {
		t.Fatalf("status before the proxy answered: %q", st.Status)
	}
	if err := svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	d, _ := svc.Disk("vm1", 0)
	for i := 0; i < 50; i++ {
		off := r.Int64N(capacity - 5000)
		if err := d.WriteAt(randBytes(r, 1+r.IntN(4999)), off, false); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "syncing", func() bool { st := svc.Status()[0]; return st.Mode == "syncing" && st.Acked == st.Seq })
	want, _ := os.ReadFile(d.Path())
	f.mu.Lock()
	defer f.mu.Unlock()
	if !bytes.Equal(f.img[0], want) {
		t.Fatal("replica differs from the disk after the initial sync")
	}
	if len(f.markers) != 1 || f.markers[0] != wire.MarkerInitialSyncDone {
		t.Fatalf("markers %v, want one InitialSyncDone", f.markers)
	}
	if f.flags[wire.FlagInitial] == 0 {
		t.Fatal("no write was flagged Initial")
	}
}

// TestRestartResyncsDirtyBlocks: writes that never reached the target are
// in the dirty bitmap on disk; a new filter process (same datastore) resyncs
// them between ResyncStart and ResyncDone and continues the sequence above
// everything stamped before.
func TestRestartResyncsDirtyBlocks(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(2, 2))
	vms := []VMConfig{{Name: "vm1", Disks: []DiskConfig{{Key: 7, Capacity: 1 << 20}, {Key: 8, Capacity: 512 << 10}}}}
	// the first process: initial sync done at the target, nothing acked
	f1 := newFakeProxy(t, nil, true, false)
	f1.img[7], f1.img[8] = make([]byte, 1<<20), make([]byte, 512<<10)
	svc1, err := New(testOptions(dir, f1, vms))
	if err != nil {
		t.Fatal(err)
	}
	ctx1, cancel1 := context.WithCancel(context.Background())
	if err := svc1.Start(ctx1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "syncing", func() bool { return svc1.Status()[0].Mode == "syncing" })
	for i := 0; i < 40; i++ {
		d := svc1.Disks()[r.IntN(2)]
		off := r.Int64N(d.Size() - 9000)
		if err := d.WriteAt(randBytes(r, 1+r.IntN(8999)), off, i%10 == 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := svc1.Disks()[0].Trim(4096, 8192); err != nil {
		t.Fatal(err)
	}
	seq1 := svc1.Status()[0].Seq
	if n := svc1.Status()[0].Disks[0].DirtyBlocks; n == 0 {
		t.Fatal("no dirty blocks after unacknowledged writes")
	}
	// crash: stop the streams without closing (no final bitmap sync)
	cancel1()

	// the target has nothing of these writes
	f2 := newFakeProxy(t, nil, true, true)
	f2.img[7], f2.img[8] = make([]byte, 1<<20), make([]byte, 512<<10)
	svc2, err := New(testOptions(dir, f2, vms))
	if err != nil {
		t.Fatal(err)
	}
	defer svc2.Close()
	if err := svc2.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "resync done", func() bool {
		st := svc2.Status()[0]
		return st.Mode == "syncing" && st.Acked == st.Seq && st.Seq > 0
	})
	st := svc2.Status()[0]
	f2.mu.Lock()
	defer f2.mu.Unlock()
	if len(f2.markers) != 2 || f2.markers[0] != wire.MarkerResyncStart || f2.markers[1] != wire.MarkerResyncDone {
		t.Fatalf("markers %v, want ResyncStart, ResyncDone", f2.markers)
	}
	if st.Seq <= seq1 {
		t.Fatalf("sequence went back: %d after %d", st.Seq, seq1)
	}
	for _, d := range svc2.Disks() {
		want, _ := os.ReadFile(d.Path())
		if !bytes.Equal(f2.img[d.Key()], want) {
			t.Fatalf("disk %d: replica differs after the resync", d.Key())
		}
		if n := st.Disks[0].DirtyBlocks; n != 0 {
			t.Fatalf("%d dirty blocks left after the resync was acknowledged", n)
		}
	}
}

// TestCBTModeWhenProxyUnreachable: without a proxy past the grace period
// the VM reports CBT mode with a reason; writes are only marked dirty.
func TestCBTModeWhenProxyUnreachable(t *testing.T) {
	dir := t.TempDir()
	f := newFakeProxy(t, nil, true, true)
	f.img[1] = make([]byte, 1<<20)
	addr := f.l.Addr().String()
	f.l.Close()
	opts := testOptions(dir, f, []VMConfig{{Name: "vm1", Disks: []DiskConfig{{Key: 1, Capacity: 1 << 20}}}})
	opts.Dial = func(ctx context.Context) (net.Conn, error) { return (&net.Dialer{}).DialContext(ctx, "tcp", addr) }
	svc := startService(t, opts)
	d := svc.Disks()[0]
	if err := d.WriteAt([]byte("hello"), 100, false); err != nil {
		t.Fatal(err)
	}
	// Starting: the first answer decides; until then writes are dirty only
	if st := svc.Status()[0]; st.BufferEntries != 0 || st.Disks[0].DirtyBlocks != 1 {
		t.Fatalf("before the first session: %+v", st)
	}
	if err := d.WriteAt([]byte("x"), 1<<20, false); err == nil {
		t.Fatal("write past the end accepted")
	}
}

func TestOptionsValidate(t *testing.T) {
	dial := func(context.Context) (net.Conn, error) { return nil, nil }
	bad := []Options{
		{Dial: dial, VMs: []VMConfig{{Name: "a", Disks: []DiskConfig{{Key: 1, Capacity: 4096}}}}},
		{Datastore: "/x", VMs: []VMConfig{{Name: "a", Disks: []DiskConfig{{Key: 1, Capacity: 4096}}}}},
		{Datastore: "/x", Dial: dial, VMs: []VMConfig{{Name: "../a", Disks: []DiskConfig{{Key: 1, Capacity: 4096}}}}},
		{Datastore: "/x", Dial: dial, VMs: []VMConfig{{Name: "a", Disks: []DiskConfig{{Key: 1, Capacity: 4096}, {Key: 1, Capacity: 4096}}}}},
		{Datastore: "/x", Dial: dial, VMs: []VMConfig{{Name: "a", Disks: []DiskConfig{{Key: 1, Capacity: 1000}}}}},
		{Datastore: "/x", Dial: dial, VMs: []VMConfig{{Name: "a"}}},
	}
	for i, o := range bad {
		if err := o.Validate(); err == nil {
			t.Errorf("case %d: accepted", i)
		}
	}
	dir := t.TempDir()
	// a disk file larger than its capacity is refused and nothing is changed
	os.MkdirAll(filepath.Join(dir, "a"), 0o755)
	p := filepath.Join(dir, "a", "a-flat.vmdk")
	os.WriteFile(p, make([]byte, 8192), 0o600)
	if _, err := New(Options{Datastore: dir, Dial: dial, VMs: []VMConfig{{Name: "a", Disks: []DiskConfig{{Key: 1, Capacity: 4096}}}}}); err == nil {
		t.Fatal("disk larger than its capacity accepted")
	}
	if st, _ := os.Stat(p); st.Size() != 8192 {
		t.Fatal("refused disk was changed")
	}
}

// TestDirtyMapPersists: set bits survive a reopen; a file of the wrong
// size makes every block dirty.
func TestDirtyMapPersists(t *testing.T) {
	p := filepath.Join(t.TempDir(), "d")
	m, err := openDirtyMap(p, 1<<20, 4096, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.mark(5000, 10000, 3); err != nil {
		t.Fatal(err)
	}
	m.mark(900000, 1, 4)
	m.ack(3)
	m.close()
	m, _ = openDirtyMap(p, 1<<20, 4096, false)
	// clearing was not written yet: all four blocks are still dirty
	if m.count() != 4 {
		t.Fatalf("%d dirty blocks after reopen, want 4", m.count())
	}
	m.ack(^uint64(0) - 1) // not "unsent": nothing is cleared
	if m.count() != 4 {
		t.Fatal("blocks of unknown state were cleared")
	}
	runs := m.dirtyRuns(1<<20, 1<<20)
	if len(runs) != 2 || runs[0] != (span{4096, 16384}) || runs[1] != (span{897024, 901120}) {
		t.Fatalf("runs %v", runs)
	}
	m.close()
	m, _ = openDirtyMap(p, 2<<20, 4096, false)
	if m.count() != 512 {
		t.Fatalf("%d dirty blocks with a mismatched file, want all 512", m.count())
	}
	m.close()
}
