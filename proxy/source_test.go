package proxy

import (
	"context"
	"crypto/rand"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/internal/wire"
)

// gatedTarget answers Hello and then reads nothing until open is closed;
// afterwards it decodes and acknowledges every point.
type gatedTarget struct {
	l    net.Listener
	open chan struct{}
	mu   sync.Mutex
	ids  []uint64
	err  error
}

func newGatedTarget(t *testing.T) *gatedTarget {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &gatedTarget{l: l, open: make(chan struct{})}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			go g.serve(nc)
		}
	}()
	return g
}

func (g *gatedTarget) serve(nc net.Conn) {
	c := wire.NewConn(nc)
	defer c.Close()
	if _, err := wire.Expect[*wire.Hello](c); err != nil {
		return
	}
	g.mu.Lock()
	var last uint64
	if n := len(g.ids); n > 0 {
		last = g.ids[n-1]
	}
	g.mu.Unlock()
	if c.Send(&wire.HelloAck{Resume: last}) != nil {
		return
	}
	<-g.open
	for {
		m, err := c.ReadMsg()
		if err != nil {
			return
		}
		p, ok := m.(*wire.Point)
		if !ok {
			continue
		}
		if _, err := wire.DecodePoint(p, wire.PointOptions{VM: "vm1"}); err != nil {
			g.mu.Lock()
			g.err = err
			g.mu.Unlock()
			return
		}
		g.mu.Lock()
		if n := len(g.ids); n == 0 || p.ID > g.ids[n-1] {
			g.ids = append(g.ids, p.ID)
		}
		g.mu.Unlock()
		if c.Send(&wire.PointAck{ID: p.ID}) != nil {
			return
		}
	}
}

// TestSourceProxySpillAndBackpressure: with the target not reading, points
// fill memory, then the spill directory, then the proxy stops reading the
// filter; once the target reads again everything is delivered in order and
// the filter gets the acknowledgement of the last write.
func TestSourceProxySpillAndBackpressure(t *testing.T) {
	g := newGatedTarget(t)
	spill := filepath.Join(t.TempDir(), "spill")
	os.MkdirAll(spill, 0o700)
	os.WriteFile(filepath.Join(spill, "stale"), []byte("x"), 0o600)
	p, err := NewSource(SourceConfig{
		DialTarget: func(ctx context.Context) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", g.l.Addr().String())
		},
		RPO: 20 * time.Millisecond, CutBytes: 256 << 10, Codec: wire.CodecS2,
		MemoryBytes: 2 << 20, SpillDir: spill, SpillBytes: 3 << 20,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(spill, "stale")); !os.IsNotExist(err) {
		t.Fatal("spill directory of a previous process not cleared")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go p.Serve(l)
	defer p.Close()

	nc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := wire.NewConn(nc)
	defer c.Close()
	if err := c.Send(&wire.Hello{Role: wire.RoleSourceFilter, VM: "vm1", Disks: []wire.Disk{{Key: 1, Capacity: 64 << 20}}}); err != nil {
		t.Fatal(err)
	}
	if ack, err := wire.Expect[*wire.HelloAck](c); err != nil || ack.Resume != 0 {
		t.Fatalf("hello ack %+v %v", ack, err)
	}
	// the filter writes until the proxy stops reading
	var sent uint64
	stop := make(chan struct{})
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		buf := make([]byte, 64<<10)
		for seq := uint64(1); ; seq++ {
			select {
			case <-stop:
				return
			default:
			}
			rand.Read(buf)
			w := &wire.Write{Seq: seq, Disk: 1, Off: int64(seq%1000) * (64 << 10), Op: wire.OpData, Len: uint32(len(buf)), Data: buf}
			if err := c.Send(w); err != nil {
				return
			}
			sent = seq
		}
	}()
	var sawSpill, sawBlocked bool
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) && !(sawSpill && sawBlocked) {
		st := p.Status()
		if len(st) == 1 {
			sawSpill = sawSpill || st[0].SpilledBytes > 0
			sawBlocked = sawBlocked || st[0].Blocked
			if mem := st[0].QueuedBytes - st[0].SpilledBytes; mem > (2<<20)+(1<<20) {
				t.Fatalf("%d bytes of points in memory, bound 2 MiB", mem)
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !sawSpill || !sawBlocked {
		t.Fatalf("spill %v, backpressure %v", sawSpill, sawBlocked)
	}
	// the filter stops; the target reads again
	close(g.open)
	c.SetWriteDeadline(time.Now()) // unblock a write stuck on backpressure
	close(stop)
	<-writerDone
	c.SetWriteDeadline(time.Time{})
	last := sent
	// acknowledgements arrive up to the last write the proxy took in
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	var acked uint64
	for acked < last {
		m, err := c.ReadMsg()
		if err != nil {
			break
		}
		if a, ok := m.(*wire.Ack); ok {
			if a.Seq < acked {
				t.Fatalf("ack %d after %d", a.Seq, acked)
			}
			acked = a.Seq
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err != nil {
		t.Fatal(g.err)
	}
	if len(g.ids) == 0 || acked == 0 || acked != g.ids[len(g.ids)-1] {
		t.Fatalf("filter acked %d, target has %d points, last %v", acked, len(g.ids), g.ids[len(g.ids)-1:])
	}
	entries, _ := os.ReadDir(filepath.Join(spill, "vm1"))
	if len(entries) != 0 {
		t.Fatalf("%d spilled points left after their acknowledgement", len(entries))
	}
}

// TestSourceBucketThrottles: beyond its burst the bucket holds the sender to
// its rate (a lower bound on the time taken, never an upper one).
func TestSourceBucketThrottles(t *testing.T) {
	b := newSourceBucket(4 << 20) // burst 4 MiB
	start := time.Now()
	for sent := 0; sent < 6<<20; sent += 64 << 10 {
		if err := b.take(context.Background(), 64<<10); err != nil {
			t.Fatal(err)
		}
	}
	if el := time.Since(start); el < 400*time.Millisecond {
		t.Fatalf("6 MiB at 4 MiB/s with a 4 MiB burst took %s, want at least 0.5s", el)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.take(ctx, 8<<20); err == nil {
		t.Fatal("take on a cancelled context waited without error")
	}
}

// TestSourceRejectsBadHello: a session that is not a source filter's is
// refused with a reason.
func TestSourceRejectsBadHello(t *testing.T) {
	p, err := NewSource(SourceConfig{DialTarget: func(ctx context.Context) (net.Conn, error) { return nil, context.Canceled }})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	go p.Serve(l)
	nc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := wire.NewConn(nc)
	defer c.Close()
	c.Send(&wire.Hello{Role: wire.RoleTargetProxy, VM: "vm1", Disks: []wire.Disk{{Key: 1, Capacity: 4096}}})
	ack, err := wire.Expect[*wire.HelloAck](c)
	if err != nil || ack.Err == "" {
		t.Fatalf("hello from a wrong role: %+v %v", ack, err)
	}
	if _, err := NewSource(SourceConfig{}); err == nil {
		t.Fatal("no dialer accepted")
	}
}
