package source

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/filter/nbd"
	"github.com/continuum-cdp/continuum/internal/wire"
)

// fakeTarget is the model of a target shared by several fake source
// proxies: what delivering proxies apply is the replica of each VM. A
// proxy that does not deliver swallows what it receives, the way a proxy
// that lost its target does; a new proxy knows nothing but what the target
// holds.
type fakeTarget struct {
	t   *testing.T
	mu  sync.Mutex
	vms map[string]*fakeReplica
}

type fakeReplica struct {
	img      map[int32][]byte
	lastSeq  uint64
	initDone bool
	markers  []uint8
	hellos   int
}

// fakeSrcProxy is one proxy address in front of a fakeTarget.
type fakeSrcProxy struct {
	ft      *fakeTarget
	l       net.Listener
	mu      sync.Mutex
	deliver bool
	conns   map[net.Conn]bool
	vms     map[string]int // sessions accepted per VM
}

func newFakeTarget(t *testing.T) *fakeTarget {
	return &fakeTarget{t: t, vms: map[string]*fakeReplica{}}
}

func (ft *fakeTarget) proxy(deliver bool) *fakeSrcProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		ft.t.Fatal(err)
	}
	p := &fakeSrcProxy{ft: ft, l: l, deliver: deliver, conns: map[net.Conn]bool{}, vms: map[string]int{}}
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			p.conns[nc] = true
			p.mu.Unlock()
			go p.serve(nc)
		}
	}()
	ft.t.Cleanup(p.stop)
	return p
}

func (p *fakeSrcProxy) addr() string { return p.l.Addr().String() }

func (p *fakeSrcProxy) setDeliver(b bool) {
	p.mu.Lock()
	p.deliver = b
	p.mu.Unlock()
}

func (p *fakeSrcProxy) sessions(vm string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.vms[vm]
}

// stop closes the listener and every connection.
func (p *fakeSrcProxy) stop() {
	p.l.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
}

func (p *fakeSrcProxy) serve(nc net.Conn) {
	ft := p.ft
	c := wire.NewConn(nc)
	defer c.Close()
	h, err := wire.Expect[*wire.Hello](c)
	if err != nil {
		return
	}
	disks := map[int32]int64{}
	ft.mu.Lock()
	r := ft.vms[h.VM]
	if r == nil {
		r = &fakeReplica{img: map[int32][]byte{}}
		ft.vms[h.VM] = r
	}
	r.hellos++
	for _, d := range h.Disks {
		disks[d.Key] = d.Capacity
		if r.img[d.Key] == nil {
			r.img[d.Key] = make([]byte, d.Capacity) // a new disk of the replica reads as zeroes
		}
	}
	ack := &wire.HelloAck{Resume: r.lastSeq, InitialSyncDone: r.initDone}
	ft.mu.Unlock()
	p.mu.Lock()
	p.vms[h.VM]++
	p.mu.Unlock()
	if c.Send(ack) != nil {
		return
	}
	var connLast uint64
	for {
		m, err := c.ReadMsg()
		if err != nil {
			return
		}
		var seq uint64
		switch m := m.(type) {
		case *wire.Write:
			seq = m.Seq
			if _, ok := disks[m.Disk]; !ok {
				ft.t.Errorf("vm %s: write seq %d to disk %d, not in this session's hello", h.VM, m.Seq, m.Disk)
				return
			}
		case *wire.Marker:
			seq = m.Seq
		default:
			continue
		}
		if seq <= connLast {
			ft.t.Errorf("vm %s: seq %d after %d on one session", h.VM, seq, connLast)
		}
		connLast = seq
		p.mu.Lock()
		deliver := p.deliver
		p.mu.Unlock()
		if !deliver {
			continue
		}
		ft.mu.Lock()
		if seq > r.lastSeq {
			switch m := m.(type) {
			case *wire.Write:
				img := r.img[m.Disk]
				if m.Op == wire.OpData {
					copy(img[m.Off:], m.Data)
				} else {
					clear(img[m.Off : m.Off+int64(m.Len)])
				}
			case *wire.Marker:
				r.markers = append(r.markers, m.Kind)
				if m.Kind == wire.MarkerInitialSyncDone {
					r.initDone = true
				}
			}
			r.lastSeq = seq
		}
		ft.mu.Unlock()
		if c.Send(&wire.Ack{Seq: seq}) != nil {
			return
		}
	}
}

