package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/wire"
)

// SourceConfig configures a source proxy.
type SourceConfig struct {
	NodeID string
	// DialTarget opens a connection to the target proxy (TLS is the caller's)
	// for every VM without a route.
	DialTarget func(ctx context.Context) (net.Conn, error)
	// DialAddr opens a connection to a target proxy by address, for the VMs
	// given a route by Configure. With DialTarget nil the proxy is managed:
	// it serves only the VMs that have a route.
	DialAddr func(ctx context.Context, addr string) (net.Conn, error)
	// RPO is the interval between cuts. Default 5s.
	RPO time.Duration
	// CutBytes cuts early when the open interval holds this much data, so a
	// large initial sync does not pile up; smaller points also keep the hops
	// busy at the same time. Default 16 MiB.
	CutBytes int64
	Codec    wire.Codec
	// Sealer encrypts points (AES-256-GCM); nil sends them in clear.
	Sealer *wire.Sealer
	// ThrottleBytesPerSec limits the bytes sent to the target; 0 is unlimited.
	ThrottleBytesPerSec int64
	// Rules choose encryption and throttle per connection to a target proxy
	// by the connection's local and remote addresses; the first match
	// wins, no match keeps Sealer and ThrottleBytesPerSec. An encrypting
	// rule needs Sealer (the key).
	Rules []model.TrafficRule
	// MemoryBytes bounds what is held in memory (open intervals and points
	// waiting for their acknowledgement). Default 512 MiB.
	MemoryBytes int64
	// SpillDir holds points beyond the memory bound, up to SpillBytes.
	// Empty: no spill, backpressure right after the memory bound.
	SpillDir   string
	SpillBytes int64
	// TargetWait is how long a filter's Hello waits for the target's resume
	// position of a VM the proxy does not know yet. Default 30s.
	TargetWait time.Duration
	// ConfigWait is how long a filter's Hello for a VM this proxy has no
	// route for waits for one: a filter may get its configuration from
	// the coordinator before the proxy does. Default 5s; negative: refuse
	// at once.
	ConfigWait time.Duration
	Logger     *slog.Logger
}

func (c *SourceConfig) setDefaults() {
	if c.RPO <= 0 {
		c.RPO = 5 * time.Second
	}
	if c.CutBytes <= 0 {
		c.CutBytes = 4 << 20
	}
	if c.MemoryBytes <= 0 {
		c.MemoryBytes = 512 << 20
	}
	if c.TargetWait <= 0 {
		c.TargetWait = 30 * time.Second
	}
	if c.ConfigWait == 0 {
		c.ConfigWait = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.NodeID == "" {
		c.NodeID = "source-proxy"
	}
}

// SourceProxy receives the write streams of source filters, cuts restore
// points, and delivers them to a target proxy.
type SourceProxy struct {
	cfg SourceConfig
	log *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu         sync.Mutex
	cond       *sync.Cond // memory freed, VM state changed
	vms        map[string]*sourceVM
	memBytes   int64    // open intervals + points in memory
	free       [][]byte // payload buffers of acknowledged points, for reuse
	freeHeld   int64    // their capacities
	reusedBufs int64    // payloads encoded into a reused buffer
	spillUsed  int64
	listeners  map[net.Listener]bool
	closed     bool
	bucket     *sourceBucket
	rules      []*sourceRule

	routes      map[string]*sourceRoute // per-VM routes (Configure)
	ruleBuckets map[string]*sourceBucket
}

// NewSource builds a source proxy; Serve accepts filter connections.
func NewSource(cfg SourceConfig) (*SourceProxy, error) {
	if cfg.DialTarget == nil && cfg.DialAddr == nil {
		return nil, errors.New("source proxy: a dialer for the target proxy is required")
	}
	if cfg.Codec > wire.CodecZstd {
		return nil, fmt.Errorf("source proxy: unknown codec %d", cfg.Codec)
	}
	rules, err := compileRules(cfg.Rules, cfg.Sealer)
	if err != nil {
		return nil, fmt.Errorf("source proxy: %w", err)
	}
	cfg.setDefaults()
	if cfg.SpillDir != "" {
		// spilled points belong to a previous process: the filters resend them
		if err := os.RemoveAll(cfg.SpillDir); err != nil {
			return nil, fmt.Errorf("source proxy: clear spill directory: %w", err)
		}
		if err := os.MkdirAll(cfg.SpillDir, 0o700); err != nil {
			return nil, fmt.Errorf("source proxy: create spill directory: %w", err)
		}
	}
	p := &SourceProxy{cfg: cfg, log: cfg.Logger, vms: map[string]*sourceVM{}, listeners: map[net.Listener]bool{}, rules: rules}
	p.cond = sync.NewCond(&p.mu)
	p.ctx, p.cancel = context.WithCancel(context.Background())
	if cfg.ThrottleBytesPerSec > 0 {
		p.bucket = newSourceBucket(cfg.ThrottleBytesPerSec)
	}
	return p, nil
}

// Serve accepts filter connections until l is closed.
func (p *SourceProxy) Serve(l net.Listener) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return errors.New("source proxy closed")
	}
	p.listeners[l] = true
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.listeners, l)
		p.mu.Unlock()
	}()
	for {
		nc, err := l.Accept()
		if err != nil {
			if p.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("accept filter connection: %w", err)
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			if err := p.serveFilter(nc); err != nil && p.ctx.Err() == nil {
				p.log.Warn("filter session ended", "remote", nc.RemoteAddr().String(), "err", err)
			}
		}()
	}
}

