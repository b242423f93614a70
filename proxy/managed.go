package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/pki"
	"github.com/continuum-cdp/continuum/internal/wire"
)

// ManagedConfig configures a proxy that takes its VMs from coordinators.
type ManagedConfig struct {
	ID string // proxy ID
	// Advertise is this proxy's data address as registered with the
	// coordinators: a task whose source proxy is this address makes the
	// proxy the VM's source proxy, likewise for the target proxy.
	Advertise string
	AdminAddr string // reported in heartbeats
	// TLS is the mutual TLS of every data hop (DataTLS); nil is clear
	// (tests only).
	TLS *tls.Config
	// Source tunes the source side; its dialers and RPO come from here and
	// from the tasks.
	Source     SourceConfig
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Managed is a proxy run by coordinators: one listener takes both filter
// sessions (it is the VM's source proxy) and source proxy sessions (it is
// the VM's target proxy), told apart by their Hello.
type Managed struct {
	cfg ManagedConfig
	log *slog.Logger
	src *SourceProxy
	tgt *Target

	mu      sync.Mutex
	version string
	conns   map[net.Conn]bool // connections still in their Hello
	closed  bool
	wg      sync.WaitGroup
}

// DataTLS is the mutual TLS of the data path between components: each side
// presents its certificate and must see one from the cluster CA. Only the
// chain is verified, not the host name, because components reach each
// other by whatever address the coordinators recorded.
func DataTLS(cert tls.Certificate, pool *x509.CertPool) *tls.Config {
	c := dataTLS(pool)
	c.Certificates = []tls.Certificate{cert}
	return c
}

// renewingDataTLS is DataTLS whose certificate is read from cert at every
// handshake, so a renewed certificate applies without a restart.
func renewingDataTLS(cert *atomic.Pointer[tls.Certificate], pool *x509.CertPool) *tls.Config {
	c := dataTLS(pool)
	c.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert.Load(), nil }
	c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert.Load(), nil }
	return c
}

func dataTLS(pool *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// One session per VM and hop: resuming skips the certificates'
		// signatures and chain checks of every handshake after the first
		// to a peer (the peer's chain was verified then; a client's chain
		// is checked again against ClientCAs when its session resumes).
		ClientSessionCache: tls.NewLRUClientSessionCache(0),
		RootCAs:            pool,
		ClientCAs:          pool,
		ClientAuth:         tls.RequireAndVerifyClientCert,
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return pki.VerifyChain(raw, pool)
		},
	}
}

// NewManaged builds a managed proxy with no VMs; Apply gives it some.
func NewManaged(cfg ManagedConfig) (*Managed, error) {
	if cfg.ID == "" {
		return nil, errors.New("managed proxy: an ID is required")
	}
	if _, _, err := net.SplitHostPort(cfg.Advertise); err != nil {
		return nil, fmt.Errorf("managed proxy: data address %q: %w", cfg.Advertise, err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	m := &Managed{cfg: cfg, log: cfg.Logger, conns: map[net.Conn]bool{}}
	tlsConf := cfg.TLS
	sc := cfg.Source
	sc.NodeID = cfg.ID
	sc.DialTarget = nil
	sc.DialAddr = func(ctx context.Context, addr string) (net.Conn, error) { return dialData(ctx, addr, tlsConf) }
	sc.Logger = cfg.Logger.With("role", "source-proxy")
	src, err := NewSource(sc)
	if err != nil {
		return nil, err
	}
	tgt, err := NewTarget(TargetConfig{NodeID: cfg.ID, Managed: true, FilterTLS: tlsConf,
		Logger: cfg.Logger.With("role", "target-proxy"), Registerer: cfg.Registerer})
	if err != nil {
		src.Close()
		return nil, err
	}
	if cfg.Registerer != nil {
		if err := src.Register(cfg.Registerer); err != nil {
			src.Close()
			return nil, fmt.Errorf("register source proxy metrics: %w", err)
		}
	}
	m.src, m.tgt = src, tgt
	return m, nil
}

// Source is the source side (for status).
func (m *Managed) Source() *SourceProxy { return m.src }

// Serve accepts data connections on l (TLS is added here) until ctx ends
// or l closes.
func (m *Managed) Serve(ctx context.Context, l net.Listener) error {
	if m.cfg.TLS != nil {
		l = wire.TLSListener(l, m.cfg.TLS)
	}
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	for {
		nc, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("managed proxy: accept: %w", err)
		}
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			nc.Close()
			return nil
		}
		m.conns[nc] = true
		m.wg.Add(1)
		m.mu.Unlock()
		go func() {
			defer m.wg.Done()
			m.dispatch(ctx, nc)
		}()
	}
}

// dispatch reads the Hello and hands the connection to the side it names.
func (m *Managed) dispatch(ctx context.Context, nc net.Conn) {
	// both sides release the writes and points they read
	c := wire.NewConn(nc, wire.WithFrameReuse())
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	h, err := wire.Expect[*wire.Hello](c)
	m.mu.Lock()
	delete(m.conns, nc)
	m.mu.Unlock()
	if err != nil {
		m.log.Debug("data connection without a hello", "remote", nc.RemoteAddr().String(), "err", err)
		c.Close()
		return
	}
	switch h.Role {
	case wire.RoleSourceFilter:
		if err := m.src.serveHello(c, h); err != nil && ctx.Err() == nil {
			m.log.Warn("filter session ended", "remote", nc.RemoteAddr().String(), "vm", h.VM, "err", err)
		}
	case wire.RoleSourceProxy:
		m.tgt.serveHello(ctx, c, h)
	default:
		_ = c.Send(&wire.HelloAck{Err: fmt.Sprintf("unexpected hello from role %q", h.Role)})
		m.log.Warn("hello from an unexpected role", "remote", nc.RemoteAddr().String(), "role", h.Role, "vm", h.VM)
		c.Close()
	}
}

