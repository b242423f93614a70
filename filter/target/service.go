package target

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/continuum-cdp/continuum/filter/journal"
	"github.com/continuum-cdp/continuum/filter/nbd"
	"github.com/continuum-cdp/continuum/internal/wire"
)

// Config configures a target filter service.
type Config struct {
	NodeID string
	// JournalDir is the target datastore directory holding the journal.
	JournalDir string
	// Journal tunes the store (segment size, byte cap, ...); Logger is
	// filled in from Logger when empty.
	Journal journal.Options
	// ListenAddr is the data listener for target proxies ("127.0.0.1:0").
	ListenAddr string
	// TLS wraps the data listener (mutual TLS); nil listens in clear
	// (tests only).
	TLS *tls.Config
	// AdminAddr is the HTTP admin listener (/healthz, /metrics, /v1/...).
	// It is meant for loopback or a management network.
	AdminAddr string
	// AdminTLS, when set, serves the admin API over TLS (with client
	// certificates if it requires them).
	AdminTLS *tls.Config
	// NBDAddr is where served points are exported read-only. Default
	// "127.0.0.1:0".
	NBDAddr string
	// ExportDir, when set, is the only directory export requests may
	// write into.
	ExportDir string
	// ShortTerm and LongTerm are the default retention windows (0 keeps
	// everything); RetentionInterval is how often they are applied
	// (default 1m).
	ShortTerm         time.Duration
	LongTerm          time.Duration
	RetentionInterval time.Duration
	// HandshakeTimeout bounds Hello (default 30s); IdleTimeout drops a
	// silent proxy connection (default 2m).
	HandshakeTimeout time.Duration
	IdleTimeout      time.Duration
	Logger           *slog.Logger
}

// Service is a running target filter.
type Service struct {
	cfg   Config
	log   *slog.Logger
	store *journal.Store
	reg   *prometheus.Registry
	m     *metrics

	dataL  net.Listener
	adminL net.Listener
	nbdL   net.Listener
	nbd    *nbd.Server
	http   *http.Server

	mu        sync.Mutex
	conns     map[net.Conn]bool
	sessions  map[string]*session // the active session of each VM
	retention map[string]Retention
	allowed   map[string]bool    // nil: every VM (SetVMs)
	served    map[string]*served // by "vm/point"
	removing  map[string]bool    // VMs whose journal is being removed
	closed    bool

	stop     context.CancelFunc
	ctx      context.Context
	wg       sync.WaitGroup
	closeErr error
	once     sync.Once
}

// Retention is a pair of windows; zero keeps everything of that kind.
type Retention struct {
	ShortTerm time.Duration
	LongTerm  time.Duration
}