// snapshot and restore model a target that loses the tail of a VM.
func (ft *fakeTarget) snapshot(vm string) fakeReplica {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	r := ft.vms[vm]
	s := fakeReplica{img: map[int32][]byte{}, lastSeq: r.lastSeq, initDone: r.initDone}
	for k, b := range r.img {
		s.img[k] = bytes.Clone(b)
	}
	return s
}

func (ft *fakeTarget) restore(vm string, s fakeReplica) {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	r := ft.vms[vm]
	r.img, r.lastSeq, r.initDone = s.img, s.lastSeq, s.initDone
}

// checkExact waits until the VM is Syncing with everything acknowledged,
// then compares every disk file with the replica.
func (ft *fakeTarget) checkExact(t *testing.T, svc *Service, vm string) {
	t.Helper()
	waitFor(t, vm+" syncing and acknowledged", func() bool {
		for _, st := range svc.Status() {
			if st.VM == vm {
				return st.Mode == "syncing" && st.Status == "Syncing" && st.Acked == st.Seq && st.Seq > 0
			}
		}
		return false
	})
	ft.mu.Lock()
	defer ft.mu.Unlock()
	r := ft.vms[vm]
	for _, d := range svc.Disks() {
		if d.VM() != vm {
			continue
		}
		want, err := os.ReadFile(d.Path())
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(r.img[d.Key()], want) {
			t.Fatalf("vm %s disk %d: the replica differs from the disk", vm, d.Key())
		}
	}
}

// fakeExports records the exports like an NBD server's list.
type fakeExports struct {
	mu sync.Mutex
	m  map[string]nbd.Backend
}

func (e *fakeExports) AddExport(x nbd.Export) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.m == nil {
		e.m = map[string]nbd.Backend{}
	}
	if _, ok := e.m[x.Name]; ok {
		return nbd.ErrDuplicateExport
	}
	e.m[x.Name] = x.Backend
	return nil
}

func (e *fakeExports) RemoveExport(name string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.m[name]; !ok {
		return nbd.ErrUnknownExport
	}
	delete(e.m, name)
	return nil
}

