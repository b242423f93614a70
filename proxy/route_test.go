package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/continuum-cdp/continuum/filter/target"
	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/wire"
)

func testLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// routeRig is a managed data path after the source filter: a source proxy,
// managed target proxies and one target filter, all over mutual TLS.
type routeRig struct {
	t       *testing.T
	conf    *tls.Config
	filter  *target.Service
	source  *SourceProxy
	srcAddr string
}

func newRouteRig(t *testing.T) *routeRig {
	r := &routeRig{t: t, conf: targetTLS(t)}
	s, err := target.New(target.Config{JournalDir: t.TempDir(), ListenAddr: "127.0.0.1:0", TLS: r.conf})
	if err != nil {
		t.Fatal(err)
	}
	// Run closes the filter when its context ends: a Close racing with a
	// Run that has not started yet (a test that never uses the filter)
	// would race on the filter's wait group
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	r.filter = s
	r.source, err = NewSource(SourceConfig{
		DialAddr: func(ctx context.Context, addr string) (net.Conn, error) {
			d := tls.Dialer{Config: r.conf}
			return d.DialContext(ctx, "tcp", addr)
		},
		RPO: 20 * time.Millisecond, CutBytes: 32 << 10, Codec: wire.CodecS2, Logger: testLogger(),
		ConfigWait: 300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.source.Close() })
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.srcAddr = l.Addr().String()
	go r.source.Serve(l)
	return r
}

// targetProxy starts a managed target proxy serving routes.
func (r *routeRig) targetProxy(routes map[string]TargetRoute) (*Target, *prometheus.Registry, string) {
	reg := prometheus.NewRegistry()
	tp, err := NewTarget(TargetConfig{TLS: r.conf, FilterTLS: r.conf, Managed: true, Registerer: reg, Logger: testLogger()})
	if err != nil {
		r.t.Fatal(err)
	}
	if err := tp.Configure(routes); err != nil {
		r.t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		r.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- tp.Serve(ctx, l) }()
	r.t.Cleanup(func() { cancel(); <-served })
	return tp, reg, l.Addr().String()
}

// fakeFilter plays the source filter of one VM: ordered writes, and the
// acknowledgements the proxy forwards.
type fakeFilter struct {
	t      *testing.T
	c      *wire.Conn
	vm     string
	seq    uint64
	writes []*wire.Write
	acked  chan uint64
	closed chan error
}

func (r *routeRig) connectFilter(vm string) (*fakeFilter, *wire.HelloAck) {
	r.t.Helper()
	nc, err := net.Dial("tcp", r.srcAddr)
	if err != nil {
		r.t.Fatal(err)
	}
	return connectFilterConn(r.t, nc, vm)
}

// connectFilterConn opens a filter session of vm on nc.
func connectFilterConn(t *testing.T, nc net.Conn, vm string) (*fakeFilter, *wire.HelloAck) {
	t.Helper()
	c := wire.NewConn(nc)
	t.Cleanup(func() { c.Close() })
	ack, err := wire.Greet(c, &wire.Hello{Role: wire.RoleSourceFilter, VM: vm, Disks: targetTestDisks}, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeFilter{t: t, c: c, vm: vm, acked: make(chan uint64, 1<<16), closed: make(chan error, 1)}
	if ack.Err != "" {
		return f, ack
	}
	go func() {
		for {
			m, err := c.ReadMsg()
			if err != nil {
				f.closed <- err
				return
			}
			if a, ok := m.(*wire.Ack); ok {
				f.acked <- a.Seq
			}
		}
	}()
	return f, ack
}

// write sends n random writes (the first ones flagged as initial sync).
func (f *fakeFilter) write(rnd *rand.Rand, n int, initial bool) {
	f.t.Helper()
	for range n {
		d := targetTestDisks[rnd.IntN(len(targetTestDisks))]
		l := 512 + rnd.Int64N(8<<10)
		off := rnd.Int64N(d.Capacity - l)
		data := make([]byte, l)
		for i := range data {
			data[i] = byte(rnd.Uint32())
		}
		f.seq++
		w := &wire.Write{Seq: f.seq, Disk: d.Key, Off: off, Op: wire.OpData, Len: uint32(l), Data: data}
		if initial {
			w.Flags = wire.FlagInitial
		}
		if err := f.c.Send(w); err != nil {
			f.t.Fatal(err)
		}
		f.writes = append(f.writes, w)
	}
}

func (f *fakeFilter) marker(kind uint8) {
	f.t.Helper()
	f.seq++
	if err := f.c.Send(&wire.Marker{Seq: f.seq, Kind: kind}); err != nil {
		f.t.Fatal(err)
	}
}

// waitAck waits until every sequence up to seq is acknowledged.
func (f *fakeFilter) waitAck(seq uint64) {
	f.t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case a := <-f.acked:
			if a >= seq {
				return
			}
		case err := <-f.closed:
			f.t.Fatalf("filter session ended before ack of %d: %v", seq, err)
		case <-deadline:
			f.t.Fatalf("no ack of %d", seq)
		}
	}
}

