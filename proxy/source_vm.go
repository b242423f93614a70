package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/continuum-cdp/continuum/internal/wire"
)

// sourceVM is the per-VM state of a source proxy; fields are guarded by
// the proxy's mu, except cutMu which orders cuts.
type sourceVM struct {
	p     *SourceProxy
	name  string
	log   *slog.Logger
	disks []wire.Disk

	ctx        context.Context // ends when the VM is dropped or the proxy closes
	cancel     context.CancelFunc
	route      *sourceRoute // nil: the proxy's static target and rules
	routeGen   int          // bumped when the route changes under a session
	rpoChanged chan struct{}
	dropped    bool

	filter    *wire.Conn
	filterGen int
	target    *wire.Conn
	blocked   bool
	rule      string // traffic rule of the target session ("" : defaults)
	encrypted bool

	targetKnown    bool
	targetResume   uint64
	targetInitDone bool
	initMarkerSeen bool

	received     uint64 // highest sequence accepted
	maps         map[int32]*sourceExtentMap
	pendingBytes int64
	inflight     int64     // bytes of cut intervals not yet encoded
	flags        uint8     // wire.Flag* seen in the open interval
	oldest       time.Time // first write of the open interval
	resyncing    bool

	cutMu   sync.Mutex
	encq    chan *sourceCutJob
	lastCut uint64
	points  []*sourcePoint // cut, not yet acknowledged, in ID order
	sendIdx int
	acked   uint64

	ackLag      time.Duration // write-to-durable lag of the newest acknowledged point
	lastPointAt time.Time     // cut time of the newest acknowledged point

	statPoints, statRaw, statWire int64
}

// sourcePoint is an encoded point kept until the target acknowledges it,
// in memory or in the spill directory.
type sourcePoint struct {
	id     uint64
	msg    *wire.Point // nil when spilled
	hdr    wire.Point  // header fields, kept for spilled points
	spill  string
	size   int64 // on the wire
	mem    int64 // held in memory: the payload's capacity
	oldest time.Time
	cutAt  time.Time
	// sending: a target session is writing the payload; an acknowledged
	// point's buffer goes back to the free list only once that is over
	sending, acked bool
}

// write adds one filter write to the open interval; a resent write that is
// already here is skipped.
func (v *sourceVM) write(w *wire.Write) error {
	p := v.p
	p.mu.Lock()
	if v.dropped {
		p.mu.Unlock()
		return errDropped
	}
	if w.Seq <= v.received {
		p.mu.Unlock()
		return nil
	}
	var capacity int64 = -1
	for _, d := range v.disks {
		if d.Key == w.Disk {
			capacity = d.Capacity
		}
	}
	if capacity < 0 {
		p.mu.Unlock()
		return fmt.Errorf("write seq %d: unknown disk %d", w.Seq, w.Disk)
	}
	if w.Off < 0 || w.Off+int64(w.Len) > capacity {
		p.mu.Unlock()
		return fmt.Errorf("write seq %d: %d+%d beyond disk %d of %d bytes", w.Seq, w.Off, w.Len, w.Disk, capacity)
	}
	v.received = w.Seq
	m := v.maps[w.Disk]
	if m == nil {
		m = &sourceExtentMap{}
		v.maps[w.Disk] = m
	}
	before := m.bytes
	var ref *frameRef
	if w.Op == wire.OpData {
		ref = &frameRef{w: w, n: 1}
	}
	m.put(w.Off, int64(w.Len), w.Op, w.Data, ref)
	delta := m.bytes - before + 48
	v.pendingBytes += delta
	p.memBytes += delta
	v.flags |= w.Flags
	if v.oldest.IsZero() {
		v.oldest = time.Now()
	}
	full := v.pendingBytes >= p.cfg.CutBytes
	p.mu.Unlock()
	if full {
		return v.cut(wire.MarkerNone)
	}
	return nil
}