// Close stops everything; points not yet acknowledged are resent by the
// filters to the next proxy process.
func (p *SourceProxy) Close() error {
	p.mu.Lock()
	p.closed = true
	for l := range p.listeners {
		l.Close()
	}
	for _, v := range p.vms {
		if v.filter != nil {
			v.filter.Close()
		}
	}
	p.cond.Broadcast()
	p.mu.Unlock()
	p.cancel()
	p.wg.Wait()
	return nil
}

// vmLocked returns the state of a VM, creating it (and its target
// session); nil when the proxy is managed and the VM has no route.
// Called with mu held.
func (p *SourceProxy) vmLocked(name string, disks []wire.Disk) *sourceVM {
	v, ok := p.vms[name]
	if !ok {
		route := p.routes[name]
		if route == nil && p.cfg.DialTarget == nil {
			return nil
		}
		v = &sourceVM{p: p, name: name, log: p.log.With("vm", name), maps: map[int32]*sourceExtentMap{},
			encq: make(chan *sourceCutJob, 2), route: route, rpoChanged: make(chan struct{}, 1)}
		v.ctx, v.cancel = context.WithCancel(p.ctx)
		p.vms[name] = v
		p.wg.Add(3)
		go func() { defer p.wg.Done(); v.encodeLoop(v.ctx) }()
		go func() { defer p.wg.Done(); v.targetLoop(v.ctx) }()
		go func() { defer p.wg.Done(); v.cutLoop(v.ctx) }()
	}
	v.disks = append([]wire.Disk(nil), disks...)
	return v
}

// serveFilter runs one filter session: Hello, then writes and markers.
func (p *SourceProxy) serveFilter(nc net.Conn) error {
	c := wire.NewConn(nc, wire.WithFrameReuse()) // writes are released once encoded
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	h, err := wire.Expect[*wire.Hello](c)
	if err != nil {
		return fmt.Errorf("read hello: %w", err)
	}
	_ = c.SetReadDeadline(time.Time{})
	return p.serveFilterHello(c, h)
}

// serveHello runs a filter session whose Hello a dispatcher already read,
// as part of the proxy's goroutines.
func (p *SourceProxy) serveHello(c *wire.Conn, h *wire.Hello) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		c.Close()
		return errors.New("source proxy closed")
	}
	p.wg.Add(1)
	p.mu.Unlock()
	defer p.wg.Done()
	defer c.Close()
	_ = c.SetReadDeadline(time.Time{})
	return p.serveFilterHello(c, h)
}

