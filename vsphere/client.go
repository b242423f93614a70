package vsphere

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"reflect"
	"sync"
	"time"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/pbm"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/session"
	"github.com/vmware/govmomi/session/keepalive"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// Config says how to reach and log in to a vCenter.
type Config struct {
	URL      string // https://vcenter/sdk (the /sdk path is added if missing)
	Username string
	Password string
	// Server identity: a SHA-1 or SHA-256 thumbprint, a CA bundle (PEM
	// file), or Insecure for lab use only.
	Thumbprint string
	CAFile     string
	Insecure   bool

	// KeepAlive is the idle interval between session keep-alive calls
	// (default 5 minutes; negative disables).
	KeepAlive time.Duration
	// Retries bounds the attempts of a call that failed for a transient
	// reason (default 3); backoff starts at RetryBackoff (default 100ms).
	Retries      int
	RetryBackoff time.Duration
	// FilterVIB is the I/O filter package installed on clusters.
	FilterVIB string
	// ProfileName names the CDP storage profile (default "Continuum CDP").
	ProfileName string

	Logger *slog.Logger
}

// DefaultProfileName is the storage profile created with the filter.
const DefaultProfileName = "Continuum CDP"

// DefaultFilterVIB is the filter package the lab's vCenter accepts.
const DefaultFilterVIB = "https://127.0.0.1/continuum/continuum-cdp-1.0.0.vib"

// Client is a logged-in vCenter connection. It is safe for concurrent use.
type Client struct {
	cfg   Config
	log   *slog.Logger
	vc    *vim25.Client
	ka    *keepalive.HandlerSOAP
	rt    *reloginRT
	pbmMu sync.Mutex
	pbmC  *pbm.Client

	pcs     chan *property.Collector
	pcMu    sync.Mutex
	pcCount int

	placeMu sync.Mutex
	placed  map[ReplicaSpec]placement // validated target placements (placementKey)
}

