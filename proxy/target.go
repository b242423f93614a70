package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/wire"
)

// TargetConfig configures a target proxy.
type TargetConfig struct {
	NodeID string
	// TLS, when set, wraps every accepted connection (mutual TLS: it should
	// require and verify client certificates).
	TLS *tls.Config
	// FilterAddr is the target filter of every VM not in FilterAddrs.
	FilterAddr  string
	FilterAddrs map[string]string
	// FilterTLS is the client configuration for target filter connections;
	// nil dials in clear (tests only).
	FilterTLS *tls.Config
	// DialFilter, when set, replaces the address and TLS based dialing.
	DialFilter func(ctx context.Context, vm string) (net.Conn, error)
	// Sealer opens encrypted points; nil means points must arrive in clear.
	Sealer *wire.Sealer
	// VMs, when not empty, are the only VMs accepted; any other is foreign.
	VMs []string
	// Managed takes every VM, its target filter and its key from
	// Configure; until then every VM is foreign.
	Managed bool
	// HandshakeTimeout bounds Hello/HelloAck on both hops. Default 30s.
	HandshakeTimeout time.Duration
	// IdleTimeout drops a source connection silent for this long (the
	// source sends heartbeats). Default 2m.
	IdleTimeout time.Duration
	// MaxPointBytes bounds a decoded point. Default wire.DefaultMaxRawLen.
	MaxPointBytes int
	// Rules are the traffic rules of a static target proxy (a managed one
	// takes each VM's from its route): a rule matching this proxy (source)
	// and a target filter (target) with host_traffic=integrity asks that
	// filter for integrity frames instead of TLS.
	Rules  []model.TrafficRule
	Logger *slog.Logger
	// Registerer receives the proxy's metrics; nil registers nowhere.
	Registerer prometheus.Registerer
}

// Target is a target proxy: it verifies, decrypts and decompresses the
// points of source proxies and delivers them to target filters, passing
// on each acknowledgement only after the target filter made the point
// durable.
type Target struct {
	cfg     TargetConfig
	log     *slog.Logger
	allowed map[string]bool
	rules   []*sourceRule
	m       *targetMetrics

	mu        sync.Mutex
	conns     map[net.Conn]bool
	listeners map[net.Listener]bool
	closed    bool
	wg        sync.WaitGroup
	routes    map[string]*targetRoute           // managed: the configured VMs
	sessions  map[*wire.Conn]targetSessionEntry // open sessions, to close on a route change
}

// targetSessionEntry is an open source session and the route it runs.
type targetSessionEntry struct {
	vm    string
	route *targetRoute
}

type targetMetrics struct {
	sessions  prometheus.Gauge
	points    prometheus.Counter
	wireBytes prometheus.Counter
	rawBytes  prometheus.Counter
	acks      prometheus.Counter
	resends   prometheus.Counter
	rejected  *prometheus.CounterVec
	filterErr *prometheus.CounterVec
}

func newTargetMetrics(r prometheus.Registerer) (*targetMetrics, error) {
	m := &targetMetrics{
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{Name: "continuum_target_proxy_sessions",
			Help: "Open source proxy sessions (one per VM)."}),
		points: prometheus.NewCounter(prometheus.CounterOpts{Name: "continuum_target_proxy_points_total",
			Help: "Points verified and forwarded to a target filter."}),
		wireBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "continuum_target_proxy_wire_bytes_total",
			Help: "Point payload bytes received (compressed, sealed)."}),
		rawBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "continuum_target_proxy_raw_bytes_total",
			Help: "Point bytes after decryption and decompression."}),
		acks: prometheus.NewCounter(prometheus.CounterOpts{Name: "continuum_target_proxy_acks_total",
			Help: "Durable acknowledgements passed back to source proxies."}),
		resends: prometheus.NewCounter(prometheus.CounterOpts{Name: "continuum_target_proxy_resends_total",
			Help: "Points already durable at the target, acknowledged without forwarding."}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "continuum_target_proxy_rejected_total",
			Help: "Connections dropped for a bad frame, by reason."}, []string{"reason"}),
		filterErr: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "continuum_target_proxy_filter_errors_total",
			Help: "Errors reported by target filters, by code."}, []string{"code"}),
	}
	if r != nil {
		for _, c := range []prometheus.Collector{m.sessions, m.points, m.wireBytes, m.rawBytes, m.acks, m.resends, m.rejected, m.filterErr} {
			if err := r.Register(c); err != nil {
				return nil, fmt.Errorf("register target proxy metrics: %w", err)
			}
		}
	}
	return m, nil
}