// state is each disk's content after every write up to seq.
func (f *fakeFilter) state(seq uint64) map[int32][]byte {
	out := map[int32][]byte{}
	for _, d := range targetTestDisks {
		out[d.Key] = make([]byte, d.Capacity)
	}
	for _, w := range f.writes {
		if w.Seq <= seq {
			copy(out[w.Disk][w.Off:], w.Data)
		}
	}
	return out
}

// checkJournal compares every listed point of the VM with the writes, and
// wants the last write's sequence to be the newest point.
func (r *routeRig) checkJournal(f *fakeFilter) int {
	return checkJournal(r.t, r.filter, f)
}

func checkJournal(t *testing.T, s *target.Service, f *fakeFilter) int {
	t.Helper()
	v, ok := s.Store().VM(f.vm)
	if !ok {
		t.Fatalf("vm %s not in the journal", f.vm)
	}
	pts := v.List()
	if len(pts) == 0 || v.LastID() != f.seq {
		t.Fatalf("journal ends at %d, last write %d (%d points)", v.LastID(), f.seq, len(pts))
	}
	for i, p := range pts {
		if i > 0 && p.ID <= pts[i-1].ID {
			t.Fatalf("points not strictly increasing: %+v", pts)
		}
		want := f.state(p.ID)
		for key, w := range want {
			pr, err := v.OpenPoint(p.ID, key)
			if err != nil {
				t.Fatal(err)
			}
			got := make([]byte, pr.Size())
			if _, err := pr.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			pr.Close()
			if !bytes.Equal(got, w) {
				t.Fatalf("point %d disk %d differs from the writes up to it", p.ID, key)
			}
		}
	}
	return len(pts)
}

func testKey(b byte) []byte {
	k := make([]byte, wire.KeySize)
	for i := range k {
		k[i] = b + byte(i)
	}
	return k
}

// ackGate relays connections to a target proxy; while held, nothing flows
// back, so the points it delivers become durable at the target filter but
// stay unacknowledged at the source proxy.
type ackGate struct {
	addr string
	held atomic.Bool
}