// Close stops both sides; unacknowledged points are resent by the filters
// and source proxies to whoever serves the VMs next.
func (m *Managed) Close() error {
	m.mu.Lock()
	m.closed = true
	for nc := range m.conns {
		nc.Close()
	}
	m.mu.Unlock()
	m.src.Close()
	m.tgt.Close()
	m.wg.Wait()
	return nil
}

// hostPortMatch says whether a task's proxy address names this proxy: the
// same address, or the same port when this proxy listens on every address.
func hostPortMatch(task, self string) bool {
	if task == self {
		return true
	}
	th, tp, err1 := net.SplitHostPort(task)
	sh, sp, err2 := net.SplitHostPort(self)
	if err1 != nil || err2 != nil || tp != sp {
		return false
	}
	if ip := net.ParseIP(sh); sh == "" || (ip != nil && ip.IsUnspecified()) {
		return true
	}
	return th == sh
}

// Apply runs a configuration from the coordinators. Each task in which
// this proxy's address is the source proxy makes it the VM's source
// proxy (toward the task's target proxy), each in which it is the target
// proxy makes it the VM's target proxy (toward the task's target filter).
// A task whose target filter is not known yet is left out until it is. A
// malformed configuration is an error and changes nothing.
func (m *Managed) Apply(cfg model.ComponentConfig) error {
	srcRoutes := map[string]SourceRoute{}
	tgtRoutes := map[string]TargetRoute{}
	for _, tp := range cfg.Tasks {
		if tp.VM == "" {
			return fmt.Errorf("apply configuration %s: task %s has no VM name", cfg.Version, tp.TaskID)
		}
		isSrc, isTgt := hostPortMatch(tp.SourceProxy, m.cfg.Advertise), hostPortMatch(tp.TargetProxy, m.cfg.Advertise)
		if !isSrc && !isTgt {
			m.log.Warn("task names neither proxy address as this proxy's; is --listen the registered address?",
				"task", tp.TaskID, "vm", tp.VM, "source_proxy", tp.SourceProxy, "target_proxy", tp.TargetProxy, "self", m.cfg.Advertise)
			continue
		}
		if isSrc {
			if _, dup := srcRoutes[tp.VM]; dup {
				return fmt.Errorf("apply configuration %s: vm %s is in two tasks", cfg.Version, tp.VM)
			}
			srcRoutes[tp.VM] = SourceRoute{TaskID: tp.TaskID, Target: tp.TargetProxy, Key: tp.Key, Rules: tp.Rules, RPO: tp.RPO.D()}
		}
		if isTgt {
			if tp.TargetFilter == "" {
				m.log.Warn("task has no target filter address yet; its points are refused until it has", "task", tp.TaskID, "vm", tp.VM)
				continue
			}
			if _, dup := tgtRoutes[tp.VM]; dup {
				return fmt.Errorf("apply configuration %s: vm %s is in two tasks", cfg.Version, tp.VM)
			}
			tgtRoutes[tp.VM] = TargetRoute{TaskID: tp.TaskID, Filter: tp.TargetFilter, Key: tp.Key, Rules: tp.Rules}
		}
	}
	// check both sides before changing either
	for vm, r := range tgtRoutes {
		if _, err := compileTargetRoute(vm, r); err != nil {
			return fmt.Errorf("apply configuration %s: %w", cfg.Version, err)
		}
	}
	if err := m.src.Configure(srcRoutes); err != nil {
		return fmt.Errorf("apply configuration %s: %w", cfg.Version, err)
	}
	if err := m.tgt.Configure(tgtRoutes); err != nil {
		return fmt.Errorf("apply configuration %s: %w", cfg.Version, err)
	}
	m.mu.Lock()
	m.version = cfg.Version
	m.mu.Unlock()
	m.log.Info("configuration applied", "version", cfg.Version, "source_vms", len(srcRoutes), "target_vms", len(tgtRoutes))
	return nil
}

// Version is the configuration version in force ("" before the first).
func (m *Managed) Version() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.version
}

// Report is this proxy's heartbeat: per source VM, the write-to-durable
// lag and the newest acknowledged point. The lag is that of the newest
// acknowledged point, or the age of the oldest write still waiting when
// that is longer, so a path that stopped acknowledging shows a growing lag.
func (m *Managed) Report() model.ComponentReport {
	rep := model.ComponentReport{Kind: model.ComponentProxy, ID: m.cfg.ID, DataAddr: m.cfg.Advertise,
		AdminAddr: m.cfg.AdminAddr, ConfigVersion: m.Version()}
	for _, st := range m.src.Status() {
		if st.TaskID == "" {
			continue
		}
		rep.VMs = append(rep.VMs, model.VMReport{TaskID: st.TaskID, VM: st.VM,
			LagSeconds: max(st.AckLagSeconds, st.LagSeconds), LastPointAt: st.LastPointAt})
	}
	return rep
}