func (e *fakeExports) names() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for n := range e.m {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func applyOptions(dir string, ex *fakeExports) Options {
	o := testOptions(dir, nil, nil)
	o.Dial = nil
	o.DialProxy = func(ctx context.Context, addr string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	}
	o.Exports = ex
	o.Exclusive = true
	return o
}

func vmc(name, proxy string, disks ...int32) VMConfig {
	c := VMConfig{Name: name, Proxy: proxy}
	for _, k := range disks {
		c.Disks = append(c.Disks, DiskConfig{Key: k, Capacity: 1 << 20})
	}
	return c
}

// writeSome writes n random extents to the disk.
func writeSome(t *testing.T, r *rand.Rand, d *Disk, n int) {
	t.Helper()
	for range n {
		off := r.Int64N(d.Size() - 9000)
		if err := d.WriteAt(randBytes(r, 1+r.IntN(8999)), off, false); err != nil {
			t.Fatal(err)
		}
	}
}

func mustDisk(t *testing.T, svc *Service, vm string, key int32) *Disk {
	t.Helper()
	d, ok := svc.Disk(vm, key)
	if !ok {
		t.Fatalf("no disk %s/%d", vm, key)
	}
	return d
}

func statusOf(svc *Service, vm string) (VMStatus, bool) {
	for _, st := range svc.Status() {
		if st.VM == vm {
			return st, true
		}
	}
	return VMStatus{}, false
}

// TestApplyAddsAndRemovesVMs: a VM added at run time is exported and
// initially synced; a removed one stops streaming, loses its exports and
// keeps its files; added back, it resumes without a new initial sync.
func TestApplyAddsAndRemovesVMs(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(3, 3))
	ft := newFakeTarget(t)
	p := ft.proxy(true)
	ex := &fakeExports{}
	opts := applyOptions(dir, ex)
	opts.VMs = []VMConfig{vmc("vm1", p.addr(), 1)}
	svc := startService(t, opts)
	writeSome(t, r, mustDisk(t, svc, "vm1", 1), 20)
	if err := svc.Apply([]VMConfig{vmc("vm1", p.addr(), 1), vmc("vm2", p.addr(), 1, 2)}); err != nil {
		t.Fatal(err)
	}
	if got := ex.names(); fmt.Sprint(got) != "[vm1/1 vm2/1 vm2/2]" {
		t.Fatalf("exports %v", got)
	}
	writeSome(t, r, mustDisk(t, svc, "vm2", 2), 20)
	ft.checkExact(t, svc, "vm1")
	ft.checkExact(t, svc, "vm2")

	// remove vm1 while writes of it are not acknowledged
	p.setDeliver(false)
	d1 := mustDisk(t, svc, "vm1", 1)
	writeSome(t, r, d1, 10)
	if err := svc.Apply([]VMConfig{vmc("vm2", p.addr(), 1, 2)}); err != nil {
		t.Fatal(err)
	}
	if _, ok := svc.Disk("vm1", 1); ok {
		t.Fatal("vm1 still open after its removal")
	}
	if got := ex.names(); fmt.Sprint(got) != "[vm2/1 vm2/2]" {
		t.Fatalf("exports after the removal: %v", got)
	}
	if err := d1.WriteAt([]byte("late"), 0, false); err == nil {
		t.Fatal("a closed disk accepted a write")
	}
	if _, err := os.Stat(filepath.Join(dir, "vm1", "vm1-flat.vmdk")); err != nil {
		t.Fatalf("the removed vm's file: %v", err)
	}
	p.setDeliver(true)
	writeSome(t, r, mustDisk(t, svc, "vm2", 1), 10)
	ft.checkExact(t, svc, "vm2")

	// back again: the unacknowledged writes are in its bitmap and resync
	ft.mu.Lock()
	initMarkers := len(ft.vms["vm1"].markers)
	ft.mu.Unlock()
	if err := svc.Apply([]VMConfig{vmc("vm1", p.addr(), 1), vmc("vm2", p.addr(), 1, 2)}); err != nil {
		t.Fatal(err)
	}
	if st, _ := statusOf(svc, "vm1"); st.Disks[0].DirtyBlocks == 0 {
		t.Fatal("the reopened vm lost its dirty blocks")
	}
	ft.checkExact(t, svc, "vm1")
	ft.mu.Lock()
	got := ft.vms["vm1"].markers[initMarkers:]
	ft.mu.Unlock()
	if len(got) != 2 || got[0] != wire.MarkerResyncStart || got[1] != wire.MarkerResyncDone {
		t.Fatalf("markers after reopening %v, want a resync only", got)
	}
}

// TestApplyVMotionHandsOver: two hosts share the datastore. The new host
// cannot open the VM while the old one runs it; once the old one let go,
// the new one resumes from the folder's state: its sequence continues above
// the old host's, and what the old host never got acknowledged is resent.
func TestApplyVMotionHandsOver(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(4, 4))
	ft := newFakeTarget(t)
	pa, pb := ft.proxy(true), ft.proxy(true)
	optsA, optsB := applyOptions(dir, &fakeExports{}), applyOptions(dir, &fakeExports{})
	optsA.NodeID, optsB.NodeID = "host-a", "host-b"
	a, err := New(optsA)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := New(optsB)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	a.Start(context.Background())
	b.Start(context.Background())
	if err := a.Apply([]VMConfig{vmc("vm1", pa.addr(), 1, 2)}); err != nil {
		t.Fatal(err)
	}
	writeSome(t, r, mustDisk(t, a, "vm1", 2), 20)
	ft.checkExact(t, a, "vm1")
	pa.setDeliver(false)
	writeSome(t, r, mustDisk(t, a, "vm1", 1), 20)
	seqA, _ := statusOf(a, "vm1")

	err = b.Apply([]VMConfig{vmc("vm1", pb.addr(), 1, 2)})
	if !errors.Is(err, ErrInUse) {
		t.Fatalf("opening a vm the other host runs: %v, want ErrInUse", err)
	}
	if len(b.VMs()) != 0 {
		t.Fatal("a refused vm was opened")
	}
	if err := a.Apply(nil); err != nil {
		t.Fatal(err)
	}
	if err := b.Apply([]VMConfig{vmc("vm1", pb.addr(), 1, 2)}); err != nil {
		t.Fatal(err)
	}
	writeSome(t, r, mustDisk(t, b, "vm1", 1), 5)
	ft.checkExact(t, b, "vm1")
	if st, _ := statusOf(b, "vm1"); st.Seq <= seqA.Seq {
		t.Fatalf("sequence went back on the new host: %d after %d", st.Seq, seqA.Seq)
	}
}

