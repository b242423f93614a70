package test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/filter/source"
	"github.com/continuum-cdp/continuum/filter/target"
	"github.com/continuum-cdp/continuum/internal/netutil"
	"github.com/continuum-cdp/continuum/internal/wire"
	"github.com/continuum-cdp/continuum/proxy"
)

// modelStream is the stamped stream of one VM, as the source filter
// produced it, and the image it leads to at each sequence number.
type modelStream struct {
	stamps []source.Stamp // sequence order
	next   int            // stamps applied to img
	img    map[int32][]byte
}

// sinkVM is what a fake target holds for one VM.
type sinkVM struct {
	last     uint64
	initDone bool
	disks    map[int32][]byte
	checked  int
	lastKind uint8
}

// modelSink plays the target proxy: it applies points to in-memory
// replicas, checks every listed point against the model, and acknowledges.
type modelSink struct {
	t      *testing.T
	sealer *wire.Sealer
	mu     sync.Mutex
	model  map[string]*modelStream
	vms    map[string]*sinkVM
	caps   map[string]map[int32]int64
	fail   error
	rnd    *mrand.Rand
}

func (s *modelSink) stamp(st source.Stamp) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.model[st.VM]
	if n := len(m.stamps); n > 0 && m.stamps[n-1].Seq >= st.Seq {
		s.failf("vm %s: stamp %d after %d", st.VM, st.Seq, m.stamps[n-1].Seq)
	}
	st.Data = append([]byte(nil), st.Data...)
	m.stamps = append(m.stamps, st)
}

func (s *modelSink) failf(format string, args ...any) {
	if s.fail == nil {
		s.fail = fmt.Errorf(format, args...)
	}
}

func applyExtent(img []byte, off, length int64, op uint8, data []byte) {
	if op == wire.OpData {
		copy(img[off:off+length], data)
		return
	}
	clear(img[off : off+length])
}

// modelAt advances the model image to sequence id.
func (s *modelSink) modelAt(vm string, id uint64) map[int32][]byte {
	m := s.model[vm]
	for m.next < len(m.stamps) && m.stamps[m.next].Seq <= id {
		st := m.stamps[m.next]
		if st.Marker == 0 {
			applyExtent(m.img[st.Disk], st.Off, st.Len, st.Op, st.Data)
		}
		m.next++
	}
	return m.img
}

func (s *modelSink) serve(l net.Listener) {
	for {
		nc, err := l.Accept()
		if err != nil {
			return
		}
		go s.session(nc)
	}
}

func (s *modelSink) session(nc net.Conn) {
	c := wire.NewConn(nc)
	defer c.Close()
	h, err := wire.Expect[*wire.Hello](c)
	if err != nil {
		return
	}
	s.mu.Lock()
	v := s.vms[h.VM]
	if v == nil {
		v = &sinkVM{disks: map[int32][]byte{}}
		for k, n := range s.caps[h.VM] {
			v.disks[k] = make([]byte, n)
		}
		s.vms[h.VM] = v
	}
	ack := &wire.HelloAck{Resume: v.last, InitialSyncDone: v.initDone}
	s.mu.Unlock()
	if c.Send(ack) != nil {
		return
	}
	for {
		m, err := c.ReadMsg()
		if err != nil {
			return
		}
		p, ok := m.(*wire.Point)
		if !ok {
			continue
		}
		ext, err := wire.DecodePoint(p, wire.PointOptions{Sealer: s.sealer, VM: h.VM})
		s.mu.Lock()
		if err != nil {
			s.failf("vm %s: decode point %d: %v", h.VM, p.ID, err)
			s.mu.Unlock()
			return
		}
		if os.Getenv("MODEL_TRACE") != "" {
			s.t.Logf("vm %s point %d kind %d marker %d extents %d", h.VM, p.ID, p.Kind, p.Marker, len(ext))
		}
		if p.ID > v.last {
			for _, e := range ext {
				applyExtent(v.disks[e.Disk], e.Off, e.Len, e.Op, e.Data)
			}
			v.last = p.ID
			v.lastKind = p.Kind
			if p.Marker == wire.MarkerInitialSyncDone {
				v.initDone = true
			}
			if p.Kind == wire.PointShortTerm && v.initDone {
				want := s.modelAt(h.VM, p.ID)
				for k, img := range v.disks {
					if !bytes.Equal(img, want[k]) {
						s.failf("vm %s: listed point %d, disk %d differs from the model", h.VM, p.ID, k)
					}
				}
				v.checked++
			}
		}
		drop := s.rnd.IntN(60) == 0
		s.mu.Unlock()
		if drop {
			return // a lost connection right before the acknowledgement
		}
		if c.Send(&wire.PointAck{ID: p.ID}) != nil {
			return
		}
	}
}

