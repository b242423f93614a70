package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/pki"
)

// Files kept in StateDir.
const (
	configFile = "config.json"
	certFile   = "cert.pem"
	keyFile    = "key.pem"
)

// Paths of the coordinator API this package calls.
const (
	heartbeatPath   = "/api/v1/components/heartbeat"
	certificatePath = "/api/v1/components/certificate"
)

// maxResponse bounds what is read from a coordinator.
const maxResponse = 16 << 20

// Config configures an Agent.
type Config struct {
	Coordinators []string // https://host:port of one or more coordinators (tried in turn)
	Token        string   // component token (bearer)
	CACertFile   string   // PEM of the cluster CA (DATA/ca.pem)
	Kind         model.ComponentKind
	ID           string        // proxy ID, or the filter's host (MoRef or name)
	VCenterID    string        // filter: vCenter of the host (optional with one vCenter)
	StateDir     string        // keeps config.json (0600), cert.pem, key.pem
	Interval     time.Duration // heartbeat period, default 2s
	Logger       *slog.Logger
	// Hosts are the names and addresses the component serves on, put in
	// its certificate; empty: this machine's host name and loopback.
	// Peers verify the chain, not the name, so these are informative.
	Hosts []string
	// Timeout bounds one request to one coordinator (default 10s).
	Timeout time.Duration
}

// Agent is one component's link to the coordinators.
type Agent struct {
	cfg  Config
	log  *slog.Logger
	urls []string
	ca   *x509.Certificate
	pool *x509.CertPool
	hc   *http.Client

	mu       sync.Mutex
	prefer   int // index of the coordinator that answered last
	last     model.ComponentConfig
	hasLast  bool
	cacheErr error

	certMu sync.Mutex
	cert   *tls.Certificate
}

// APIError is a coordinator's answer refusing a request.
type APIError struct {
	URL     string
	Status  int
	Code    string
	Message string
	Field   string
}

func (e *APIError) Error() string {
	msg := e.Message
	if e.Field != "" && !strings.HasPrefix(msg, e.Field) {
		msg = e.Field + ": " + msg
	}
	return fmt.Sprintf("coordinator %s answered %d %s: %s", e.URL, e.Status, e.Code, msg)
}

// ErrNoCoordinator is wrapped by the error of a request that no
// coordinator answered.
var ErrNoCoordinator = errors.New("no coordinator answered")

// New checks the configuration, reads the cluster CA and the cached
// configuration. A cache that cannot be read does not fail New: see
// CachedConfigError.
func New(cfg Config) (*Agent, error) {
	switch cfg.Kind {
	case model.ComponentFilter, model.ComponentProxy:
	default:
		return nil, fmt.Errorf("new agent: kind must be %q or %q, got %q", model.ComponentFilter, model.ComponentProxy, cfg.Kind)
	}
	if cfg.ID == "" {
		return nil, fmt.Errorf("new agent: the %s's ID is required", cfg.Kind)
	}
	if cfg.Token == "" {
		return nil, errors.New("new agent: a component token is required")
	}
	if cfg.StateDir == "" {
		return nil, errors.New("new agent: a state directory is required")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 2 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	a := &Agent{cfg: cfg, log: cfg.Logger.With("component", string(cfg.Kind), "id", cfg.ID)}
	for _, list := range cfg.Coordinators {
		for _, c := range strings.Split(list, ",") {
			if c = strings.TrimSpace(c); c == "" {
				continue
			}
			u, err := coordinatorURL(c)
			if err != nil {
				return nil, fmt.Errorf("new agent: %w", err)
			}
			a.urls = append(a.urls, u)
		}
	}
	if len(a.urls) == 0 {
		return nil, errors.New("new agent: at least one coordinator URL is required")
	}
	pemBytes, err := os.ReadFile(cfg.CACertFile)
	if err != nil {
		return nil, fmt.Errorf("new agent: read the cluster CA: %w", err)
	}
	if a.ca, err = pki.ParseCertPEM(pemBytes); err != nil {
		return nil, fmt.Errorf("new agent: cluster CA %s: %w", cfg.CACertFile, err)
	}
	a.pool = pki.Pool(a.ca)
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("new agent: create state directory: %w", err)
	}
	a.hc = &http.Client{Transport: &http.Transport{
		TLSClientConfig:     pki.ClientTLS(a.ca, nil),
		DialContext:         (&net.Dialer{Timeout: 3 * time.Second}).DialContext,
		TLSHandshakeTimeout: 5 * time.Second,
		MaxIdleConnsPerHost: 2,
		IdleConnTimeout:     time.Minute,
	}}
	a.loadCache()
	return a, nil
}

// coordinatorURL normalises a coordinator address to "https://host:port".
func coordinatorURL(s string) (string, error) {
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("coordinator URL %q: %w", s, err)
	}
	if u.Scheme != "https" {
		return "", fmt.Errorf("coordinator URL %q: must be https (the token and keys travel on it)", s)
	}
	if u.Host == "" {
		return "", fmt.Errorf("coordinator URL %q: no host", s)
	}
	return "https://" + u.Host, nil
}

