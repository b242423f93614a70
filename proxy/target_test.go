package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/continuum-cdp/continuum/filter/journal"
	"github.com/continuum-cdp/continuum/filter/target"
	"github.com/continuum-cdp/continuum/internal/pki"
	"github.com/continuum-cdp/continuum/internal/wire"
)

var targetTestDisks = []wire.Disk{{Key: 2000, Capacity: 192 << 10}, {Key: 2001, Capacity: 64 << 10}}

// targetTLS is a mutual TLS pair from a throwaway CA.
func targetTLS(t testing.TB) *tls.Config {
	t.Helper()
	ca, err := pki.NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue("node", []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return pki.RaftServerTLS(ca.Cert, leaf.TLSCertificate(ca.Cert))
}

// targetRig is the real target side: target proxy and target filter, with
// a test playing the source proxy.
type targetRig struct {
	t       testing.TB
	tlsConf *tls.Config
	dir     string
	filter  atomic.Pointer[target.Service]
	done    chan error
	proxy   *Target
	addr    string
	reg     *prometheus.Registry
	sealer  *wire.Sealer
	disks   []wire.Disk
}

func newTargetRig(t testing.TB, sealer *wire.Sealer, jopts journal.Options) *targetRig {
	t.Helper()
	return newTargetRigAt(t, sealer, jopts, "127.0.0.1:0", targetTLS(t))
}

// newTargetRigAt listens on addr (a loopback address) with tlsConf.
func newTargetRigAt(t testing.TB, sealer *wire.Sealer, jopts journal.Options, addr string, tlsConf *tls.Config) *targetRig {
	t.Helper()
	r := &targetRig{t: t, tlsConf: tlsConf, dir: t.TempDir(), sealer: sealer, reg: prometheus.NewRegistry(), disks: targetTestDisks}
	r.startFilter(jopts)
	var err error
	r.proxy, err = NewTarget(TargetConfig{
		TLS:       r.tlsConf,
		FilterTLS: r.tlsConf,
		// The filter moves to a new port when it restarts.
		DialFilter: func(ctx context.Context, vm string) (net.Conn, error) {
			d := tls.Dialer{Config: r.tlsConf}
			return d.DialContext(ctx, "tcp", r.filter.Load().Addr())
		},
		Sealer:      sealer,
		VMs:         []string{"vm-a", "vm-b"},
		Registerer:  r.reg,
		IdleTimeout: 20 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	r.addr = l.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- r.proxy.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		<-served
		r.stopFilter()
	})
	return r
}

func (r *targetRig) startFilter(jopts journal.Options) {
	s, err := target.New(target.Config{JournalDir: r.dir, Journal: jopts, ListenAddr: "127.0.0.1:0", TLS: r.tlsConf})
	if err != nil {
		r.t.Fatal(err)
	}
	r.filter.Store(s)
	r.done = make(chan error, 1)
	go func() { r.done <- s.Run(context.Background()) }()
}

// stopFilter cuts the target filter without a drain, like a kill.
func (r *targetRig) stopFilter() {
	if s := r.filter.Load(); s != nil {
		s.Close()
		<-r.done
	}
}

func (r *targetRig) vm(name string) *journal.VM {
	v, ok := r.filter.Load().Store().VM(name)
	if !ok {
		r.t.Fatalf("vm %s not in the journal", name)
	}
	return v
}

// src is the test's source proxy session.
type src struct {
	t  testing.TB
	c  *wire.Conn
	vm string
	s  *wire.Sealer
}

func (r *targetRig) dial(vm string, sealer *wire.Sealer) (*src, *wire.HelloAck) {
	r.t.Helper()
	d := tls.Dialer{Config: r.tlsConf}
	nc, err := d.DialContext(context.Background(), "tcp", r.addr)
	if err != nil {
		r.t.Fatal(err)
	}
	c := wire.NewConn(nc)
	r.t.Cleanup(func() { c.Close() })
	if err := c.Send(&wire.Hello{Role: wire.RoleSourceProxy, NodeID: "sp", VM: vm, Disks: r.disks}); err != nil {
		r.t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	ack, err := wire.Expect[*wire.HelloAck](c)
	if err != nil {
		r.t.Fatal(err)
	}
	return &src{t: r.t, c: c, vm: vm, s: sealer}, ack
}

func (s *src) point(id uint64, kind, marker uint8, ext []wire.Extent) *wire.Point {
	s.t.Helper()
	p := &wire.Point{ID: id, Time: time.Now().UnixNano(), Kind: kind, Marker: marker}
	if err := wire.EncodePoint(p, ext, wire.PointOptions{Codec: wire.CodecS2, Sealer: s.s, VM: s.vm}); err != nil {
		s.t.Fatal(err)
	}
	return p
}

func (s *src) send(m wire.Msg) {
	s.t.Helper()
	if err := s.c.Send(m); err != nil {
		s.t.Fatal(err)
	}
}

func (s *src) next(d time.Duration) (wire.Msg, error) {
	_ = s.c.SetReadDeadline(time.Now().Add(d))
	return s.c.ReadMsg()
}

func (s *src) expectAck(id uint64) {
	s.t.Helper()
	m, err := s.next(10 * time.Second)
	if err != nil {
		s.t.Fatalf("ack of %d: %v", id, err)
	}
	if a, ok := m.(*wire.PointAck); !ok || a.ID != id {
		s.t.Fatalf("ack of %d: got %T %+v", id, m, m)
	}
}

// expectDropped reads until the proxy closes the connection; no ack may
// arrive on the way.
func (s *src) expectDropped() {
	s.t.Helper()
	for {
		m, err := s.next(10 * time.Second)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				s.t.Fatal("connection was not dropped")
			}
			return
		}
		if a, ok := m.(*wire.PointAck); ok {
			s.t.Fatalf("rejected frame acknowledged: %d", a.ID)
		}
	}
}

