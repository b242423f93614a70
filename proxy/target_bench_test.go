package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/filter/journal"
	"github.com/continuum-cdp/continuum/internal/wire"
)

// benchPointExtents is 4 MiB of mixed data (zeroes, repetitive text,
// random) as 64 KiB writes on one disk.
func benchPointExtents(r *rand.Rand, capacity int64) []wire.Extent {
	const ext, n = 64 << 10, 64
	var out []wire.Extent
	for i := range n {
		data := make([]byte, ext)
		switch i % 3 {
		case 1:
			copy(data, bytes.Repeat([]byte("replica journal block 0x7f3a "), ext/29+1))
		case 2:
			for j := 0; j < ext; j += 8 {
				be := r.Uint64()
				for k := range 8 {
					data[j+k] = byte(be >> (8 * k))
				}
			}
		}
		off := r.Int64N(capacity/ext) * ext
		out = append(out, wire.Extent{Disk: 2000, Off: off, Op: wire.OpData, Len: ext, Data: data})
	}
	return out
}

// BenchmarkTargetPath measures points per second into the journal
// through the target proxy (TLS, s2, optionally AES-GCM) against the
// baseline of the same points sent straight to the target filter in
// clear, in the same run. Compare the MB/s of the sub-benchmarks.
// Run: go test -run XXX -bench TargetPath -benchtime 40x ./proxy/
func BenchmarkTargetPath(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 1))
	const capacity = 256 << 20
	points := make([][]wire.Extent, 8)
	for i := range points {
		points[i] = benchPointExtents(r, capacity)
	}
	raw := int64(wire.RawSize(points[0]))
	disks := []wire.Disk{{Key: 2000, Capacity: capacity}}
	run := func(b *testing.B, direct bool, sealer *wire.Sealer, jopts journal.Options) {
		rig := newTargetRig(b, sealer, jopts)
		rig.disks = disks
		var c *wire.Conn
		codec := wire.CodecS2
		if direct {
			codec = wire.CodecNone
			d := tls.Dialer{Config: rig.tlsConf}
			nc, err := d.DialContext(context.Background(), "tcp", rig.filter.Load().Addr())
			if err != nil {
				b.Fatal(err)
			}
			c = wire.NewConn(nc)
			if err := c.Send(&wire.Hello{Role: wire.RoleTargetProxy, VM: "vm-a", Disks: disks}); err != nil {
				b.Fatal(err)
			}
			if _, err := wire.Expect[*wire.HelloAck](c); err != nil {
				b.Fatal(err)
			}
		} else {
			s, _ := rig.dial("vm-a", sealer)
			c = s.c
		}
		defer c.Close()
		// Encoding is the source proxy's cost: done before the clock runs.
		enc := make([]*wire.Point, b.N)
		for i := range enc {
			p := &wire.Point{ID: uint64(i + 1), Time: time.Now().UnixNano(), Kind: wire.PointInitial}
			if i == 0 {
				p.Marker = wire.MarkerInitialSyncDone
			} else {
				p.Kind = wire.PointShortTerm
			}
			if sealer == nil && i >= len(points) {
				// Unsealed payloads do not depend on the ID: share them.
				p.Codec, p.RawLen, p.Payload = enc[i%len(points)].Codec, enc[i%len(points)].RawLen, enc[i%len(points)].Payload
				enc[i] = p
				continue
			}
			if err := wire.EncodePoint(p, points[i%len(points)], wire.PointOptions{Codec: codec, Sealer: sealer, VM: "vm-a"}); err != nil {
				b.Fatal(err)
			}
			enc[i] = p
		}
		b.SetBytes(raw)
		b.ResetTimer()
		acked := make(chan error, 1)
		go func() {
			for i := range enc {
				m, err := c.ReadMsg()
				if err != nil {
					acked <- err
					return
				}
				if a, ok := m.(*wire.PointAck); !ok || a.ID != uint64(i+1) {
					acked <- fmt.Errorf("got %T %+v, want ack %d", m, m, i+1)
					return
				}
			}
			acked <- nil
		}()
		for _, p := range enc {
			if err := c.Send(p); err != nil {
				b.Fatal(err)
			}
		}
		if err := <-acked; err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
	}
	key, _ := wire.NewSealer(bytes.Repeat([]byte{1}, wire.KeySize))
	// fsync on is the real path; fsync off shows the relay's own CPU cost.
	for _, sync := range []bool{true, false} {
		jopts := journal.Options{NoSync: !sync}
		pre := "fsync/"
		if !sync {
			pre = "nofsync/"
		}
		b.Run(pre+"baseline-direct", func(b *testing.B) { run(b, true, nil, jopts) })
		b.Run(pre+"proxy-s2", func(b *testing.B) { run(b, false, nil, jopts) })
		b.Run(pre+"proxy-s2-aes", func(b *testing.B) { run(b, false, key, jopts) })
	}
}