// TestDatapathModel drives random multi-disk workloads (unaligned writes,
// overwrites, trims, zeroes) through the source filter and the source
// proxy into a checking sink, restarting the proxy, once long enough for
// CBT mode, with random cut times; every listed point must equal the
// model's state at that point and the final replicas the source disks.
func TestDatapathModel(t *testing.T) {
	for _, enc := range []bool{false, true} {
		t.Run(fmt.Sprintf("encrypt=%v", enc), func(t *testing.T) {
			runModel(t, enc, false, int64(mrand.Uint64()))
		})
	}
}

// TestDatapathModelJournal is the same workload through the real target
// proxy and target filter; at the end every listed point of the journal
// is exported and compared with the model at that point.
func TestDatapathModelJournal(t *testing.T) {
	runModel(t, true, true, int64(mrand.Uint64()))
}

func runModel(t *testing.T, encrypt, journal bool, seed int64) {
	t.Logf("seed %d", seed)
	r := mrand.New(mrand.NewPCG(uint64(seed), 7))
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	vms := []source.VMConfig{
		{Name: "vm-a", Disks: []source.DiskConfig{{Key: 2000, Capacity: 3 << 20}, {Key: 2001, Capacity: 1536 << 10}}},
		{Name: "vm-b", Disks: []source.DiskConfig{{Key: 2000, Capacity: 2 << 20}, {Key: 2001, Capacity: 512 << 10}, {Key: 2002, Capacity: 1 << 20}}},
	}
	sink := &modelSink{t: t, model: map[string]*modelStream{}, vms: map[string]*sinkVM{}, caps: map[string]map[int32]int64{},
		rnd: mrand.New(mrand.NewPCG(uint64(seed), 9))}
	for _, vm := range vms {
		ms := &modelStream{img: map[int32][]byte{}}
		sink.caps[vm.Name] = map[int32]int64{}
		for i, d := range vm.Disks {
			ms.img[d.Key] = make([]byte, d.Capacity)
			sink.caps[vm.Name][d.Key] = d.Capacity
			// existing content for the initial sync to copy, with holes
			b := make([]byte, d.Capacity)
			for off := 0; off < len(b); off += 64 << 10 {
				if r.IntN(3) > 0 {
					fillRandom(r, b[off:min(len(b), off+64<<10)])
				}
			}
			os.MkdirAll(filepath.Join(dir, vm.Name), 0o755)
			if err := os.WriteFile(filepath.Join(dir, vm.Name, source.DiskFileName(vm.Name, i)), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		sink.model[vm.Name] = ms
	}
	var psealer *wire.Sealer
	if encrypt {
		key := make([]byte, wire.KeySize)
		rand.Read(key)
		var err error
		if psealer, err = wire.NewSealer(key); err != nil {
			t.Fatal(err)
		}
		if sink.sealer, err = wire.NewSealer(key); err != nil {
			t.Fatal(err)
		}
	}
	sl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer sl.Close()
	var tfilter *target.Service
	if journal {
		tfilter, err = target.New(target.Config{JournalDir: filepath.Join(dir, "journal"), ListenAddr: "127.0.0.1:0", Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go tfilter.Run(ctx)
		tp, err := proxy.NewTarget(proxy.TargetConfig{FilterAddr: tfilter.Addr(), Sealer: sink.sealer, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		go tp.Serve(ctx, sl)
	} else {
		go sink.serve(sl)
	}

	proxyAddr := freeAddr(t)
	codecs := []wire.Codec{wire.CodecNone, wire.CodecS2, wire.CodecZstd}
	startProxy := func() (*proxy.SourceProxy, net.Listener) {
		p, err := proxy.NewSource(proxy.SourceConfig{
			DialTarget: func(ctx context.Context) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "tcp", sl.Addr().String())
			},
			RPO: time.Duration(10+r.IntN(60)) * time.Millisecond, CutBytes: int64(64+r.IntN(512)) << 10,
			Codec: codecs[r.IntN(len(codecs))], Sealer: psealer, MemoryBytes: 2 << 20,
			SpillDir: filepath.Join(dir, "spill"), SpillBytes: 1 << 20, TargetWait: 5 * time.Second, Logger: log,
		})
		if err != nil {
			t.Fatal(err)
		}
		var l net.Listener
		for i := 0; i < 50; i++ {
			if l, err = net.Listen("tcp", proxyAddr); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
		go p.Serve(l)
		return p, l
	}
	px, _ := startProxy()

	svc, err := source.New(source.Options{
		Datastore: dir, VMs: vms, BufferBytes: 4 << 20, BlockSize: 4096, Grace: 300 * time.Millisecond,
		ScanChunk: 64 << 10, Logger: log, OnStamp: sink.stamp,
		Dial: func(ctx context.Context) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", proxyAddr)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	if err := svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup
	var werr error
	var werrMu sync.Mutex
	stop := make(chan struct{})
	for vi, vm := range vms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wr := mrand.New(mrand.NewPCG(uint64(seed), uint64(vi)))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				dc := vm.Disks[wr.IntN(len(vm.Disks))]
				d, _ := svc.Disk(vm.Name, dc.Key)
				off := wr.Int64N(dc.Capacity - 1)
				n := 1 + wr.Int64N(min(dc.Capacity-off, 48<<10))
				var err error
				switch k := wr.IntN(10); {
				case k < 7:
					b := make([]byte, n)
					fillRandom(wr, b)
					err = d.WriteAt(b, off, wr.IntN(20) == 0)
				case k < 8:
					err = d.WriteZeroes(off, n, false)
				case k < 9:
					err = d.Trim(off, n)
				default:
					err = d.Flush()
				}
				if err != nil {
					werrMu.Lock()
					werr = errors.Join(werr, err)
					werrMu.Unlock()
					return
				}
				time.Sleep(time.Duration(1+wr.IntN(2)) * time.Millisecond)
			}
		}()
	}
	// faults while the workload runs: a short proxy restart, then one long
	// enough for CBT mode
	time.Sleep(time.Duration(300+r.IntN(400)) * time.Millisecond)
	px.Close()
	px, _ = startProxy()
	time.Sleep(time.Duration(300+r.IntN(400)) * time.Millisecond)
	px.Close()
	time.Sleep(800 * time.Millisecond)
	sawCBT := false
	for _, st := range svc.Status() {
		if st.Mode == "cbt" {
			sawCBT = true
		}
	}
	px, _ = startProxy()
	defer func() { px.Close() }()
	// the workload goes on until every VM is back to syncing, and a little longer
	deadline := time.Now().Add(60 * time.Second)
	for !allSyncing(svc) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(time.Duration(300+r.IntN(500)) * time.Millisecond)
	close(stop)
	wg.Wait()
	if werr != nil {
		t.Fatalf("workload: %v", werr)
	}
	if !sawCBT {
		t.Errorf("no VM entered CBT mode while the proxy was down")
	}

	// quiesce, then one more write per VM: at least one listed point after
	// the last fault, however the faults fell
	quiesce(t, svc)
	for _, vm := range vms {
		d, _ := svc.Disk(vm.Name, vm.Disks[0].Key)
		if err := d.WriteAt([]byte("last write"), 12345, true); err != nil {
			t.Fatal(err)
		}
	}
	quiesce(t, svc)
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if journal {
		checkJournal(t, tfilter, sink, vms, svc, dir)
		return
	}
	if sink.fail != nil {
		t.Fatal(sink.fail)
	}
	for _, vm := range vms {
		v := sink.vms[vm.Name]
		if v == nil || v.checked == 0 {
			t.Fatalf("vm %s: no listed point was checked", vm.Name)
		}
		t.Logf("vm %s: %d listed points checked, last %d", vm.Name, v.checked, v.last)
		if v.lastKind != wire.PointShortTerm {
			t.Fatalf("vm %s: the last point %d is of kind %d, not listed", vm.Name, v.last, v.lastKind)
		}
		for _, dc := range vm.Disks {
			d, _ := svc.Disk(vm.Name, dc.Key)
			want, err := os.ReadFile(d.Path())
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(v.disks[dc.Key], want) {
				t.Fatalf("vm %s disk %d: replica differs from the source disk", vm.Name, dc.Key)
			}
		}
	}
}

// checkJournal exports every listed point of every disk from the target
// filter's journal and compares it with the model at that point; the last
// one must also equal the source disk.
func checkJournal(t *testing.T, tf *target.Service, sink *modelSink, vms []source.VMConfig, svc *source.Service, dir string) {
	t.Helper()
	for _, vm := range vms {
		jv, ok := tf.Store().VM(vm.Name)
		if !ok {
			t.Fatalf("vm %s not in the journal", vm.Name)
		}
		pts := jv.List()
		if len(pts) < 2 {
			t.Fatalf("vm %s: %d listed points", vm.Name, len(pts))
		}
		for _, p := range pts {
			want := sink.modelAt(vm.Name, p.ID)
			for _, dc := range vm.Disks {
				out := filepath.Join(dir, "export.raw")
				if err := jv.Export(p.ID, dc.Key, out); err != nil {
					t.Fatalf("export %s point %d disk %d: %v", vm.Name, p.ID, dc.Key, err)
				}
				got, err := os.ReadFile(out)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want[dc.Key]) {
					t.Fatalf("vm %s: listed point %d (%s) disk %d differs from the model", vm.Name, p.ID, p.Kind, dc.Key)
				}
			}
		}
		last := pts[len(pts)-1].ID
		t.Logf("vm %s: %d listed points restore equal to the model, last %d", vm.Name, len(pts), last)
		for _, dc := range vm.Disks {
			d, _ := svc.Disk(vm.Name, dc.Key)
			src, _ := os.ReadFile(d.Path())
			if !bytes.Equal(src, sink.modelAt(vm.Name, last)[dc.Key]) {
				t.Fatalf("vm %s disk %d: the last listed point differs from the source disk", vm.Name, dc.Key)
			}
		}
	}
}

// quiesce waits until everything stamped is acknowledged and every VM is
// syncing.
func quiesce(t *testing.T, svc *source.Service) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		done := true
		for _, st := range svc.Status() {
			if st.Mode != "syncing" || st.Acked != st.Seq || st.BufferEntries != 0 {
				done = false
			}
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not quiescent: %+v", svc.Status())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func allSyncing(svc *source.Service) bool {
	for _, st := range svc.Status() {
		if st.Mode != "syncing" {
			return false
		}
	}
	return true
}

func fillRandom(r *mrand.Rand, b []byte) {
	for i := 0; i+8 <= len(b); i += 8 {
		v := r.Uint64()
		for k := 0; k < 8; k++ {
			b[i+k] = byte(v >> (8 * k))
		}
	}
	for i := len(b) &^ 7; i < len(b); i++ {
		b[i] = byte(r.Uint32())
	}
}

func freeAddr(t testing.TB) string {
	t.Helper()
	addr, err := netutil.FreeLoopbackAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}