// TestApplyAddsDiskWhileStreaming: a disk added to a running VM is synced
// in full (reported as an initial sync) while the other disk keeps
// streaming; no write of it travels on a session whose hello lacks it.
func TestApplyAddsDiskWhileStreaming(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(5, 5))
	ft := newFakeTarget(t)
	p := ft.proxy(true)
	ex := &fakeExports{}
	opts := applyOptions(dir, ex)
	opts.VMs = []VMConfig{vmc("vm1", p.addr(), 1)}
	svc, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	svc.Start(context.Background())
	d1 := mustDisk(t, svc, "vm1", 1)
	writeSome(t, r, d1, 10)
	ft.checkExact(t, svc, "vm1")
	// the new disk has data already (a disk attached with content)
	content := randBytes(r, 1<<20)
	if err := os.WriteFile(filepath.Join(dir, "vm1", "vm1_1-flat.vmdk"), content, 0o600); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		wr := rand.New(rand.NewPCG(6, 6))
		for {
			select {
			case <-stop:
				return
			default:
			}
			off := wr.Int64N(d1.Size() - 4096)
			if err := d1.WriteAt(randBytes(wr, 4096), off, false); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	if err := svc.Apply([]VMConfig{vmc("vm1", p.addr(), 1, 2)}); err != nil {
		t.Fatal(err)
	}
	if st, _ := statusOf(svc, "vm1"); st.Status != "Initial sync" {
		t.Fatalf("status right after adding a disk: %q (%s)", st.Status, st.Reason)
	}
	if got := ex.names(); fmt.Sprint(got) != "[vm1/1 vm1/2]" {
		t.Fatalf("exports %v", got)
	}
	writeSome(t, r, mustDisk(t, svc, "vm1", 2), 10)
	time.Sleep(300 * time.Millisecond)
	close(stop)
	<-done
	ft.checkExact(t, svc, "vm1")
	if p.sessions("vm1") < 2 {
		t.Fatal("the disk was added without a new session")
	}
}

// TestApplyMovesToAnotherProxy: the VM's proxy lost its target (nothing it
// got is delivered); moved to a new proxy that knows nothing, the filter
// resends everything not acknowledged and the replica is exact.
func TestApplyMovesToAnotherProxy(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(7, 7))
	ft := newFakeTarget(t)
	pa, pb := ft.proxy(true), ft.proxy(true)
	opts := applyOptions(dir, &fakeExports{})
	opts.VMs = []VMConfig{vmc("vm1", pa.addr(), 1, 2)}
	svc, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	svc.Start(context.Background())
	writeSome(t, r, mustDisk(t, svc, "vm1", 1), 10)
	ft.checkExact(t, svc, "vm1")
	pa.setDeliver(false)
	writeSome(t, r, mustDisk(t, svc, "vm1", 2), 30)
	if err := svc.Apply([]VMConfig{vmc("vm1", pb.addr(), 1, 2)}); err != nil {
		t.Fatal(err)
	}
	writeSome(t, r, mustDisk(t, svc, "vm1", 1), 10)
	ft.checkExact(t, svc, "vm1")
	if pb.sessions("vm1") == 0 {
		t.Fatal("the new proxy never got a session")
	}
	n := pa.sessions("vm1")
	writeSome(t, r, mustDisk(t, svc, "vm1", 1), 5)
	ft.checkExact(t, svc, "vm1")
	if pa.sessions("vm1") != n {
		t.Fatal("the filter went back to the old proxy")
	}
}