// marker cuts exactly at the marker's sequence and flags that point.
func (v *sourceVM) marker(m *wire.Marker) error {
	p := v.p
	p.mu.Lock()
	if m.Seq <= v.received {
		p.mu.Unlock()
		return nil
	}
	p.mu.Unlock()
	// the marker's sequence and its cut are one step: an RPO cut in between
	// would take the marker's ID and the flag would be lost
	v.cutMu.Lock()
	defer v.cutMu.Unlock()
	p.mu.Lock()
	if v.dropped {
		p.mu.Unlock()
		return errDropped
	}
	v.received = m.Seq
	if m.Kind == wire.MarkerInitialSyncDone {
		v.initMarkerSeen = true
	}
	p.mu.Unlock()
	return v.cutLocked(m.Kind)
}

// cut closes the open interval as a point whose ID is the last sequence
// received: a consistent prefix of the VM's write order.
func (v *sourceVM) cut(marker uint8) error {
	v.cutMu.Lock()
	defer v.cutMu.Unlock()
	return v.cutLocked(marker)
}

// cutLocked is cut with cutMu held.
func (v *sourceVM) cutLocked(marker uint8) error {
	p := v.p
	p.mu.Lock()
	id := v.received
	if v.dropped || id <= v.lastCut || (marker == wire.MarkerNone && len(v.maps) == 0) {
		p.mu.Unlock()
		return nil
	}
	keys := make([]int32, 0, len(v.maps))
	for k := range v.maps {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	var ext []wire.Extent
	var refs []*frameRef
	for _, k := range keys {
		ext, refs = v.maps[k].extents(k, ext, refs)
	}
	kind := wire.PointShortTerm
	switch {
	case marker == wire.MarkerInitialSyncDone || v.flags&wire.FlagInitial != 0:
		kind = wire.PointInitial
	case marker == wire.MarkerResyncDone:
		kind = wire.PointShortTerm
		v.resyncing = false
	case marker == wire.MarkerResyncStart || v.resyncing || v.flags&wire.FlagResync != 0:
		kind = wire.PointResync
		v.resyncing = true
	}
	pending, oldest := v.pendingBytes, v.oldest
	if oldest.IsZero() {
		oldest = time.Now()
	}
	v.maps = map[int32]*sourceExtentMap{}
	v.pendingBytes, v.flags, v.oldest = 0, 0, time.Time{}
	v.inflight += pending
	v.lastCut = id
	p.mu.Unlock()

	// encoding runs in the VM's encoder so that reading the filter goes on
	// meanwhile; one encoder per VM keeps points in ID order
	job := &sourceCutJob{id: id, kind: kind, marker: marker, ext: ext, refs: refs, pending: pending, oldest: oldest}
	select {
	case v.encq <- job:
		return nil
	case <-v.ctx.Done():
		// a dropped VM's bytes were released with it; on Close nothing
		// matters any more
		return v.ctx.Err()
	}
}

// sourceCutJob is a closed interval waiting to be encoded.
type sourceCutJob struct {
	id           uint64
	kind, marker uint8
	ext          []wire.Extent
	refs         []*frameRef // of ext's data, dropped once encoded
	pending      int64
	oldest       time.Time
}

// encodeLoop turns closed intervals into points, in order.
func (v *sourceVM) encodeLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case job := <-v.encq:
			v.encode(job)
		}
	}
}