// targetModel is the expected content of each disk after each point.
type targetModel struct {
	cur map[int32][]byte
	at  map[uint64]map[int32][]byte
}

func newTargetModel() *targetModel {
	m := &targetModel{cur: map[int32][]byte{}, at: map[uint64]map[int32][]byte{}}
	for _, d := range targetTestDisks {
		m.cur[d.Key] = make([]byte, d.Capacity)
	}
	return m
}

func (m *targetModel) apply(id uint64, ext []wire.Extent) {
	for _, e := range ext {
		if e.Op == wire.OpData {
			copy(m.cur[e.Disk][e.Off:], e.Data)
		} else {
			clear(m.cur[e.Disk][e.Off : e.Off+e.Len])
		}
	}
	snap := map[int32][]byte{}
	for k, v := range m.cur {
		snap[k] = bytes.Clone(v)
	}
	m.at[id] = snap
}

func targetRandomExtents(r *rand.Rand, n int) []wire.Extent {
	var out []wire.Extent
	for range n {
		d := targetTestDisks[r.IntN(len(targetTestDisks))]
		off := r.Int64N(d.Capacity - 1)
		l := 1 + r.Int64N(min(d.Capacity-off, 9000))
		if r.IntN(4) == 0 {
			out = append(out, wire.Extent{Disk: d.Key, Off: off, Op: wire.OpZero, Len: l})
			continue
		}
		data := make([]byte, l)
		// Half random, half repetitive, so compression has work to do.
		for i := range data {
			if i < len(data)/2 {
				data[i] = byte(r.Uint32())
			} else {
				data[i] = byte(i / 64)
			}
		}
		out = append(out, wire.Extent{Disk: d.Key, Off: off, Op: wire.OpData, Len: l, Data: data})
	}
	return out
}

// initialSync sends points 1 and 2 (the second completes the sync).
func (s *src) initialSync(r *rand.Rand, m *targetModel) {
	s.t.Helper()
	for i, d := range targetTestDisks {
		data := make([]byte, d.Capacity)
		for j := range data {
			data[j] = byte(r.Uint32())
		}
		ext := []wire.Extent{{Disk: d.Key, Off: 0, Op: wire.OpData, Len: d.Capacity, Data: data}}
		id, marker := uint64(i+1), wire.MarkerNone
		if i == len(targetTestDisks)-1 {
			marker = wire.MarkerInitialSyncDone
		}
		s.send(s.point(id, wire.PointInitial, marker, ext))
		s.expectAck(id)
		m.apply(id, ext)
	}
}

