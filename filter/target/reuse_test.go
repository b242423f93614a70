package target

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/internal/wire"
)

// Points big enough for their frames to be handed back and reused, sent
// back to back without waiting for acknowledgements: every point is
// written from its own data, so none is overwritten by a later frame read
// into a released buffer before the journal holds it.
func TestTargetFilterPipelinedBigPointsKeepTheirData(t *testing.T) {
	s := startService(t, Config{JournalDir: t.TempDir()})
	disks := []wire.Disk{{Key: 2000, Capacity: 1 << 20}, {Key: 2001, Capacity: 512 << 10}}
	pc, ack := dialService(t, s, "vm-big", disks)
	if ack.Err != "" {
		t.Fatalf("hello ack: %+v", ack)
	}
	r := rand.New(rand.NewPCG(9, 9))
	m := newModel(disks)
	init := fullDisks(r, disks)
	pc.send(point(t, 1, wire.PointInitial, wire.MarkerInitialSyncDone, init, wire.CodecNone))
	pc.expectAck(1)
	m.apply(1, init)
	const n = 16
	for id := uint64(2); id < 2+n; id++ {
		// 600 KiB of data per point, over the frame hand-back size and
		// the same each time, so a released frame is read into again
		var ext []wire.Extent
		for _, d := range disks {
			l := int64(300 << 10)
			off := r.Int64N(d.Capacity - l)
			data := make([]byte, l)
			for i := range data {
				data[i] = byte(r.Uint32())
			}
			ext = append(ext, wire.Extent{Disk: d.Key, Off: off, Op: wire.OpData, Len: l, Data: data})
		}
		pc.send(point(t, id, wire.PointShortTerm, wire.MarkerNone, ext, wire.CodecNone))
		m.apply(id, ext)
	}
	for id := uint64(2); id < 2+n; id++ {
		msg, err := pc.next(10 * time.Second)
		if err != nil {
			t.Fatalf("waiting for ack %d: %v", id, err)
		}
		a, ok := msg.(*wire.PointAck)
		if !ok || a.ID != id {
			t.Fatalf("got %#v, want ack %d", msg, id)
		}
	}
	if pts := checkPoints(t, s, "vm-big", m); len(pts) != n+1 {
		t.Fatalf("%d points listed, want %d", len(pts), n+1)
	}
}