// waitLocked waits on cond (with mu held) until done reports true, the
// proxy closes or d has passed.
func (p *SourceProxy) waitLocked(d time.Duration, done func() bool) {
	deadline := time.Now().Add(d)
	wake := time.AfterFunc(d, func() { p.mu.Lock(); p.cond.Broadcast(); p.mu.Unlock() })
	defer wake.Stop()
	for !done() && !p.closed && time.Now().Before(deadline) {
		p.cond.Wait()
	}
}

// serveFilterHello is serveFilter once the Hello is read.
func (p *SourceProxy) serveFilterHello(c *wire.Conn, h *wire.Hello) error {
	var err error
	if h.Role != wire.RoleSourceFilter || h.VM == "" || len(h.Disks) == 0 {
		_ = c.Send(&wire.HelloAck{Err: fmt.Sprintf("unexpected hello: role %q vm %q with %d disks", h.Role, h.VM, len(h.Disks))})
		return fmt.Errorf("reject hello from role %q vm %q", h.Role, h.VM)
	}
	p.mu.Lock()
	v := p.vmLocked(h.VM, h.Disks)
	if v == nil && p.cfg.ConfigWait > 0 {
		// routes arrive with Configure, which wakes the waiters
		p.waitLocked(p.cfg.ConfigWait, func() bool {
			v = p.vmLocked(h.VM, h.Disks)
			return v != nil
		})
	}
	if v == nil {
		p.mu.Unlock()
		_ = c.Send(&wire.HelloAck{Err: fmt.Sprintf("vm %q is not configured on this source proxy", h.VM)})
		return fmt.Errorf("reject hello for vm %q: not in this proxy's configuration", h.VM)
	}
	if v.filter != nil {
		v.filter.Close() // a newer session of the same VM wins
		v.filter = nil
	}
	v.filterGen++
	gen := v.filterGen
	// the resume position needs the target's answer unless this proxy
	// already received the stream
	p.waitLocked(p.cfg.TargetWait, func() bool { return v.targetKnown || v.dropped || v.filterGen != gen })
	if !v.targetKnown || v.filterGen != gen || p.closed || v.dropped {
		p.mu.Unlock()
		_ = c.Send(&wire.HelloAck{Err: "target proxy not reachable"})
		return fmt.Errorf("vm %s: no answer from the target proxy", h.VM)
	}
	ack := &wire.HelloAck{Resume: max(v.targetResume, v.received), InitialSyncDone: v.targetInitDone || v.initMarkerSeen}
	// the filter sends to us: it is the sending end of the rule
	rules := p.rules
	if v.route != nil {
		rules = v.route.rules
	}
	c.AgreeIntegrity(hostIntegrity(rules, c.NetConn().RemoteAddr(), c.NetConn().LocalAddr()))
	// acknowledgements are forwarded only once the HelloAck is out; the
	// lock keeps an acknowledgement from overtaking it
	err = c.Send(ack)
	if err == nil && v.filterGen == gen {
		v.filter = c
	}
	p.mu.Unlock()
	if err != nil {
		return fmt.Errorf("send hello ack: %w", err)
	}
	v.log.Info("filter connected", "resume", ack.Resume, "initial_sync_done", ack.InitialSyncDone, "link", c.Protection())
	defer func() {
		p.mu.Lock()
		if v.filterGen == gen {
			v.filter = nil
		}
		p.mu.Unlock()
	}()
	for {
		// backpressure: stop reading while memory and spill are both full
		p.mu.Lock()
		for !p.closed && !v.dropped && v.filterGen == gen && p.memBytes >= p.cfg.MemoryBytes && !p.canSpillLocked() {
			v.blocked = true
			p.cond.Wait()
		}
		v.blocked = false
		stale := v.filterGen != gen || p.closed || v.dropped
		p.mu.Unlock()
		if stale {
			return nil
		}
		m, err := c.ReadMsg()
		if err != nil {
			return fmt.Errorf("read from filter: %w", err)
		}
		switch m := m.(type) {
		case *wire.Write:
			if err := v.write(m); err != nil {
				_ = c.Send(&wire.Error{Code: wire.ErrCodeBadRequest, Msg: err.Error()})
				return err
			}
		case *wire.Marker:
			if err := v.marker(m); err != nil {
				return err
			}
		case *wire.Heartbeat, *wire.Status:
		default:
			return fmt.Errorf("unexpected %s from filter", m.Type())
		}
	}
}