// NewTarget checks cfg and builds a target proxy.
func NewTarget(cfg TargetConfig) (*Target, error) {
	if !cfg.Managed && cfg.DialFilter == nil && cfg.FilterAddr == "" && len(cfg.FilterAddrs) == 0 {
		return nil, errors.New("target proxy: no target filter address configured")
	}
	if cfg.NodeID == "" {
		cfg.NodeID = "target-proxy"
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 30 * time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 2 * time.Minute
	}
	if cfg.MaxPointBytes <= 0 {
		cfg.MaxPointBytes = wire.DefaultMaxRawLen
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	rules, err := compileRules(cfg.Rules, cfg.Sealer)
	if err != nil {
		return nil, fmt.Errorf("target proxy: %w", err)
	}
	m, err := newTargetMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	t := &Target{cfg: cfg, log: cfg.Logger, m: m, conns: map[net.Conn]bool{}, listeners: map[net.Listener]bool{},
		sessions: map[*wire.Conn]targetSessionEntry{}, rules: rules}
	if cfg.Managed {
		t.routes = map[string]*targetRoute{}
	}
	if len(cfg.VMs) > 0 {
		t.allowed = map[string]bool{}
		for _, vm := range cfg.VMs {
			t.allowed[vm] = true
		}
	}
	return t, nil
}

// Serve accepts source proxy connections on l until ctx ends or l
// closes; it then closes every session and returns.
func (t *Target) Serve(ctx context.Context, l net.Listener) error {
	if t.cfg.TLS != nil {
		l = wire.TLSListener(l, t.cfg.TLS)
	}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return errors.New("target proxy closed")
	}
	t.listeners[l] = true
	t.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	defer t.closeAll()
	for {
		nc, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("target proxy: accept: %w", err)
		}
		if !t.track(nc) {
			nc.Close()
			return nil
		}
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			defer t.untrack(nc)
			t.serveSource(ctx, nc)
		}()
	}
}

func (t *Target) track(nc net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.conns[nc] = true
	return true
}

func (t *Target) untrack(nc net.Conn) {
	t.mu.Lock()
	delete(t.conns, nc)
	t.mu.Unlock()
}

func (t *Target) closeAll() {
	t.mu.Lock()
	t.closed = true
	for l := range t.listeners {
		l.Close()
	}
	for c := range t.conns {
		c.Close()
	}
	t.mu.Unlock()
	t.wg.Wait()
}

// Close stops accepting, drops every session and waits for them to end.
// Unacknowledged points are resent by the source proxies after they
// reconnect.
func (t *Target) Close() error {
	t.closeAll()
	return nil
}

func (t *Target) filterAddr(vm string) string {
	if a, ok := t.cfg.FilterAddrs[vm]; ok {
		return a
	}
	return t.cfg.FilterAddr
}