func (v *sourceVM) encode(job *sourceCutJob) {
	p := v.p
	id, kind, marker := job.id, job.kind, job.marker
	pt := &wire.Point{ID: id, Time: time.Now().UnixNano(), Kind: kind, Marker: marker}
	p.mu.Lock()
	buf := p.takeBufLocked()
	p.mu.Unlock()
	err := wire.EncodePoint(pt, job.ext, wire.PointOptions{Codec: p.cfg.Codec, VM: v.name, Buf: buf})
	if err == nil {
		// the payload holds the data now: the writes' read buffers go
		// back to the decoder
		for _, r := range job.refs {
			r.add(-1)
		}
		job.ext, job.refs = nil, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if v.dropped {
		return // its bytes were released by dropLocked
	}
	v.inflight -= job.pending
	p.memBytes -= job.pending
	p.cond.Broadcast()
	if err != nil {
		// the extents were checked on arrival, so this is a bug; dropping
		// the filter session at least makes the problem visible upstream
		v.log.Error("encode point", "id", id, "err", err)
		if v.filter != nil {
			v.filter.Close()
		}
		return
	}
	sp := &sourcePoint{id: id, msg: pt, size: int64(len(pt.Payload)) + wire.PointFixedLen,
		mem: int64(cap(pt.Payload)) + wire.PointFixedLen, oldest: job.oldest, cutAt: time.Unix(0, pt.Time)}
	v.statPoints++
	v.statRaw += int64(pt.RawLen)
	v.statWire += sp.size
	if p.memBytes+sp.mem > p.cfg.MemoryBytes && p.canSpillLocked() {
		if err := v.spillLocked(sp); err != nil {
			v.log.Warn("spill point, keeping it in memory", "id", id, "err", err)
		} else {
			p.putBufLocked(pt.Payload)
		}
	}
	if sp.msg != nil {
		p.memBytes += sp.mem
	}
	v.points = append(v.points, sp)
	v.log.Debug("point cut", "id", id, "kind", kind, "marker", marker, "extents", len(job.ext), "raw", pt.RawLen, "wire", sp.size)
}

func (v *sourceVM) spillLocked(sp *sourcePoint) error {
	dir := filepath.Join(v.p.cfg.SpillDir, v.name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	path := filepath.Join(dir, fmt.Sprintf("%020d.point", sp.id))
	if err := os.WriteFile(path, sp.msg.Payload, 0o600); err != nil {
		os.Remove(path)
		return err
	}
	sp.hdr = *sp.msg
	sp.hdr.Payload = nil
	sp.msg = nil
	sp.spill = path
	v.p.spillUsed += sp.size
	return nil
}

func (sp *sourcePoint) load() (*wire.Point, error) {
	if sp.msg != nil {
		return sp.msg, nil
	}
	b, err := os.ReadFile(sp.spill)
	if err != nil {
		return nil, fmt.Errorf("read spilled point %d: %w", sp.id, err)
	}
	m := sp.hdr
	m.Payload = b
	return &m, nil
}

// ackPointsLocked frees every point up to id (durable at the target) and
// returns the filter connection to forward the acknowledgement to.
func (v *sourceVM) ackPointsLocked(id uint64) *wire.Conn {
	p := v.p
	if v.dropped || id <= v.acked {
		return nil
	}
	v.acked = id
	k := 0
	now := time.Now()
	for k < len(v.points) && v.points[k].id <= id {
		sp := v.points[k]
		p.releaseLocked(sp)
		sp.acked = true
		if !sp.sending && sp.msg != nil {
			p.putBufLocked(sp.msg.Payload)
		}
		lag := now.Sub(sp.oldest)
		sourceLag.Observe(lag.Seconds())
		v.ackLag, v.lastPointAt = lag, sp.cutAt
		v.points[k] = nil
		k++
	}
	v.points = v.points[k:]
	v.sendIdx = max(0, v.sendIdx-k)
	p.cond.Broadcast()
	return v.filter
}

func (v *sourceVM) forwardAck(c *wire.Conn, id uint64) {
	if c == nil {
		return
	}
	if err := c.Send(&wire.Ack{Seq: id}); err != nil {
		v.log.Debug("forward ack to filter", "id", id, "err", err)
	}
}

// cutLoop cuts once per RPO; a new RPO from Configure applies at once.
func (v *sourceVM) cutLoop(ctx context.Context) {
	p := v.p
	p.mu.Lock()
	rpo := v.rpoLocked()
	p.mu.Unlock()
	t := time.NewTicker(rpo)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-v.rpoChanged:
			p.mu.Lock()
			rpo = v.rpoLocked()
			p.mu.Unlock()
			t.Reset(rpo)
		case <-t.C:
			if err := v.cut(wire.MarkerNone); err != nil {
				v.log.Warn("cut", "err", err)
			}
		}
	}
}

// targetLoop keeps a session to the target proxy, reconnecting with backoff.
func (v *sourceVM) targetLoop(ctx context.Context) {
	wire.KeepSession(ctx, v.log, "target proxy", v.targetSession)
}