// New opens the journal and binds the listeners; Run serves them.
func New(cfg Config) (*Service, error) {
	if cfg.JournalDir == "" {
		return nil, errors.New("target filter: a journal directory is required")
	}
	if cfg.ListenAddr == "" {
		return nil, errors.New("target filter: a listen address is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.NBDAddr == "" {
		cfg.NBDAddr = "127.0.0.1:0"
	}
	if cfg.RetentionInterval <= 0 {
		cfg.RetentionInterval = time.Minute
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 30 * time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 2 * time.Minute
	}
	if cfg.ShortTerm < 0 || cfg.LongTerm < 0 {
		return nil, errors.New("target filter: retention windows must not be negative")
	}
	if cfg.Journal.Logger == nil {
		cfg.Journal.Logger = cfg.Logger
	}
	s := &Service{
		cfg: cfg, log: cfg.Logger, reg: prometheus.NewRegistry(),
		conns: map[net.Conn]bool{}, sessions: map[string]*session{},
		retention: map[string]Retention{}, served: map[string]*served{}, removing: map[string]bool{},
	}
	s.m = newMetrics()
	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.reg.MustRegister(s.m.collectors()...)
	s.nbd = nbd.NewServer(cfg.Logger.With("component", "nbd"), nbd.WithRegisterer(s.reg))

	store, err := journal.Open(cfg.JournalDir, cfg.Journal)
	if err != nil {
		return nil, fmt.Errorf("target filter: open journal: %w", err)
	}
	s.store = store
	fail := func(err error) (*Service, error) {
		s.closeListeners()
		store.Close()
		return nil, err
	}
	if err := s.loadRetention(); err != nil {
		return fail(fmt.Errorf("target filter: %w", err))
	}
	if s.dataL, err = net.Listen("tcp", cfg.ListenAddr); err != nil {
		return fail(fmt.Errorf("target filter: listen %s: %w", cfg.ListenAddr, err))
	}
	if cfg.AdminAddr != "" {
		if s.adminL, err = net.Listen("tcp", cfg.AdminAddr); err != nil {
			return fail(fmt.Errorf("target filter: admin listen %s: %w", cfg.AdminAddr, err))
		}
	}
	if s.nbdL, err = net.Listen("tcp", cfg.NBDAddr); err != nil {
		return fail(fmt.Errorf("target filter: nbd listen %s: %w", cfg.NBDAddr, err))
	}
	s.http = &http.Server{Handler: s.adminHandler(), ReadHeaderTimeout: 10 * time.Second}
	s.ctx, s.stop = context.WithCancel(context.Background())
	return s, nil
}

// Addr is the data listener's address.
func (s *Service) Addr() string { return s.dataL.Addr().String() }

// AdminAddr is the admin listener's address ("" if none).
func (s *Service) AdminAddr() string {
	if s.adminL == nil {
		return ""
	}
	return s.adminL.Addr().String()
}

// NBDAddr is the address served points are exported on.
func (s *Service) NBDAddr() string { return s.nbdL.Addr().String() }

// Store is the journal (for tests and tools in the same process).
func (s *Service) Store() *journal.Store { return s.store }

// Registry holds the service's metrics, for a process that serves them
// with others.
func (s *Service) Registry() *prometheus.Registry { return s.reg }

// Handler is the admin API, for embedding.
func (s *Service) Handler() http.Handler { return s.http.Handler }

// Run serves until ctx ends or Close is called, then closes everything.
func (s *Service) Run(ctx context.Context) error {
	var l net.Listener = s.dataL
	if s.cfg.TLS != nil {
		l = wire.TLSListener(l, s.cfg.TLS)
	}
	errc := make(chan error, 3)
	s.wg.Add(1)
	go func() { defer s.wg.Done(); errc <- s.acceptLoop(l) }()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.nbd.Serve(s.nbdL); err != nil && s.ctx.Err() == nil {
			errc <- fmt.Errorf("nbd: %w", err)
		}
	}()
	if s.adminL != nil {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			l := s.adminL
			if s.cfg.AdminTLS != nil {
				l = tls.NewListener(l, s.cfg.AdminTLS)
			}
			if err := s.http.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("admin api: %w", err)
			}
		}()
	}
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.retentionLoop() }()
	s.log.Info("target filter running", "addr", s.Addr(), "admin", s.AdminAddr(), "nbd", s.NBDAddr())

	var err error
	select {
	case <-ctx.Done():
	case <-s.ctx.Done():
	case err = <-errc:
	}
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	return err
}

func (s *Service) acceptLoop(l net.Listener) error {
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("accept: %w", err)
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			nc.Close()
			return nil
		}
		s.conns[nc] = true
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.serveConn(nc)
			s.mu.Lock()
			delete(s.conns, nc)
			s.mu.Unlock()
		}()
	}
}

func (s *Service) closeListeners() {
	for _, l := range []net.Listener{s.dataL, s.adminL, s.nbdL} {
		if l != nil {
			l.Close()
		}
	}
}

// Close stops at once, without draining: connections are cut, appends in
// flight fail unacknowledged, and the journal is closed. What was
// acknowledged is durable already.
func (s *Service) Close() error {
	s.once.Do(func() {
		s.mu.Lock()
		s.closed = true
		for c := range s.conns {
			c.Close()
		}
		for _, sv := range s.served {
			sv.close()
		}
		s.mu.Unlock()
		if s.stop != nil {
			s.stop()
		}
		s.closeListeners()
		if s.http != nil {
			s.http.Close()
		}
		s.nbd.Close()
		s.wg.Wait()
		s.closeErr = s.store.Close()
	})
	return s.closeErr
}