// check compares every listed point with the model.
func (r *targetRig) check(vm string, m *targetModel) []journal.PointInfo {
	r.t.Helper()
	v := r.vm(vm)
	pts := v.List()
	for i, p := range pts {
		if i > 0 && p.ID <= pts[i-1].ID {
			r.t.Fatalf("listing not strictly increasing: %+v", pts)
		}
		want, ok := m.at[p.ID]
		if !ok {
			r.t.Fatalf("point %d listed but never sent", p.ID)
		}
		for key, w := range want {
			pr, err := v.OpenPoint(p.ID, key)
			if err != nil {
				r.t.Fatal(err)
			}
			got := make([]byte, pr.Size())
			if _, err := pr.ReadAt(got, 0); err != nil {
				r.t.Fatal(err)
			}
			pr.Close()
			if !bytes.Equal(got, w) {
				r.t.Fatalf("point %d disk %d differs from what was sent", p.ID, key)
			}
		}
	}
	return pts
}

func TestTargetEndToEnd(t *testing.T) {
	for _, enc := range []bool{false, true} {
		t.Run(fmt.Sprintf("encrypted=%v", enc), func(t *testing.T) {
			var sealer *wire.Sealer
			if enc {
				sealer, _ = wire.NewSealer(bytes.Repeat([]byte{4}, wire.KeySize))
			}
			rig := newTargetRig(t, sealer, journal.Options{})
			s, ack := rig.dial("vm-a", sealer)
			if ack.Err != "" || ack.Resume != 0 || ack.InitialSyncDone {
				t.Fatalf("hello ack: %+v", ack)
			}
			r := rand.New(rand.NewPCG(1, 2))
			m := newTargetModel()
			s.initialSync(r, m)
			// Pipelined: many points in flight, acks in order.
			var ids []uint64
			for id := uint64(3); id < 23; id++ {
				ext := targetRandomExtents(r, 5)
				s.send(s.point(id, wire.PointShortTerm, wire.MarkerNone, ext))
				m.apply(id, ext)
				ids = append(ids, id)
			}
			for _, id := range ids {
				s.expectAck(id)
			}
			if pts := rig.check("vm-a", m); len(pts) != 21 {
				t.Fatalf("%d points listed", len(pts))
			}
			// A new session resumes from the target filter's position.
			s.c.Close()
			_, ack = rig.dial("vm-a", sealer)
			if ack.Resume != 22 || !ack.InitialSyncDone {
				t.Fatalf("resume: %+v", ack)
			}
			if got := counterValue(t, rig.proxy.m.acks); got != 22 {
				t.Fatalf("acks metric %v", got)
			}
		})
	}
}

// TestTargetKillFilterMidStream cuts the target filter while points are in
// flight: the session drops, and after a restart and a resend from the
// resume position every acknowledged point restores exactly, once.
func TestTargetKillFilterMidStream(t *testing.T) {
	sealer, _ := wire.NewSealer(bytes.Repeat([]byte{5}, wire.KeySize))
	rig := newTargetRig(t, sealer, journal.Options{})
	s, _ := rig.dial("vm-a", sealer)
	r := rand.New(rand.NewPCG(3, 4))
	m := newTargetModel()
	s.initialSync(r, m)
	sent := map[uint64][]wire.Extent{}
	for id := uint64(3); id < 60; id++ {
		sent[id] = targetRandomExtents(r, 4)
		s.send(s.point(id, wire.PointShortTerm, wire.MarkerNone, sent[id]))
	}
	var acked uint64
	for acked < 10 {
		msg, err := s.next(10 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		a := msg.(*wire.PointAck)
		if a.ID <= acked {
			t.Fatalf("ack %d after %d", a.ID, acked)
		}
		acked = a.ID
	}
	rig.stopFilter()
	for {
		msg, err := s.next(10 * time.Second)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal("session survived the target filter")
			}
			break
		}
		if a, ok := msg.(*wire.PointAck); ok {
			acked = a.ID
		}
	}
	rig.startFilter(journal.Options{})
	s2, ack := rig.dial("vm-a", sealer)
	if ack.Resume < acked {
		t.Fatalf("resume %d below the acknowledged %d", ack.Resume, acked)
	}
	for id := uint64(3); id < 60; id++ {
		if id > ack.Resume {
			s2.send(s2.point(id, wire.PointShortTerm, wire.MarkerNone, sent[id]))
			s2.expectAck(id)
		}
		m.apply(id, sent[id])
	}
	if pts := rig.check("vm-a", m); len(pts) != 58 {
		t.Fatalf("%d points listed, want 58", len(pts))
	}
}

