package target

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/internal/wire"
)

// testDisks are small so every restore can be compared whole.
var testDisks = []wire.Disk{{Key: 2000, Capacity: 256 << 10}, {Key: 2001, Capacity: 128 << 10}}

// model is the expected state of every disk after each point.
type diskModel struct {
	disks map[int32][]byte
	at    map[uint64]map[int32][]byte // snapshot after point ID
}

func newModel(disks []wire.Disk) *diskModel {
	m := &diskModel{disks: map[int32][]byte{}, at: map[uint64]map[int32][]byte{}}
	for _, d := range disks {
		m.disks[d.Key] = make([]byte, d.Capacity)
	}
	return m
}

func (m *diskModel) apply(id uint64, ext []wire.Extent) {
	for _, e := range ext {
		d := m.disks[e.Disk]
		if e.Op == wire.OpData {
			copy(d[e.Off:], e.Data)
		} else {
			clear(d[e.Off : e.Off+e.Len])
		}
	}
	snap := map[int32][]byte{}
	for k, d := range m.disks {
		snap[k] = bytes.Clone(d)
	}
	m.at[id] = snap
}

// randomExtents writes unaligned data, zeroes and trims over the disks.
func randomExtents(r *rand.Rand, disks []wire.Disk, n int) []wire.Extent {
	var out []wire.Extent
	for range n {
		d := disks[r.IntN(len(disks))]
		off := r.Int64N(d.Capacity - 1)
		l := 1 + r.Int64N(min(d.Capacity-off, 20000))
		switch r.IntN(5) {
		case 0:
			out = append(out, wire.Extent{Disk: d.Key, Off: off, Op: wire.OpZero, Len: l})
		case 1:
			out = append(out, wire.Extent{Disk: d.Key, Off: off, Op: wire.OpTrim, Len: l})
		default:
			data := make([]byte, l)
			for i := range data {
				data[i] = byte(r.Uint32())
			}
			out = append(out, wire.Extent{Disk: d.Key, Off: off, Op: wire.OpData, Len: l, Data: data})
		}
	}
	return out
}

// fullDisks is an initial sync of whole disks of random data.
func fullDisks(r *rand.Rand, disks []wire.Disk) []wire.Extent {
	var out []wire.Extent
	for _, d := range disks {
		data := make([]byte, d.Capacity)
		for i := range data {
			data[i] = byte(r.Uint32())
		}
		out = append(out, wire.Extent{Disk: d.Key, Off: 0, Op: wire.OpData, Len: d.Capacity, Data: data})
	}
	return out
}

func startService(t *testing.T, cfg Config) *Service {
	t.Helper()
	if cfg.ListenAddr == "" {
		cfg.ListenAddr = "127.0.0.1:0"
	}
	if cfg.AdminAddr == "" {
		cfg.AdminAddr = "127.0.0.1:0"
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background()) }()
	t.Cleanup(func() {
		s.Close()
		<-done
	})
	return s
}

// proxyConn is the target proxy's side of a session, played by the test.
type proxyConn struct {
	t *testing.T
	c *wire.Conn
}

func dialService(t *testing.T, s *Service, vm string, disks []wire.Disk) (*proxyConn, *wire.HelloAck) {
	t.Helper()
	nc, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	c := wire.NewConn(nc)
	t.Cleanup(func() { c.Close() })
	if err := c.Send(&wire.Hello{Role: wire.RoleTargetProxy, NodeID: "tp", VM: vm, Disks: disks}); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	ack, err := wire.Expect[*wire.HelloAck](c)
	if err != nil {
		t.Fatal(err)
	}
	return &proxyConn{t: t, c: c}, ack
}

func point(t *testing.T, id uint64, kind, marker uint8, ext []wire.Extent, codec wire.Codec) *wire.Point {
	t.Helper()
	p := &wire.Point{ID: id, Time: time.Now().UnixNano(), Kind: kind, Marker: marker}
	if err := wire.EncodePoint(p, ext, wire.PointOptions{Codec: codec}); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *proxyConn) send(m wire.Msg) {
	p.t.Helper()
	if err := p.c.Send(m); err != nil {
		p.t.Fatal(err)
	}
}

// next reads one message with a deadline.
func (p *proxyConn) next(d time.Duration) (wire.Msg, error) {
	_ = p.c.SetReadDeadline(time.Now().Add(d))
	return p.c.ReadMsg()
}

func (p *proxyConn) expectAck(id uint64) {
	p.t.Helper()
	m, err := p.next(10 * time.Second)
	if err != nil {
		p.t.Fatalf("waiting for ack of %d: %v", id, err)
	}
	a, ok := m.(*wire.PointAck)
	if !ok || a.ID != id {
		p.t.Fatalf("waiting for ack of %d: got %T %+v", id, m, m)
	}
}

func getJSON(t *testing.T, url string, v any) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if v != nil && resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode
}

func readImage(t *testing.T, s *Service, vm string, id uint64, disk int32) []byte {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://%s/v1/vms/%s/points/%d/disks/%d/image", s.AdminAddr(), vm, id, disk))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("image of %s point %d disk %d: %d %v %s", vm, id, disk, resp.StatusCode, err, b[:min(len(b), 200)])
	}
	return b
}

// checkPoints compares every listed point of vm with the model.
func checkPoints(t *testing.T, s *Service, vm string, m *diskModel) []PointInfo {
	t.Helper()
	var pts []PointInfo
	if code := getJSON(t, fmt.Sprintf("http://%s/v1/vms/%s/points", s.AdminAddr(), vm), &pts); code != 200 {
		t.Fatalf("list points: %d", code)
	}
	for i, p := range pts {
		if i > 0 && p.ID <= pts[i-1].ID {
			t.Fatalf("points not strictly increasing: %v", pts)
		}
		want, ok := m.at[p.ID]
		if !ok {
			t.Fatalf("listed point %d was never sent", p.ID)
		}
		for key, w := range want {
			if got := readImage(t, s, vm, p.ID, key); !bytes.Equal(got, w) {
				t.Fatalf("point %d disk %d differs from the model", p.ID, key)
			}
		}
	}
	return pts
}