func (v *sourceVM) targetSession(ctx context.Context) error {
	p := v.p
	p.mu.Lock()
	route, gen := v.route, v.routeGen
	p.mu.Unlock()
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	var nc net.Conn
	var err error
	if route != nil {
		nc, err = p.cfg.DialAddr(dctx, route.Target)
	} else {
		nc, err = p.cfg.DialTarget(dctx)
	}
	cancel()
	if err != nil {
		return fmt.Errorf("dial target proxy %s: %w", routeTarget(route), err)
	}
	var pol trafficPolicy
	if route != nil {
		pol = policyForRoute(route, nc)
	} else {
		pol = p.policyFor(nc)
	}
	c := wire.NewConn(nc)
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	p.mu.Lock()
	v.rule, v.encrypted = pol.rule, pol.sealer != nil
	h := &wire.Hello{Role: wire.RoleSourceProxy, NodeID: p.cfg.NodeID, VM: v.name, Disks: v.disks, Resume: v.acked}
	p.mu.Unlock()
	ack, err := wire.Greet(c, h, 60*time.Second)
	if err != nil {
		return err
	}
	if ack.Err != "" {
		return fmt.Errorf("target proxy refused the session: %s", ack.Err)
	}
	p.mu.Lock()
	if v.routeGen != gen || v.dropped {
		p.mu.Unlock()
		return errors.New("route changed during the handshake")
	}
	if ack.Resume < v.acked {
		// the target side forgot points it had acknowledged: they are not
		// in this proxy any more, only a resync can bring them back
		v.log.Warn("target resumes before the last acknowledged point", "resume", ack.Resume, "acked", v.acked)
	}
	v.target = c
	v.targetKnown = true
	v.targetResume = ack.Resume
	v.targetInitDone = v.targetInitDone || ack.InitialSyncDone
	fc := v.ackPointsLocked(ack.Resume)
	v.sendIdx = 0
	p.cond.Broadcast()
	p.mu.Unlock()
	v.forwardAck(fc, ack.Resume)
	v.log.Info("connected to target proxy", "target", routeTarget(route), "resume", ack.Resume, "initial_sync_done", ack.InitialSyncDone,
		"rule", pol.rule, "encrypt", pol.sealer != nil)

	done := make(chan struct{})
	readErr := make(chan error, 1)
	go func() {
		defer close(done)
		defer func() { p.mu.Lock(); p.cond.Broadcast(); p.mu.Unlock() }()
		readErr <- v.targetReadLoop(c)
	}()
	// the target drops a silent source: keep the session alive when idle
	go func() {
		t := time.NewTicker(15 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if c.Send(&wire.Heartbeat{}) != nil {
					return
				}
			}
		}
	}()
	werr := v.targetWriteLoop(c, done, pol)
	c.Close()
	<-done
	p.mu.Lock()
	if v.target == c {
		v.target = nil
	}
	p.mu.Unlock()
	if werr != nil {
		return werr
	}
	return <-readErr
}

func (v *sourceVM) targetReadLoop(c *wire.Conn) error {
	p := v.p
	for {
		m, err := c.ReadMsg()
		if err != nil {
			return fmt.Errorf("read from target proxy: %w", err)
		}
		switch m := m.(type) {
		case *wire.PointAck:
			p.mu.Lock()
			if m.ID > v.lastCut {
				p.mu.Unlock()
				return fmt.Errorf("target acknowledged point %d, newer than the last cut %d", m.ID, v.lastCut)
			}
			if v.targetInitDone == false && v.initMarkerSeen {
				v.targetInitDone = true
			}
			fc := v.ackPointsLocked(m.ID)
			p.mu.Unlock()
			v.forwardAck(fc, m.ID)
		case *wire.Error:
			v.log.Warn("target proxy reports an error", "code", m.Code, "msg", m.Msg)
			p.mu.Lock()
			fc := v.filter
			p.mu.Unlock()
			if fc != nil {
				_ = fc.Send(m)
			}
		case *wire.Heartbeat, *wire.Status:
		default:
			return fmt.Errorf("unexpected %s from target proxy", m.Type())
		}
	}
}

func (v *sourceVM) targetWriteLoop(c *wire.Conn, done <-chan struct{}, pol trafficPolicy) error {
	p := v.p
	for {
		p.mu.Lock()
		for v.sendIdx >= len(v.points) && !p.closed && !v.dropped && !isDone(done) {
			p.cond.Wait()
		}
		if p.closed || v.dropped || isDone(done) {
			p.mu.Unlock()
			return nil
		}
		sp := v.points[v.sendIdx]
		v.sendIdx++
		sp.sending = true
		p.mu.Unlock()
		if err := v.sendPoint(c, sp, pol); err != nil {
			return err
		}
	}
}