func (a *Agent) loadCache() {
	path := filepath.Join(a.cfg.StateDir, configFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	var c model.ComponentConfig
	if err == nil {
		err = json.Unmarshal(b, &c)
	}
	if err == nil {
		switch {
		case c.Version == "":
			err = errors.New("it has no version")
		case c.Kind != a.cfg.Kind:
			err = fmt.Errorf("it is a %q configuration, this component is a %s", c.Kind, a.cfg.Kind)
		}
	}
	if err != nil {
		a.cacheErr = fmt.Errorf("cached configuration %s is unusable and will not be applied: %w", path, err)
		a.log.Error("cached configuration ignored; waiting for a coordinator", "err", a.cacheErr)
		return
	}
	a.last, a.hasLast = c, true
}

// CachedConfigError says why the configuration cached in StateDir could not
// be used at start; nil when there was none or it was read.
func (a *Agent) CachedConfigError() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cacheErr
}

// Last is the config cached in StateDir, if any.
func (a *Agent) Last() (model.ComponentConfig, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last, a.hasLast
}

func (a *Agent) save(c model.ComponentConfig) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return fmt.Errorf("encode configuration %s: %w", c.Version, err)
	}
	if err := pki.WriteFile(filepath.Join(a.cfg.StateDir, configFile), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("cache configuration %s: %w", c.Version, err)
	}
	a.mu.Lock()
	a.last, a.hasLast, a.cacheErr = c, true, nil
	a.mu.Unlock()
	return nil
}

// Run heartbeats every Interval until ctx ends: report() builds each
// heartbeat (the agent fills ConfigVersion, and Kind, ID and VCenterID when
// empty), apply() gets the cached config once at start and then each new
// Version; an apply error is logged and retried after an Interval (or with
// a newer Version as soon as one arrives). Applying runs beside the
// heartbeats, so a long apply (hundreds of VMs opened) does not make the
// component look dead; the reports say which Version is running until the
// new one is. A coordinator that does not answer changes nothing. It
// returns nil when ctx ends.
func (a *Agent) Run(ctx context.Context, report func() model.ComponentReport, apply func(model.ComponentConfig) error) error {
	if report == nil || apply == nil {
		return errors.New("run agent: report and apply are required")
	}
	ap := &configApplier{apply: apply, save: a.save, log: a.log, interval: a.cfg.Interval, wake: make(chan struct{}, 1)}
	if c, ok := a.Last(); ok {
		// The cached configuration is applied before the first heartbeat,
		// so that the first report already says what runs.
		ap.offer(&c)
		ap.step()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		ap.loop(ctx)
	}()
	defer func() { <-done }()

	fails := 0
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
		rep := report()
		if rep.Kind == "" {
			rep.Kind = a.cfg.Kind
		}
		if rep.ID == "" {
			rep.ID = a.cfg.ID
		}
		if rep.VCenterID == "" {
			rep.VCenterID = a.cfg.VCenterID
		}
		rep.ConfigVersion = ap.running()
		cfg, err := a.Heartbeat(ctx, rep)
		if err == nil && cfg.Kind != a.cfg.Kind {
			err = fmt.Errorf("coordinator answered a %q configuration to a %s", cfg.Kind, a.cfg.Kind)
		}
		wait := a.cfg.Interval
		switch {
		case err != nil && ctx.Err() != nil:
			return nil
		case err != nil:
			fails++
			wait = a.backoff(fails)
			if fails == 1 || fails%10 == 0 {
				a.log.Warn("heartbeat failed; the running configuration stays", "failures", fails, "version", rep.ConfigVersion, "retry_in", wait, "err", err)
			} else {
				a.log.Debug("heartbeat failed", "failures", fails, "err", err)
			}
		default:
			if fails > 0 {
				a.log.Info("a coordinator answers again", "after_failures", fails)
			}
			fails = 0
			// An unchanged answer carries no tasks: it confirms the running
			// Version (dropping an older pending one), and means nothing if
			// another Version started running meanwhile.
			if !cfg.Unchanged || cfg.Version == ap.running() {
				ap.offer(cfg)
			}
		}
		timer.Reset(wait)
	}
}

// configApplier applies the newest configuration offered to it, one at a time,
// beside the heartbeat loop.
type configApplier struct {
	apply    func(model.ComponentConfig) error
	save     func(model.ComponentConfig) error
	log      *slog.Logger
	interval time.Duration
	wake     chan struct{}

	mu       sync.Mutex
	pending  *model.ComponentConfig // newest configuration not yet running
	version  string                 // Version running
	applying string                 // Version being applied
}

func (p *configApplier) running() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.version
}

