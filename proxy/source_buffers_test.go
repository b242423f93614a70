package proxy

import (
	"bytes"
	"context"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/internal/wire"
)

// imageTarget applies every point it receives to a disk image and
// acknowledges it at once.
type imageTarget struct {
	l     net.Listener
	mu    sync.Mutex
	image []byte
	last  uint64
	err   error
}

func newImageTarget(t *testing.T, size int) *imageTarget {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &imageTarget{l: l, image: make([]byte, size)}
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

func (g *imageTarget) serve(nc net.Conn) {
	c := wire.NewConn(nc)
	defer c.Close()
	if _, err := wire.Expect[*wire.Hello](c); err != nil {
		return
	}
	g.mu.Lock()
	last := g.last
	g.mu.Unlock()
	if c.Send(&wire.HelloAck{Resume: last}) != nil {
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
		ext, err := wire.DecodePoint(p, wire.PointOptions{VM: "vm1"})
		g.mu.Lock()
		if err != nil {
			g.err = err
			g.mu.Unlock()
			return
		}
		if p.ID > g.last {
			for _, e := range ext {
				if e.Op == wire.OpData {
					copy(g.image[e.Off:], e.Data)
				} else {
					clear(g.image[e.Off : e.Off+e.Len])
				}
			}
			g.last = p.ID
		}
		g.mu.Unlock()
		if c.Send(&wire.PointAck{ID: p.ID}) != nil {
			return
		}
	}
}

// TestSourceProxyReusesPayloadBuffersExactly: points are encoded into the
// buffers of acknowledged points and big writes are read into released
// frame buffers, and what the target applies is still exactly what the
// filter wrote (overlapping writes, zeroes, several points in flight).
func TestSourceProxyReusesPayloadBuffersExactly(t *testing.T) {
	const size = 8 << 20
	g := newImageTarget(t, size)
	p, err := NewSource(SourceConfig{
		DialTarget: func(ctx context.Context) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", g.l.Addr().String())
		},
		RPO: 50 * time.Millisecond, CutBytes: 4 << 20, Codec: wire.CodecS2, Logger: testLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go p.Serve(l)
	nc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := wire.NewConn(nc)
	defer c.Close()
	if err := c.Send(&wire.Hello{Role: wire.RoleSourceFilter, VM: "vm1", Disks: []wire.Disk{{Key: 1, Capacity: size}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := wire.Expect[*wire.HelloAck](c); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(3, 4))
	want := make([]byte, size)
	var seq uint64
	for range 300 {
		seq++
		n := 1 + r.IntN(96<<10)
		if r.IntN(4) == 0 {
			// big enough for the proxy to keep the frame's read buffer
			// and release it once encoded
			n = 512 << 10 // one size class: a released buffer is read into next

		}
		off := r.Int64N(size - int64(n))
		w := &wire.Write{Seq: seq, Disk: 1, Off: off, Op: wire.OpData, Len: uint32(n)}
		if r.IntN(10) == 0 {
			w.Op, w.Len = wire.OpZero, uint32(n)
			clear(want[off : off+int64(n)])
		} else {
			w.Data = make([]byte, n)
			for i := range w.Data {
				if i%3 != 0 {
					w.Data[i] = byte(r.Uint32())
				}
			}
			copy(want[off:], w.Data)
		}
		if err := c.Send(w); err != nil {
			t.Fatal(err)
		}
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	for acked := uint64(0); acked < seq; {
		m, err := c.ReadMsg()
		if err != nil {
			t.Fatalf("waiting for the ack of %d (have %d): %v", seq, acked, err)
		}
		if a, ok := m.(*wire.Ack); ok {
			acked = a.Seq
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err != nil {
		t.Fatal(g.err)
	}
	if !bytes.Equal(g.image, want) {
		t.Fatal("target image differs from what the filter wrote")
	}
	p.mu.Lock()
	reused := p.reusedBufs
	p.mu.Unlock()
	if reused == 0 {
		t.Fatal("no point was encoded into a reused buffer")
	}
	t.Logf("%d of the points reused a buffer", reused)
}