// Connect logs in. A wrong password gives ErrAuth, an address that does not
// answer gives ErrUnreachable, both after bounded retries at most.
func Connect(ctx context.Context, cfg Config) (*Client, error) {
	const op = "connect to vCenter"
	if cfg.URL == "" || cfg.Username == "" {
		return nil, fail(op, ErrInvalid, errors.New("URL and username are required"))
	}
	if cfg.Retries <= 0 {
		cfg.Retries = 3
	}
	if cfg.RetryBackoff <= 0 {
		cfg.RetryBackoff = 100 * time.Millisecond
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = 5 * time.Minute
	}
	if cfg.FilterVIB == "" {
		cfg.FilterVIB = DefaultFilterVIB
	}
	if cfg.ProfileName == "" {
		cfg.ProfileName = DefaultProfileName
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	u, err := soap.ParseURL(cfg.URL)
	if err != nil {
		return nil, fail(op, ErrInvalid, fmt.Errorf("url %q: %w", cfg.URL, err))
	}
	u.User = nil
	sc := soap.NewClient(u, cfg.Insecure)
	// Parallel workers would otherwise churn through TLS handshakes: the
	// default keeps only two idle connections per host.
	sc.DefaultTransport().MaxIdleConnsPerHost = 64
	// Parallel workers would otherwise churn through TLS handshakes: the
	// default keeps only two idle connections per host.
	sc.DefaultTransport().MaxIdleConnsPerHost = 64
	if cfg.Thumbprint != "" {
		sc.SetThumbprint(u.Host, cfg.Thumbprint)
	}
	if cfg.CAFile != "" {
		if _, err := os.Stat(cfg.CAFile); err != nil {
			return nil, fail(op, ErrInvalid, fmt.Errorf("CA file: %w", err))
		}
		if err := sc.SetRootCAs(cfg.CAFile); err != nil {
			return nil, fail(op, ErrInvalid, fmt.Errorf("CA file: %w", err))
		}
	}

	rt := &reloginRT{inner: sc, retries: cfg.Retries, backoff: cfg.RetryBackoff, log: log}
	var vc *vim25.Client
	err = rt.retry(ctx, func() error {
		var err error
		vc, err = vim25.NewClient(ctx, sc)
		return err
	})
	if err != nil {
		return nil, wrap(op+" "+u.Host, err)
	}
	rt.user = url.UserPassword(cfg.Username, cfg.Password)
	rt.sessionManager = *vc.ServiceContent.SessionManager
	if err := rt.login(ctx); err != nil {
		return nil, wrap(op+" "+u.Host, err)
	}
	c := &Client{cfg: cfg, log: log, vc: vc, rt: rt, pcs: make(chan *property.Collector, collectorPoolSize)}
	vc.RoundTripper = rt
	if cfg.KeepAlive > 0 {
		c.ka = keepalive.NewHandlerSOAP(rt, cfg.KeepAlive, nil)
		c.ka.Start()
		vc.RoundTripper = c.ka
	}
	log.Info("connected to vCenter", "url", u.String(), "user", cfg.Username)
	return c, nil
}

// Close logs out and stops the keep-alive.
func (c *Client) Close(ctx context.Context) error {
	if c.ka != nil {
		c.ka.Stop()
	}
	if err := session.NewManager(c.vc).Logout(ctx); err != nil && !fault.Is(err, &types.NotAuthenticated{}) {
		return wrap("log out of vCenter", err)
	}
	return nil
}

// Relogins counts the transparent re-logins after a lost session.
func (c *Client) Relogins() int64 {
	c.rt.mu.Lock()
	defer c.rt.mu.Unlock()
	return c.rt.relogins
}

func (c *Client) pbmClient(ctx context.Context) (*pbm.Client, error) {
	c.pbmMu.Lock()
	defer c.pbmMu.Unlock()
	if c.pbmC != nil {
		return c.pbmC, nil
	}
	p, err := pbm.NewClient(ctx, c.vc)
	if err != nil {
		return nil, wrap("connect to the storage policy service", err)
	}
	c.pbmC = p
	return p, nil
}

// reloginRT retries transient failures with backoff and logs in again when
// the session was lost, so callers never see NotAuthenticated for a session
// that a vCenter restart or timeout dropped.
type reloginRT struct {
	inner          soap.RoundTripper
	retries        int
	backoff        time.Duration
	log            *slog.Logger
	user           *url.Userinfo
	sessionManager types.ManagedObjectReference

	mu       sync.Mutex
	gen      int64 // bumped by every re-login
	relogins int64
}

func (r *reloginRT) RoundTrip(ctx context.Context, req, res soap.HasFault) error {
	call := func() error {
		resetResponse(res)
		return r.inner.RoundTrip(ctx, req, res)
	}
	r.mu.Lock()
	gen := r.gen
	r.mu.Unlock()
	err := r.retry(ctx, call)
	if err == nil || !fault.Is(err, &types.NotAuthenticated{}) {
		return err
	}
	if _, isLogin := req.(*methods.LoginBody); isLogin {
		return err
	}
	if _, isLogout := req.(*methods.LogoutBody); isLogout {
		return err
	}
	// One login for all the callers that saw the same lost session.
	r.mu.Lock()
	if r.gen == gen {
		r.log.Warn("vCenter session lost, logging in again")
		if lerr := r.login(ctx); lerr != nil {
			r.mu.Unlock()
			return lerr
		}
		r.gen++
		r.relogins++
	}
	r.mu.Unlock()
	return r.retry(ctx, call)
}

func (r *reloginRT) login(ctx context.Context) error {
	pw, _ := r.user.Password()
	req := types.Login{This: r.sessionManager, UserName: r.user.Username(), Password: pw}
	return r.retry(ctx, func() error {
		_, err := methods.Login(ctx, r.inner, &req)
		return err
	})
}

// retry runs f until it succeeds, fails for a reason that retrying cannot
// fix, or the attempts run out.
func (r *reloginRT) retry(ctx context.Context, f func() error) error {
	delay := r.backoff
	var err error
	for attempt := 1; ; attempt++ {
		err = f()
		if err == nil || !transient(err) || attempt >= r.retries {
			return err
		}
		r.log.Debug("transient vCenter error, retrying", "attempt", attempt, "err", err)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		delay *= 2
	}
}

func transient(err error) bool {
	if fault.Is(err, &types.HostCommunication{}) || fault.Is(err, &types.RequestCanceled{}) {
		return true
	}
	if soap.IsCertificateUntrusted(err) {
		return false
	}
	return isNetwork(err)
}

// resetResponse zeroes a response body so that a retried call does not keep
// the fault decoded from the previous attempt.
func resetResponse(res soap.HasFault) {
	v := reflect.ValueOf(res)
	if v.Kind() == reflect.Pointer && !v.IsNil() {
		v.Elem().Set(reflect.Zero(v.Elem().Type()))
	}
}