// offer hands over a configuration; an older pending one is dropped.
func (p *configApplier) offer(c *model.ComponentConfig) {
	p.mu.Lock()
	if c.Version == p.applying || (p.pending != nil && c.Version == p.pending.Version) {
		p.mu.Unlock()
		return
	}
	if c.Version == p.version {
		p.pending = nil
		p.mu.Unlock()
		return
	}
	p.pending = c
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *configApplier) loop(ctx context.Context) {
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		switch p.step() {
		case stepApplied:
			continue // a newer one may have arrived meanwhile
		case stepFailed:
			retry.Reset(p.interval)
		}
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
		case <-retry.C:
		}
	}
}

const (
	stepIdle = iota
	stepApplied
	stepFailed
)

// step applies the pending configuration, if any.
func (p *configApplier) step() int {
	p.mu.Lock()
	c := p.pending
	if c != nil {
		p.applying = c.Version
	}
	p.mu.Unlock()
	if c == nil {
		return stepIdle
	}
	err := p.apply(*c)
	p.mu.Lock()
	p.applying = ""
	p.mu.Unlock()
	if err != nil {
		p.log.Error("apply configuration; retrying", "version", c.Version, "tasks", len(c.Tasks), "err", err)
		return stepFailed
	}
	// Cached before it is reported as running: a report never names a
	// configuration that a restart would not find.
	if err := p.save(*c); err != nil {
		p.log.Error("configuration applied but not cached", "err", err)
	}
	p.mu.Lock()
	p.version = c.Version
	if p.pending == c {
		p.pending = nil
	}
	p.mu.Unlock()
	p.log.Info("configuration applied", "version", c.Version, "tasks", len(c.Tasks))
	return stepApplied
}

// backoff is the wait after n failed heartbeats in a row: the interval
// doubling up to three intervals (at most 30s, at least one interval), with
// some jitter so components do not return in step. The cap is low because
// a new leader waits for the components in use to report before it judges
// any of them dead: the sooner they are back, the sooner it reconciles.
func (a *Agent) backoff(n int) time.Duration {
	iv := a.cfg.Interval
	limit := min(3*iv, 30*time.Second)
	limit = max(limit, iv)
	d := iv
	for i := 1; i < n && d < limit; i++ {
		d *= 2
	}
	d = min(d, limit)
	return d + time.Duration(rand.Int64N(int64(d)/10+1))
}

// Heartbeat sends one report and returns the coordinator's configuration
// for this component.
func (a *Agent) Heartbeat(ctx context.Context, rep model.ComponentReport) (*model.ComponentConfig, error) {
	var out model.ComponentConfig
	if err := a.post(ctx, heartbeatPath, rep, &out); err != nil {
		return nil, fmt.Errorf("heartbeat of %s %s: %w", a.cfg.Kind, a.cfg.ID, err)
	}
	return &out, nil
}

// post sends body to the coordinators, the one that answered last first,
// moving to the next on a connection failure or a 502, 503 or 504.
func (a *Agent) post(ctx context.Context, path string, body, out any) error {
	payload, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("encode request: %w", err)
	}
	a.mu.Lock()
	start := a.prefer
	a.mu.Unlock()
	var errs []error
	for i := range a.urls {
		idx := (start + i) % len(a.urls)
		retry, err := a.postOne(ctx, a.urls[idx]+path, payload, out)
		if err == nil {
			a.mu.Lock()
			a.prefer = idx
			a.mu.Unlock()
			return nil
		}
		if !retry || ctx.Err() != nil {
			return err
		}
		errs = append(errs, err)
	}
	return fmt.Errorf("%w: %w", ErrNoCoordinator, errors.Join(errs...))
}

// postOne makes one request; retry says whether another coordinator may
// answer better.
func (a *Agent) postOne(ctx context.Context, u string, payload []byte, out any) (retry bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(payload))
	if err != nil {
		return false, fmt.Errorf("request %s: %w", u, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+a.cfg.Token)
	resp, err := a.hc.Do(req)
	if err != nil {
		return true, fmt.Errorf("post %s: %w", u, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return true, fmt.Errorf("read answer of %s: %w", u, err)
	}
	if resp.StatusCode/100 == 2 {
		if err := json.Unmarshal(data, out); err != nil {
			return true, fmt.Errorf("decode answer of %s: %w", u, err)
		}
		return false, nil
	}
	ae := &APIError{URL: u, Status: resp.StatusCode}
	var eb struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
			Field   string `json:"field"`
		} `json:"error"`
	}
	if json.Unmarshal(data, &eb) == nil && eb.Error.Code != "" {
		ae.Code, ae.Message, ae.Field = eb.Error.Code, eb.Error.Message, eb.Error.Field
	} else {
		ae.Code, ae.Message = http.StatusText(resp.StatusCode), strings.TrimSpace(string(data[:min(len(data), 200)]))
	}
	switch resp.StatusCode {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true, ae
	}
	return false, ae
}