func newAckGate(t *testing.T, upstream string) *ackGate {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	g := &ackGate{addr: l.Addr().String()}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			go func() { io.Copy(u, c); u.Close(); c.Close() }()
			go func() {
				defer c.Close()
				buf := make([]byte, 32<<10)
				for {
					n, err := u.Read(buf)
					for g.held.Load() {
						time.Sleep(5 * time.Millisecond)
						if _, werr := c.Write(nil); werr != nil {
							return
						}
					}
					if n > 0 {
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return g
}

// TestSourceRouteSwitchTarget: writes flow through target proxy A; the
// acknowledgements from A are held back, so points are durable at the
// target filter but not acknowledged at the source when the VM's route
// moves to target proxy B. B's handshake carries the filter's resume
// position: the held writes are acknowledged, nothing is applied twice,
// and the journal holds exactly the writes, point by point.
func TestSourceRouteSwitchTarget(t *testing.T) {
	r := newRouteRig(t)
	key := testKey(3)
	tr := map[string]TargetRoute{"vm-a": {TaskID: "task-1", Filter: r.filter.Addr(), Key: key}}
	tpA, _, addrA := r.targetProxy(tr)
	tpB, _, addrB := r.targetProxy(tr)
	gate := newAckGate(t, addrA)
	if err := r.source.Configure(map[string]SourceRoute{"vm-a": {TaskID: "task-1", Target: gate.addr, Key: key}}); err != nil {
		t.Fatal(err)
	}
	f, ack := r.connectFilter("vm-a")
	if ack.Err != "" {
		t.Fatalf("hello refused: %s", ack.Err)
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	f.write(rnd, 40, true)
	f.marker(wire.MarkerInitialSyncDone)
	f.write(rnd, 40, false)
	f.waitAck(f.seq)
	if counterValue(t, tpA.m.points) == 0 {
		t.Fatal("nothing went through target proxy A")
	}

	gate.held.Store(true)
	heldFrom := f.seq + 1
	f.write(rnd, 30, false)
	v, _ := r.filter.Store().VM("vm-a")
	for i := 0; v.LastID() != f.seq; i++ {
		if i == 1000 {
			t.Fatalf("the target filter holds %d of %d", v.LastID(), f.seq)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for len(f.acked) > 0 {
		if a := <-f.acked; a >= heldFrom {
			t.Fatalf("write %d acknowledged through a held gate", a)
		}
	}
	if err := r.source.Configure(map[string]SourceRoute{"vm-a": {TaskID: "task-1", Target: addrB, Key: key}}); err != nil {
		t.Fatal(err)
	}
	f.waitAck(f.seq) // the held writes, acknowledged by B's resume position
	f.write(rnd, 60, false)
	f.waitAck(f.seq)
	if n := counterValue(t, tpB.m.points); n == 0 {
		t.Fatal("nothing went through target proxy B after the switch")
	}
	st := r.source.Status()
	if len(st) != 1 || st[0].Target != addrB || st[0].TaskID != "task-1" || !st[0].Encrypted || st[0].AckedPoint != f.seq {
		t.Fatalf("status after the switch: %+v", st)
	}
	if st[0].LastPointAt.IsZero() || st[0].AckLagSeconds <= 0 {
		t.Fatalf("no lag or last point time reported: %+v", st[0])
	}
	// A is no longer used: more writes leave its counter alone
	before := counterValue(t, tpA.m.points)
	f.write(rnd, 10, false)
	f.waitAck(f.seq)
	if after := counterValue(t, tpA.m.points); after != before {
		t.Fatalf("target proxy A still receives points: %v -> %v", before, after)
	}
	if n := r.checkJournal(f); n < 3 {
		t.Fatalf("only %d points", n)
	}
}

// TestSourceWaitsForARoute: a filter that has its configuration before
// the source proxy is not refused: its Hello waits (ConfigWait) for the
// VM's route, and the session starts once it arrives.
func TestSourceWaitsForARoute(t *testing.T) {
	r := newRouteRig(t)
	key := testKey(8)
	_, _, addr := r.targetProxy(map[string]TargetRoute{"vm-w": {Filter: r.filter.Addr(), Key: key}})
	configured := make(chan error, 1)
	time.AfterFunc(100*time.Millisecond, func() {
		configured <- r.source.Configure(map[string]SourceRoute{"vm-w": {Target: addr, Key: key, RPO: time.Second}})
	})
	start := time.Now()
	f, ack := r.connectFilter("vm-w")
	if ack.Err != "" {
		t.Fatalf("a filter that came before its route was refused: %s", ack.Err)
	}
	if err := <-configured; err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited < 100*time.Millisecond {
		t.Fatalf("accepted after %s, before the route existed", waited)
	}
	rnd := rand.New(rand.NewPCG(8, 8))
	f.write(rnd, 4, true)
	f.marker(wire.MarkerInitialSyncDone)
	f.write(rnd, 4, false)
	f.waitAck(f.seq)
	if n := r.checkJournal(f); n < 1 {
		t.Fatalf("%d points after the late route", n)
	}
}

// TestSourceRouteDropAndRPO: a VM's RPO applies at run time; a VM removed
// from the routes is dropped at once (its filter session closes, its
// memory is freed) and a filter of a VM without a route is refused.
func TestSourceRouteDropAndRPO(t *testing.T) {
	r := newRouteRig(t)
	key := testKey(9)
	_, _, addr := r.targetProxy(map[string]TargetRoute{"vm-a": {Filter: r.filter.Addr(), Key: key}})

	if f, ack := r.connectFilter("vm-a"); ack.Err == "" || !strings.Contains(ack.Err, "not configured") {
		t.Fatalf("a VM without a route was accepted: %+v", ack)
	} else {
		f.c.Close()
	}
	if err := r.source.Configure(map[string]SourceRoute{"vm-a": {Target: addr, Key: key, RPO: time.Hour}}); err != nil {
		t.Fatal(err)
	}
	f, ack := r.connectFilter("vm-a")
	if ack.Err != "" {
		t.Fatal(ack.Err)
	}
	rnd := rand.New(rand.NewPCG(5, 6))
	f.write(rnd, 4, false)
	// the writes are small: only the RPO can cut them, and it is an hour
	time.Sleep(300 * time.Millisecond)
	if st := r.source.Status(); len(st) != 1 || st[0].Points != 0 || st[0].PendingBytes == 0 {
		t.Fatalf("cut before the RPO: %+v", st)
	}
	if err := r.source.Configure(map[string]SourceRoute{"vm-a": {Target: addr, Key: key, RPO: 20 * time.Millisecond}}); err != nil {
		t.Fatal(err)
	}
	f.waitAck(f.seq)

	// drop right after writes that are still in the open interval
	f.write(rnd, 4, false)
	if err := r.source.Configure(map[string]SourceRoute{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-f.closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the filter session of a dropped VM stays open")
	}
	if st := r.source.Status(); len(st) != 0 {
		t.Fatalf("dropped VM still listed: %+v", st)
	}
	r.source.mu.Lock()
	mem, spill := r.source.memBytes, r.source.spillUsed
	r.source.mu.Unlock()
	if mem != 0 || spill != 0 {
		t.Fatalf("a dropped VM left %d bytes in memory and %d spilled", mem, spill)
	}
	if _, ack := r.connectFilter("vm-a"); ack.Err == "" {
		t.Fatal("a dropped VM's filter was accepted again")
	}
}

// TestSourceConfigureRejectsBadRoutes: a bad route is an error and the
// routes in force stay.
func TestSourceConfigureRejectsBadRoutes(t *testing.T) {
	r := newRouteRig(t)
	good := map[string]SourceRoute{"vm-a": {Target: "127.0.0.1:1", Key: testKey(1)}}
	if err := r.source.Configure(good); err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string]map[string]SourceRoute{
		"short key":      {"vm-a": {Target: "127.0.0.1:1", Key: []byte("short")}},
		"no target":      {"vm-a": {Key: testKey(1)}},
		"bad address":    {"vm-a": {Target: "nowhere", Key: testKey(1)}},
		"encrypt no key": {"vm-a": {Target: "127.0.0.1:1", Rules: []model.TrafficRule{{Name: "x", Encrypt: true}}}},
		"bad cidr":       {"vm-a": {Target: "127.0.0.1:1", Rules: []model.TrafficRule{{Name: "x", SourceCIDR: "10.0.0.0/99"}}}},
		"negative rpo":   {"vm-a": {Target: "127.0.0.1:1", RPO: -time.Second}},
		"empty vm":       {"": {Target: "127.0.0.1:1"}},
	} {
		if err := r.source.Configure(bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
		if got := r.source.routes["vm-a"]; got == nil || got.Target != "127.0.0.1:1" || len(got.Key) != wire.KeySize {
			t.Fatalf("%s: the routes in force changed: %+v", name, got)
		}
	}
	static, err := NewSource(SourceConfig{DialTarget: func(context.Context) (net.Conn, error) { return nil, errors.New("no") }})
	if err != nil {
		t.Fatal(err)
	}
	defer static.Close()
	if err := static.Configure(good); err == nil {
		t.Error("routes accepted without an address dialer")
	}
}

// TestTargetManagedRoutes: a managed target proxy refuses a VM it does not
// list, requires the task's key, lets a path go clear only where a rule of
// the task says so, and closes a VM's session when its route changes.
func TestTargetManagedRoutes(t *testing.T) {
	r := newRouteRig(t)
	key := testKey(4)
	tp, reg, addr := r.targetProxy(map[string]TargetRoute{"vm-a": {Filter: r.filter.Addr(), Key: key}})
	dial := func(vm string) (*wire.Conn, *wire.HelloAck) {
		d := tls.Dialer{Config: r.conf}
		nc, err := d.DialContext(context.Background(), "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c := wire.NewConn(nc)
		t.Cleanup(func() { c.Close() })
		ack, err := wire.Greet(c, &wire.Hello{Role: wire.RoleSourceProxy, VM: vm, Disks: targetTestDisks}, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return c, ack
	}
	point := func(c *wire.Conn, vm string, id uint64, sealer *wire.Sealer) (wire.Msg, error) {
		ext := []wire.Extent{{Disk: 2000, Off: int64(id) * 512, Op: wire.OpData, Len: 512, Data: bytes.Repeat([]byte{byte(id)}, 512)}}
		p := &wire.Point{ID: id, Time: time.Now().UnixNano(), Kind: wire.PointInitial}
		if id == 1 {
			p.Marker = wire.MarkerInitialSyncDone
		}
		if err := wire.EncodePoint(p, ext, wire.PointOptions{Codec: wire.CodecS2, Sealer: sealer, VM: vm}); err != nil {
			t.Fatal(err)
		}
		if err := c.Send(p); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		return c.ReadMsg()
	}
	if _, ack := dial("vm-x"); ack.Err == "" {
		t.Fatal("a VM without a route was accepted")
	}
	// the refusal is counted right after it is sent
	for i := 0; rejectedTotal(t, reg) != 1; i++ {
		if i == 200 {
			t.Fatalf("foreign VM: %v rejections counted", rejectedTotal(t, reg))
		}
		time.Sleep(10 * time.Millisecond)
	}
	right, _ := wire.NewSealer(key)
	c, ack := dial("vm-a")
	if ack.Err != "" {
		t.Fatal(ack.Err)
	}
	if m, err := point(c, "vm-a", 1, right); err != nil {
		t.Fatal(err)
	} else if a, ok := m.(*wire.PointAck); !ok || a.ID != 1 {
		t.Fatalf("got %+v", m)
	}
	// a clear point without a rule allowing it is foreign
	if m, err := point(c, "vm-a", 2, nil); err == nil {
		t.Fatalf("clear point accepted: %+v", m)
	}
	// the route changes: the open session is closed
	c, ack = dial("vm-a")
	if ack.Err != "" {
		t.Fatal(ack.Err)
	}
	clearRule := []model.TrafficRule{{Name: "lan", SourceCIDR: "127.0.0.0/8", TargetCIDR: "127.0.0.0/8"}}
	if err := tp.Configure(map[string]TargetRoute{"vm-a": {Filter: r.filter.Addr(), Key: key, Rules: clearRule}}); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.ReadMsg(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("session not closed on a route change: %v", err)
	}
	// now the rule lets the loopback path go clear
	c, ack = dial("vm-a")
	if ack.Err != "" || ack.Resume != 1 {
		t.Fatalf("resume %+v", ack)
	}
	if m, err := point(c, "vm-a", 2, nil); err != nil {
		t.Fatal(err)
	} else if a, ok := m.(*wire.PointAck); !ok || a.ID != 2 {
		t.Fatalf("got %+v", m)
	}
	if err := tp.Configure(map[string]TargetRoute{"vm-a": {Filter: "nowhere"}}); err == nil {
		t.Fatal("bad filter address accepted")
	}
	if _, ack := dial("vm-a"); ack.Err != "" {
		t.Fatalf("a refused configuration changed the routes: %s", ack.Err)
	}
}

// TestSourceRouteRuleBuckets: VMs under the same throttling rule share one
// bucket, which survives a new configuration; another limit gets its own.
func TestSourceRouteRuleBuckets(t *testing.T) {
	r := newRouteRig(t)
	slow := []model.TrafficRule{{ID: "r1", Name: "wan", TargetCIDR: "10.0.0.0/8", ThrottleBytesPerSec: 1 << 20}}
	routes := map[string]SourceRoute{
		"vm-a": {Target: "127.0.0.1:1", Rules: slow},
		"vm-b": {Target: "127.0.0.1:2", Rules: slow},
	}
	if err := r.source.Configure(routes); err != nil {
		t.Fatal(err)
	}
	b := r.source.routes["vm-a"].rules[0].bucket
	if b == nil || r.source.routes["vm-b"].rules[0].bucket != b {
		t.Fatal("two VMs under one rule do not share its bucket")
	}
	routes["vm-c"] = SourceRoute{Target: "127.0.0.1:3", Rules: slow}
	if err := r.source.Configure(routes); err != nil {
		t.Fatal(err)
	}
	if r.source.routes["vm-c"].rules[0].bucket != b || r.source.routes["vm-a"].rules[0].bucket != b {
		t.Fatal("a new configuration replaced the rule's bucket")
	}
	faster := []model.TrafficRule{{ID: "r1", Name: "wan", TargetCIDR: "10.0.0.0/8", ThrottleBytesPerSec: 8 << 20}}
	if err := r.source.Configure(map[string]SourceRoute{"vm-a": {Target: "127.0.0.1:1", Rules: faster}}); err != nil {
		t.Fatal(err)
	}
	if nb := r.source.routes["vm-a"].rules[0].bucket; nb == b || nb == nil || nb.rate != 8<<20 {
		t.Fatal("a changed limit kept the old bucket")
	}
}