func (t *Target) dialFilter(ctx context.Context, vm string, route *targetRoute) (net.Conn, error) {
	addr := t.filterAddr(vm)
	ctx, cancel := context.WithTimeout(ctx, t.cfg.HandshakeTimeout)
	defer cancel()
	if t.cfg.DialFilter != nil {
		return t.cfg.DialFilter(ctx, vm)
	}
	if route != nil {
		addr = route.Filter
	}
	if t.cfg.FilterTLS != nil {
		return wire.DialTLS(ctx, nil, addr, t.cfg.FilterTLS)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// targetReject is a frame refused by verification: the reason is logged
// and counted, and the session is dropped.
type targetReject struct {
	reason string
	err    error
}

func (r *targetReject) Error() string { return r.reason + ": " + r.err.Error() }
func (r *targetReject) Unwrap() error { return r.err }

func (t *Target) reject(log *slog.Logger, reason string, err error) error {
	t.m.rejected.WithLabelValues(reason).Inc()
	log.Warn("frame rejected, dropping connection", "reason", reason, "err", err)
	return &targetReject{reason: reason, err: err}
}

// serveSource runs one session: the handshake relayed to the target
// filter, then points one way and acknowledgements the other.
func (t *Target) serveSource(ctx context.Context, nc net.Conn) {
	log := t.log.With("remote", nc.RemoteAddr().String())
	src := wire.NewConn(nc, wire.WithFrameReuse()) // points are released once delivered
	defer src.Close()
	if err := t.session(ctx, src, log); err != nil && ctx.Err() == nil {
		var rj *targetReject
		if !errors.As(err, &rj) {
			log.Info("source session ended", "err", err)
		}
	}
}

// serveHello runs a source session whose Hello a dispatcher already read.
func (t *Target) serveHello(ctx context.Context, src *wire.Conn, h *wire.Hello) {
	nc := src.NetConn()
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		src.Close()
		return
	}
	t.conns[nc] = true
	t.wg.Add(1)
	t.mu.Unlock()
	defer t.wg.Done()
	defer t.untrack(nc)
	defer src.Close()
	log := t.log.With("remote", nc.RemoteAddr().String())
	if err := t.sessionHello(ctx, src, h, log); err != nil && ctx.Err() == nil {
		var rj *targetReject
		if !errors.As(err, &rj) {
			log.Info("source session ended", "err", err)
		}
	}
}

func (t *Target) session(ctx context.Context, src *wire.Conn, log *slog.Logger) error {
	_ = src.SetReadDeadline(time.Now().Add(t.cfg.HandshakeTimeout))
	m, err := src.ReadMsg()
	if err != nil {
		return t.reject(log, "handshake", fmt.Errorf("read hello: %w", err))
	}
	h, ok := m.(*wire.Hello)
	if !ok {
		return t.reject(log, "handshake", fmt.Errorf("got %s before Hello", m.Type()))
	}
	return t.sessionHello(ctx, src, h, log)
}

// sessionHello is session once the Hello is read.
func (t *Target) sessionHello(ctx context.Context, src *wire.Conn, h *wire.Hello, log *slog.Logger) error {
	log = log.With("vm", h.VM)
	if h.Role != wire.RoleSourceProxy || h.VM == "" {
		_ = src.Send(&wire.HelloAck{Err: fmt.Sprintf("unexpected hello from role %q for vm %q", h.Role, h.VM)})
		return t.reject(log, "handshake", fmt.Errorf("hello from role %q vm %q", h.Role, h.VM))
	}
	if (t.allowed != nil && !t.allowed[h.VM]) || (!t.cfg.Managed && t.cfg.DialFilter == nil && t.filterAddr(h.VM) == "") {
		_ = src.Send(&wire.HelloAck{Err: fmt.Sprintf("vm %q is not served by this proxy", h.VM)})
		return t.reject(log, "foreign_vm", fmt.Errorf("unknown vm %q", h.VM))
	}
	sealer := t.cfg.Sealer
	var route *targetRoute
	if t.cfg.Managed {
		t.mu.Lock()
		route = t.routes[h.VM]
		if route != nil {
			t.sessions[src] = targetSessionEntry{vm: h.VM, route: route}
		}
		t.mu.Unlock()
		if route == nil {
			_ = src.Send(&wire.HelloAck{Err: fmt.Sprintf("vm %q is not served by this proxy", h.VM)})
			return t.reject(log, "foreign_vm", fmt.Errorf("vm %q is not in this proxy's configuration", h.VM))
		}
		defer func() {
			t.mu.Lock()
			delete(t.sessions, src)
			t.mu.Unlock()
		}()
		sealer = route.sealerFor(src.NetConn())
	}

	fc, err := t.dialFilter(ctx, h.VM, route)
	if err != nil {
		_ = src.Send(&wire.HelloAck{Err: "target filter unreachable"})
		return fmt.Errorf("dial target filter for %s: %w", h.VM, err)
	}
	dst := wire.NewConn(fc)
	defer dst.Close()
	rules := t.rules
	if route != nil {
		rules = route.rules
	}
	if hostIntegrity(rules, fc.LocalAddr(), fc.RemoteAddr()) {
		dst.RequestIntegrity()
	}
	ack, err := wire.Greet(dst, &wire.Hello{Role: wire.RoleTargetProxy, NodeID: t.cfg.NodeID, VM: h.VM, Disks: h.Disks, Resume: h.Resume}, t.cfg.HandshakeTimeout)
	if err != nil {
		_ = src.Send(&wire.HelloAck{Err: "target filter handshake failed"})
		return fmt.Errorf("target filter: %w", err)
	}
	if err := src.Send(ack); err != nil {
		return fmt.Errorf("relay hello ack: %w", err)
	}
	if ack.Err != "" {
		return fmt.Errorf("target filter refused %s: %s", h.VM, ack.Err)
	}
	resume := ack.Resume
	log.Info("session open", "resume", resume, "initial_sync_done", ack.InitialSyncDone, "source_link", src.Protection(), "filter_link", dst.Protection())
	t.m.sessions.Inc()
	defer t.m.sessions.Dec()

	// Acknowledgements flow back while points flow forward, so a slow
	// fsync does not stall the pipe.
	ackDone := make(chan error, 1)
	go func() {
		err := t.relayAcks(dst, src, log)
		// The target filter is gone: end the session so the source
		// reconnects and resumes rather than sending into the void.
		src.Close()
		dst.Close()
		ackDone <- err
	}()
	fwdErr := t.forward(src, dst, h.VM, resume, sealer, log)
	// Either side failing ends both: closing the connections unblocks the
	// other goroutine.
	src.Close()
	dst.Close()
	ackErr := <-ackDone
	if fwdErr != nil {
		return fwdErr
	}
	return ackErr
}

// forward reads frames from the source proxy while a second goroutine
// verifies and decodes each point and hands it to the target filter in
// clear and uncompressed: reading (TLS, checksum) of the next point
// overlaps with decoding and delivering the current one. Order is kept;
// at most forwardQueue points wait between the two.
func (t *Target) forward(src, dst *wire.Conn, vm string, resume uint64, sealer *wire.Sealer, log *slog.Logger) error {
	q := make(chan wire.Msg, forwardQueue)
	quit := make(chan struct{})
	var werr error
	workerDone := make(chan struct{})
	go func() {
		defer close(workerDone)
		if werr = t.deliver(q, quit, src, dst, vm, resume, sealer, log); werr != nil {
			src.Close() // ends the reader
		}
	}()
	rerr := t.readPoints(src, q, workerDone, log)
	close(quit)
	if rerr != nil {
		dst.Close() // a delivery stuck on the target filter ends too
	}
	<-workerDone
	if werr != nil {
		return werr
	}
	return rerr
}

// forwardQueue is how many points read from the source may wait for
// delivery: enough to overlap the two, little memory.
const forwardQueue = 1

// keepDecodeBuf is the largest decode buffer a session keeps for the next
// point; a rare huge point does not pin its memory.
const keepDecodeBuf = 64 << 20

// readPoints reads frames from the source proxy and queues points and
// heartbeats in order; every point ID must exceed the previous one.
// It returns when the deliverer has ended (stop).
func (t *Target) readPoints(src *wire.Conn, q chan<- wire.Msg, stop <-chan struct{}, log *slog.Logger) error {
	var last uint64
	for {
		_ = src.SetReadDeadline(time.Now().Add(t.cfg.IdleTimeout))
		m, err := src.ReadMsg()
		if err != nil {
			if errors.Is(err, wire.ErrCorrupt) {
				return t.reject(log, "corrupt_frame", err)
			}
			return fmt.Errorf("read from source proxy: %w", err)
		}
		switch v := m.(type) {
		case *wire.Point:
			if v.ID <= last {
				return t.reject(log, "replayed", fmt.Errorf("point %d after %d", v.ID, last))
			}
			last = v.ID
		case *wire.Heartbeat:
		case *wire.Status:
			log.Debug("source status", "mode", v.Mode, "done", v.BytesDone, "total", v.BytesTotal, "msg", v.Msg)
			continue
		default:
			return t.reject(log, "unexpected_message", fmt.Errorf("%s from source proxy", m.Type()))
		}
		select {
		case q <- m:
		case <-stop:
			return nil
		}
	}
}

// deliver verifies, decodes and forwards the queued points until the
// queue's reader quits. The decoded form of each point is built in the
// buffer of the previous one, which the target filter's connection no
// longer uses once the point is written.
func (t *Target) deliver(q <-chan wire.Msg, quit <-chan struct{}, src, dst *wire.Conn, vm string, resume uint64, sealer *wire.Sealer, log *slog.Logger) error {
	opts := wire.PointOptions{Sealer: sealer, VM: vm, MaxRawLen: t.cfg.MaxPointBytes}
	var buf []byte
	for {
		var m wire.Msg
		select {
		case m = <-q:
		case <-quit:
			return nil
		}
		switch v := m.(type) {
		case *wire.Point:
			// Verified, decrypted and decompressed; the plain form shares
			// the decoded bytes, so nothing is serialised twice.
			opts.Buf = buf
			out, _, err := wire.OpenPoint(v, opts)
			if err != nil {
				reason := "bad_point"
				if errors.Is(err, wire.ErrAuth) || (v.Encrypted != (sealer != nil)) {
					reason = "foreign"
				}
				return t.reject(log, reason, err)
			}
			if v.ID <= resume {
				// Already durable at the target filter (it told us so in
				// HelloAck): acknowledge again, apply nothing.
				t.m.resends.Inc()
				wire.Release(v)
				if err := src.Send(&wire.PointAck{ID: v.ID}); err != nil {
					return fmt.Errorf("ack resent point %d: %w", v.ID, err)
				}
				continue
			}
			if err := dst.Send(out); err != nil {
				return fmt.Errorf("forward point %d to target filter: %w", v.ID, err)
			}
			if v.Codec != wire.CodecNone && cap(out.Payload) <= keepDecodeBuf {
				buf = out.Payload
			}
			t.m.points.Inc()
			t.m.wireBytes.Add(float64(len(v.Payload)))
			t.m.rawBytes.Add(float64(v.RawLen))
			// the frame (which a clear, uncompressed point's plain form
			// shares) is written out: its buffer serves the next frames
			wire.Release(v)
		case *wire.Heartbeat:
			if err := dst.Send(v); err != nil {
				return fmt.Errorf("forward heartbeat: %w", err)
			}
		}
	}
}

// relayAcks passes the target filter's durable acknowledgements (and error
// reports) back to the source proxy.
func (t *Target) relayAcks(dst, src *wire.Conn, log *slog.Logger) error {
	for {
		m, err := dst.ReadMsg()
		if err != nil {
			return fmt.Errorf("read from target filter: %w", err)
		}
		switch v := m.(type) {
		case *wire.PointAck:
			if err := src.Send(v); err != nil {
				return fmt.Errorf("relay ack of point %d: %w", v.ID, err)
			}
			t.m.acks.Inc()
		case *wire.Error:
			t.m.filterErr.WithLabelValues(fmt.Sprint(v.Code)).Inc()
			log.Warn("target filter reports an error", "code", v.Code, "msg", v.Msg)
			if err := src.Send(v); err != nil {
				return fmt.Errorf("relay error: %w", err)
			}
		case *wire.Heartbeat, *wire.Status:
		default:
			return fmt.Errorf("unexpected %s from target filter", m.Type())
		}
	}
}