func TestTargetRejectsBadFrames(t *testing.T) {
	key := bytes.Repeat([]byte{6}, wire.KeySize)
	sealer, _ := wire.NewSealer(key)
	rig := newTargetRig(t, sealer, journal.Options{})
	s, _ := rig.dial("vm-a", sealer)
	r := rand.New(rand.NewPCG(5, 6))
	m := newTargetModel()
	s.initialSync(r, m)
	for id := uint64(3); id < 6; id++ {
		ext := targetRandomExtents(r, 3)
		s.send(s.point(id, wire.PointShortTerm, wire.MarkerNone, ext))
		s.expectAck(id)
		m.apply(id, ext)
	}
	s.c.Close()
	v := rig.vm("vm-a")
	before := v.List()
	ext := []wire.Extent{{Disk: 2000, Off: 0, Op: wire.OpData, Len: 6, Data: []byte("forged")}}
	frame := func(p *wire.Point) []byte {
		b, err := wire.AppendFrame(nil, p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	otherKey, _ := wire.NewSealer(bytes.Repeat([]byte{7}, wire.KeySize))
	cases := []struct {
		name   string
		vm     string
		frames func(s *src) [][]byte
		reason string
	}{
		{"corrupt", "vm-a", func(s *src) [][]byte {
			b := frame(s.point(6, wire.PointShortTerm, 0, ext))
			b[len(b)-10] ^= 0x40
			return [][]byte{b}
		}, "corrupt_frame"},
		{"truncated", "vm-a", func(s *src) [][]byte {
			b := frame(s.point(6, wire.PointShortTerm, 0, ext))
			return [][]byte{b[:len(b)-7]}
		}, "corrupt_frame"},
		{"wrong key", "vm-a", func(s *src) [][]byte {
			p := &wire.Point{ID: 6, Kind: wire.PointShortTerm}
			_ = wire.EncodePoint(p, ext, wire.PointOptions{Codec: wire.CodecS2, Sealer: otherKey, VM: "vm-a"})
			return [][]byte{frame(p)}
		}, "foreign"},
		{"other vm's frame", "vm-a", func(s *src) [][]byte {
			p := &wire.Point{ID: 6, Kind: wire.PointShortTerm}
			_ = wire.EncodePoint(p, ext, wire.PointOptions{Codec: wire.CodecS2, Sealer: sealer, VM: "vm-b"})
			return [][]byte{frame(p)}
		}, "foreign"},
		{"id swapped", "vm-a", func(s *src) [][]byte {
			p := s.point(9, wire.PointShortTerm, 0, ext)
			p.ID = 6
			return [][]byte{frame(p)}
		}, "foreign"},
		{"unencrypted", "vm-a", func(s *src) [][]byte {
			p := &wire.Point{ID: 6, Kind: wire.PointShortTerm}
			_ = wire.EncodePoint(p, ext, wire.PointOptions{Codec: wire.CodecS2})
			return [][]byte{frame(p)}
		}, "foreign"},
		{"replayed", "vm-a", func(s *src) [][]byte {
			// A genuine new point, then the same frame again.
			p6 := s.point(6, wire.PointShortTerm, 0, ext)
			return [][]byte{frame(p6), frame(p6)}
		}, "replayed"},
		{"unexpected message", "vm-a", func(s *src) [][]byte {
			b, _ := wire.AppendFrame(nil, &wire.Write{Seq: 6, Disk: 2000, Op: wire.OpData, Len: 1, Data: []byte{1}})
			return [][]byte{b}
		}, "unexpected_message"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before6 := v.LastID()
			s, _ := rig.dial(c.vm, sealer)
			frames := c.frames(s)
			for i, b := range frames {
				if _, err := s.c.NetConn().Write(b); err != nil {
					t.Fatal(err)
				}
				if c.name == "replayed" && i == 0 {
					s.expectAck(6) // the first copy is genuine
					m.apply(6, ext)
				}
			}
			if c.name == "truncated" {
				s.c.NetConn().(*tls.Conn).CloseWrite()
			}
			s.expectDropped()
			want := before6
			if c.name == "replayed" {
				want = 6
			}
			if v.LastID() != want {
				t.Fatalf("journal last id %d, want %d", v.LastID(), want)
			}
			if got := counterValue(t, rig.proxy.m.rejected.WithLabelValues(c.reason)); got < 1 {
				t.Fatalf("rejection %q not counted", c.reason)
			}
		})
	}
	// A VM the proxy does not serve is refused at the handshake.
	_, ack := rig.dial("vm-x", sealer)
	if ack.Err == "" {
		t.Fatal("foreign VM accepted")
	}
	if _, ok := rig.filter.Load().Store().VM("vm-x"); ok {
		t.Fatal("foreign VM reached the journal")
	}
	after := rig.check("vm-a", m)
	if len(after) != len(before)+1 {
		t.Fatalf("listing changed beyond the one genuine point: %+v -> %+v", before, after)
	}
}

func TestTargetKnownResendIsAckedNotApplied(t *testing.T) {
	rig := newTargetRig(t, nil, journal.Options{})
	s, _ := rig.dial("vm-b", nil)
	r := rand.New(rand.NewPCG(7, 8))
	m := newTargetModel()
	s.initialSync(r, m)
	ext := targetRandomExtents(r, 3)
	s.send(s.point(3, wire.PointShortTerm, 0, ext))
	s.expectAck(3)
	m.apply(3, ext)
	s.c.Close()
	s2, ack := rig.dial("vm-b", nil)
	if ack.Resume != 3 {
		t.Fatalf("resume %d", ack.Resume)
	}
	// The source resends 2 and 3 (it lost the acks): acknowledged again,
	// journal untouched; then 4 is new.
	s2.send(s2.point(2, wire.PointInitial, wire.MarkerInitialSyncDone, targetRandomExtents(r, 2)))
	s2.expectAck(2)
	s2.send(s2.point(3, wire.PointShortTerm, 0, targetRandomExtents(r, 2)))
	s2.expectAck(3)
	ext = targetRandomExtents(r, 3)
	s2.send(s2.point(4, wire.PointShortTerm, 0, ext))
	s2.expectAck(4)
	m.apply(4, ext)
	if pts := rig.check("vm-b", m); len(pts) != 3 {
		t.Fatalf("%+v", pts)
	}
	if got := counterValue(t, rig.proxy.m.resends); got != 2 {
		t.Fatalf("resends %v", got)
	}
}

func TestTargetNoSpaceNoAck(t *testing.T) {
	rig := newTargetRig(t, nil, journal.Options{SegmentBytes: 1 << 20})
	s, _ := rig.dial("vm-a", nil)
	r := rand.New(rand.NewPCG(9, 9))
	m := newTargetModel()
	s.initialSync(r, m)
	store := rig.filter.Load().Store()
	store.SetMaxBytes(store.UsedBytes())
	big := []wire.Extent{{Disk: 2000, Off: 0, Op: wire.OpData, Len: 150 << 10, Data: bytes.Repeat([]byte{3}, 150<<10)}}
	var refused uint64
	for id := uint64(3); id < 40 && refused == 0; id++ {
		s.send(s.point(id, wire.PointShortTerm, 0, big))
		msg, err := s.next(10 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		switch v := msg.(type) {
		case *wire.PointAck:
			if v.ID != id {
				t.Fatalf("ack %d for %d", v.ID, id)
			}
			m.apply(id, big)
		case *wire.Error:
			if v.Code != wire.ErrCodeNoSpace {
				t.Fatalf("error %+v", v)
			}
			refused = id
		}
	}
	if refused == 0 {
		t.Fatal("never refused")
	}
	if msg, err := s.next(300 * time.Millisecond); err == nil {
		if a, ok := msg.(*wire.PointAck); ok {
			t.Fatalf("ack %d while the datastore is full", a.ID)
		}
	}
	if last := rig.vm("vm-a").LastID(); last != refused-1 {
		t.Fatalf("last id %d, refused %d", last, refused)
	}
	rig.check("vm-a", m)
}

func TestTargetConfigErrors(t *testing.T) {
	if _, err := NewTarget(TargetConfig{}); err == nil {
		t.Fatal("no filter address accepted")
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