// sendPoint writes one point to the target session; its buffer may be
// reused once this is over and the point is acknowledged.
func (v *sourceVM) sendPoint(c *wire.Conn, sp *sourcePoint, pol trafficPolicy) error {
	p := v.p
	defer func() {
		p.mu.Lock()
		sp.sending = false
		if sp.acked && sp.msg != nil {
			p.putBufLocked(sp.msg.Payload)
		}
		p.mu.Unlock()
	}()
	m, err := sp.load()
	if err != nil {
		return err
	}
	size := sp.size
	if pol.sealer != nil {
		// sealed per connection: the rule of the path decides; into a
		// buffer of the free list, back there once written out
		p.mu.Lock()
		buf := p.takeBufLocked()
		p.mu.Unlock()
		if m, err = wire.SealPointTo(buf, m, pol.sealer, v.name); err != nil {
			return err
		}
		defer func(sealed []byte) {
			p.mu.Lock()
			p.putBufLocked(sealed)
			p.mu.Unlock()
		}(m.Payload)
		size = int64(len(m.Payload)) + wire.PointFixedLen
	}
	if pol.bucket != nil {
		if err := pol.bucket.take(v.ctx, size); err != nil {
			return err
		}
	}
	if err := c.Send(m); err != nil {
		return fmt.Errorf("send point %d: %w", sp.id, err)
	}
	return nil
}

// errDropped ends the filter session of a VM removed from the configuration.
var errDropped = errors.New("vm removed from this proxy's configuration")

// releaseLocked frees the memory or spill space of a point. Called with mu
// held.
func (p *SourceProxy) releaseLocked(sp *sourcePoint) {
	if sp.spill != "" {
		os.Remove(sp.spill)
		p.spillUsed -= sp.size
	} else {
		p.memBytes -= sp.mem
	}
}

// freeBytes bounds the payload buffers the free list keeps: acknowledgements
// come in batches and cuts one at a time, so a list of a few buffers would
// drop the surplus and the next cuts would encode into fresh memory.
func (p *SourceProxy) freeBytes() int64 { return min(p.cfg.MemoryBytes/4, 128<<20) }

// takeBufLocked returns a payload buffer from the free list (nil if
// empty); the largest, so that the encoder rarely has to grow it.
func (p *SourceProxy) takeBufLocked() []byte {
	if len(p.free) == 0 {
		return nil
	}
	best := 0
	for i := range p.free {
		if cap(p.free[i]) > cap(p.free[best]) {
			best = i
		}
	}
	b := p.free[best]
	p.free = append(p.free[:best], p.free[best+1:]...)
	p.freeHeld -= int64(cap(b))
	p.reusedBufs++
	return b
}

// putBufLocked keeps a payload buffer no point uses any more, unless the
// free list is full or the buffer is oversized (a point far beyond the
// cut size, e.g. one big write).
func (p *SourceProxy) putBufLocked(b []byte) {
	if cap(b) == 0 || p.freeHeld+int64(cap(b)) > p.freeBytes() || int64(cap(b)) > 2*p.cfg.CutBytes+4<<20 {
		return
	}
	p.free = append(p.free, b[:0])
	p.freeHeld += int64(cap(b))
}

func isDone(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// sourceBucket is a token bucket on bytes sent to the target.
type sourceBucket struct {
	taken  atomic.Int64 // bytes let through, for tests and status
	mu     sync.Mutex
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

func newSourceBucket(rate int64) *sourceBucket {
	b := float64(max(rate, 1<<20))
	return &sourceBucket{rate: float64(rate), burst: b, tokens: b, last: time.Now()}
}

// take waits until n bytes may be sent; a request larger than the burst
// goes into debt so that the average rate still holds.
func (b *sourceBucket) take(ctx context.Context, n int64) error {
	b.taken.Add(n)
	b.mu.Lock()
	now := time.Now()
	b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	b.tokens -= float64(n)
	wait := time.Duration(0)
	if b.tokens < 0 {
		wait = time.Duration(-b.tokens / b.rate * float64(time.Second))
	}
	b.mu.Unlock()
	if wait == 0 {
		return nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