// TestTargetBehindResendsEverything: a target that resumes below what it
// acknowledged (it lost its tail) gets every block again.
func TestTargetBehindResendsEverything(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(8, 8))
	ft := newFakeTarget(t)
	p := ft.proxy(true)
	opts := applyOptions(dir, &fakeExports{})
	opts.VMs = []VMConfig{vmc("vm1", p.addr(), 1)}
	svc, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	svc.Start(context.Background())
	d := mustDisk(t, svc, "vm1", 1)
	writeSome(t, r, d, 10)
	ft.checkExact(t, svc, "vm1")
	snap := ft.snapshot("vm1")
	writeSome(t, r, d, 30)
	ft.checkExact(t, svc, "vm1")
	p.setDeliver(false)
	ft.restore("vm1", snap)
	// a new session: the target answers with its old position
	p.stop()
	p2 := ft.proxy(true)
	if err := svc.Apply([]VMConfig{vmc("vm1", p2.addr(), 1)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "delivery through the new proxy", func() bool {
		ft.mu.Lock()
		defer ft.mu.Unlock()
		return ft.vms["vm1"].lastSeq > snap.lastSeq
	})
	ft.checkExact(t, svc, "vm1")
}

// TestApplyInvalidChangesNothing: a list with an error is refused whole.
func TestApplyInvalidChangesNothing(t *testing.T) {
	dir := t.TempDir()
	ft := newFakeTarget(t)
	p := ft.proxy(true)
	opts := applyOptions(dir, &fakeExports{})
	opts.VMs = []VMConfig{vmc("vm1", p.addr(), 1)}
	svc, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	bad := [][]VMConfig{
		{vmc("vm2", p.addr(), 1), vmc("vm2", p.addr(), 2)},
		{vmc("../x", p.addr(), 1)},
		{vmc("vm2", p.addr())},
		{vmc("vm2", "", 1)}, // no default proxy to fall back on
	}
	for i, vms := range bad {
		if err := svc.Apply(vms); err == nil {
			t.Errorf("case %d accepted", i)
		}
		if got := svc.VMs(); fmt.Sprint(got) != "[vm1]" {
			t.Fatalf("case %d changed the vms: %v", i, got)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "vm2")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a refused list created a folder")
	}
}

// TestApplyDiskRemovedReopensVM: a disk gone from the VM's list closes
// and reopens the VM without it (its export goes, its file stays); added
// back, it is synced in full again.
func TestApplyDiskRemovedReopensVM(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(9, 9))
	ft := newFakeTarget(t)
	p := ft.proxy(true)
	ex := &fakeExports{}
	opts := applyOptions(dir, ex)
	opts.VMs = []VMConfig{vmc("vm1", p.addr(), 1, 2)}
	svc, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	svc.Start(context.Background())
	writeSome(t, r, mustDisk(t, svc, "vm1", 2), 10)
	ft.checkExact(t, svc, "vm1")
	if err := svc.Apply([]VMConfig{vmc("vm1", p.addr(), 1)}); err != nil {
		t.Fatal(err)
	}
	if got := ex.names(); fmt.Sprint(got) != "[vm1/1]" {
		t.Fatalf("exports %v", got)
	}
	if _, ok := svc.Disk("vm1", 2); ok {
		t.Fatal("the removed disk is still open")
	}
	writeSome(t, r, mustDisk(t, svc, "vm1", 1), 10)
	ft.checkExact(t, svc, "vm1")
	// the replica's copy of disk 2 changes behind the filter's back: only
	// a full sync of the re-added disk repairs it
	ft.mu.Lock()
	clear(ft.vms["vm1"].img[2])
	ft.mu.Unlock()
	if err := svc.Apply([]VMConfig{vmc("vm1", p.addr(), 1, 2)}); err != nil {
		t.Fatal(err)
	}
	writeSome(t, r, mustDisk(t, svc, "vm1", 1), 5)
	ft.checkExact(t, svc, "vm1")
}