// canSpillLocked says whether a point could still go to the spill cache.
func (p *SourceProxy) canSpillLocked() bool {
	return p.cfg.SpillDir != "" && p.spillUsed < p.cfg.SpillBytes
}

// SourceVMStatus is the state of one VM in the source proxy.
type SourceVMStatus struct {
	VM              string  `json:"vm"`
	TaskID          string  `json:"task_id,omitempty"`
	Target          string  `json:"target,omitempty"` // target proxy of a routed VM`
	FilterConnected bool    `json:"filter_connected"`
	TargetConnected bool    `json:"target_connected"`
	Rule            string  `json:"traffic_rule,omitempty"`
	Encrypted       bool    `json:"encrypted"`
	FilterLink      string  `json:"filter_link,omitempty"` // protection of the filter's connection: "tls", "integrity" (a traffic rule's host_traffic) or "clear"
	Received        uint64  `json:"received_seq"`
	LastPoint       uint64  `json:"last_point"`
	AckedPoint      uint64  `json:"acked_point"`
	PendingBytes    int64   `json:"pending_bytes"`
	QueuedPoints    int     `json:"queued_points"`
	QueuedBytes     int64   `json:"queued_bytes"`
	SpilledBytes    int64   `json:"spilled_bytes"`
	Blocked         bool    `json:"blocked"`
	LagSeconds      float64 `json:"lag_seconds"`
	Points          int64   `json:"points_sent"`
	RawBytes        int64   `json:"raw_bytes"`
	WireBytes       int64   `json:"wire_bytes"`
	// AckLagSeconds is the write-to-durable lag of the newest acknowledged
	// point: from its first write reaching this proxy to its acknowledgement.
	AckLagSeconds float64 `json:"ack_lag_seconds"`
	// LastPointAt is the cut time of the newest acknowledged point.
	LastPointAt time.Time `json:"last_point_at,omitzero"`
}

// Status reports every VM, sorted by name.
func (p *SourceProxy) Status() []SourceVMStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	out := make([]SourceVMStatus, 0, len(p.vms))
	for _, v := range p.vms {
		st := SourceVMStatus{VM: v.name, FilterConnected: v.filter != nil, TargetConnected: v.target != nil,
			Rule: v.rule, Encrypted: v.encrypted,
			Received: v.received, LastPoint: v.lastCut, AckedPoint: v.acked, PendingBytes: v.pendingBytes,
			QueuedPoints: len(v.points), Blocked: v.blocked, Points: v.statPoints, RawBytes: v.statRaw, WireBytes: v.statWire,
			AckLagSeconds: v.ackLag.Seconds(), LastPointAt: v.lastPointAt}
		if v.route != nil {
			st.TaskID, st.Target = v.route.TaskID, v.route.Target
		}
		if v.filter != nil {
			st.FilterLink = v.filter.Protection()
		}
		for _, pt := range v.points {
			st.QueuedBytes += pt.size
			if pt.spill != "" {
				st.SpilledBytes += pt.size
			}
		}
		if !v.oldest.IsZero() {
			st.LagSeconds = now.Sub(v.oldest).Seconds()
		}
		if len(v.points) > 0 {
			st.LagSeconds = now.Sub(v.points[0].oldest).Seconds()
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].VM < out[j].VM })
	return out
}
