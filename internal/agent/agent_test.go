package agent

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/pki"
)

// fakeCoordinator answers heartbeats with cfg (or with status when set)
// and certificate requests from its CA, and records what it got.
type fakeCoordinator struct {
	t   *testing.T
	ca  *pki.CA
	srv *httptest.Server

	mu      sync.Mutex
	cfg     model.ComponentConfig
	status  int // non-zero: answer heartbeats with this status
	reports []model.ComponentReport
	certs   int
	tokens  []string
}

func newCA(t *testing.T) (*pki.CA, string) {
	t.Helper()
	ca, err := pki.NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(f, pki.CertPEM(ca.Cert), 0o644); err != nil {
		t.Fatal(err)
	}
	return ca, f
}

func newFake(t *testing.T, ca *pki.CA) *fakeCoordinator {
	t.Helper()
	f := &fakeCoordinator{t: t, ca: ca}
	leaf, err := ca.Issue("n1", []string{"127.0.0.1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+heartbeatPath, func(w http.ResponseWriter, r *http.Request) {
		var rep model.ComponentReport
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rep); err != nil {
			http.Error(w, `{"error":{"code":"invalid_argument","message":"bad body","field":"body"}}`, http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		f.reports = append(f.reports, rep)
		f.tokens = append(f.tokens, r.Header.Get("Authorization"))
		if f.status != 0 {
			w.WriteHeader(f.status)
			io.WriteString(w, `{"error":{"code":"unavailable","message":"no leader"}}`)
			return
		}
		_ = json.NewEncoder(w).Encode(f.cfg)
	})
	mux.HandleFunc("POST "+certificatePath, func(w http.ResponseWriter, r *http.Request) {
		var req certRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, "bad", http.StatusBadRequest)
			return
		}
		l, err := f.ca.IssueComponent(req.Name, req.Hosts, 0)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		key, _ := pki.KeyPEM(l.Key)
		f.mu.Lock()
		f.certs++
		f.mu.Unlock()
		_ = json.NewEncoder(w).Encode(certResponse{CACert: string(pki.CertPEM(f.ca.Cert)), Cert: string(pki.CertPEM(l.Cert)), Key: string(key)})
	})
	f.srv = httptest.NewUnstartedServer(mux)
	f.srv.TLS = pki.APIServerTLS(ca.Cert, leaf.TLSCertificate(ca.Cert))
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeCoordinator) set(cfg model.ComponentConfig, status int) {
	f.mu.Lock()
	f.cfg, f.status = cfg, status
	f.mu.Unlock()
}

func (f *fakeCoordinator) got() []model.ComponentReport {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]model.ComponentReport(nil), f.reports...)
}

// deadURL is an https URL nothing listens on.
func deadURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "https://" + addr
}

func config(version string, tasks ...string) model.ComponentConfig {
	c := model.ComponentConfig{Version: version, Kind: model.ComponentProxy, ID: "px-1", Tasks: []model.TaskPath{}}
	for _, id := range tasks {
		c.Tasks = append(c.Tasks, model.TaskPath{TaskID: id, VM: "vm", Key: make([]byte, 32), RPO: model.Duration(time.Second)})
	}
	return c
}

func newAgent(t *testing.T, caFile, dir string, urls ...string) *Agent {
	t.Helper()
	a, err := New(Config{Coordinators: urls, Token: "fp.secret", CACertFile: caFile, Kind: model.ComponentProxy,
		ID: "px-1", StateDir: dir, Interval: 10 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// applier records the configurations applied; fail makes the next n fail.
type applier struct {
	mu      sync.Mutex
	applied []model.ComponentConfig
	fail    int
	calls   int
}

func (ap *applier) apply(c model.ComponentConfig) error {
	ap.mu.Lock()
	defer ap.mu.Unlock()
	ap.calls++
	if ap.fail > 0 {
		ap.fail--
		return errors.New("cannot apply now")
	}
	ap.applied = append(ap.applied, c)
	return nil
}

func (ap *applier) versions() []string {
	ap.mu.Lock()
	defer ap.mu.Unlock()
	var out []string
	for _, c := range ap.applied {
		out = append(out, c.Version)
	}
	return out
}

func (ap *applier) callCount() int {
	ap.mu.Lock()
	defer ap.mu.Unlock()
	return ap.calls
}

// run starts a.Run and returns a stop function that waits for it.
func run(t *testing.T, a *Agent, ap *applier, report func() model.ComponentReport) (stop func()) {
	t.Helper()
	if report == nil {
		report = func() model.ComponentReport { return model.ComponentReport{DataAddr: "127.0.0.1:7100"} }
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, report, ap.apply) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Error("run did not end after its context")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func readCache(t *testing.T, dir string) (model.ComponentConfig, os.FileMode) {
	t.Helper()
	p := filepath.Join(dir, configFile)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	var c model.ComponentConfig
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c, st.Mode().Perm()
}

// Run applies the coordinator's configuration, caches it 0600, reports the
// running version, and applies again only when the version changes.
func TestRunAppliesNewVersionsOnly(t *testing.T) {
	ca, caFile := newCA(t)
	f := newFake(t, ca)
	f.set(config("v1", "p/vm-1"), 0)
	dir := t.TempDir()
	a := newAgent(t, caFile, dir, f.srv.URL)
	if _, ok := a.Last(); ok {
		t.Fatal("a new state directory has a cached config")
	}
	ap := &applier{}
	run(t, a, ap, nil)
	waitUntil(t, "v1 applied and reported", func() bool {
		for _, r := range f.got() {
			if r.ConfigVersion == "v1" {
				return true
			}
		}
		return false
	})
	// Several more heartbeats with the same version apply nothing.
	n := len(f.got())
	waitUntil(t, "more heartbeats", func() bool { return len(f.got()) >= n+3 })
	if v := ap.versions(); len(v) != 1 || v[0] != "v1" || ap.callCount() != 1 {
		t.Fatalf("applied %v in %d calls", v, ap.callCount())
	}
	cached, mode := readCache(t, dir)
	if cached.Version != "v1" || len(cached.Tasks) != 1 || mode != 0o600 {
		t.Fatalf("cache: %+v mode %o", cached, mode)
	}
	r := f.got()[0]
	if r.Kind != model.ComponentProxy || r.ID != "px-1" || r.DataAddr != "127.0.0.1:7100" || r.ConfigVersion != "" {
		t.Fatalf("first report: %+v", r)
	}
	if tok := f.tokens[0]; tok != "Bearer fp.secret" {
		t.Fatalf("authorization %q", tok)
	}
	f.set(config("v2", "p/vm-1", "p/vm-2"), 0)
	waitUntil(t, "v2 applied", func() bool { v := ap.versions(); return len(v) == 2 && v[1] == "v2" })
	waitUntil(t, "v2 last", func() bool { last, ok := a.Last(); return ok && last.Version == "v2" })
	waitUntil(t, "v2 cached", func() bool { c, _ := readCache(t, dir); return c.Version == "v2" })
}

// With no coordinator answering, the cached configuration is applied once
// at start and stays: nothing else is applied, the cache is untouched.
func TestCoordinatorDownKeepsLastConfig(t *testing.T) {
	ca, caFile := newCA(t)
	f := newFake(t, ca)
	f.set(config("v1", "p/vm-1"), 0)
	dir := t.TempDir()
	a := newAgent(t, caFile, dir, f.srv.URL)
	ap := &applier{}
	stop := run(t, a, ap, nil)
	waitUntil(t, "v1 cached", func() bool { _, err := os.Stat(filepath.Join(dir, configFile)); return err == nil })
	stop()
	before, _ := os.ReadFile(filepath.Join(dir, configFile))

	// Restart with every coordinator unreachable or without a leader.
	f.set(config("v9"), http.StatusServiceUnavailable)
	b := newAgent(t, caFile, dir, deadURL(t), f.srv.URL)
	if last, ok := b.Last(); !ok || last.Version != "v1" || b.CachedConfigError() != nil {
		t.Fatalf("cached config at start: %+v %v %v", last, ok, b.CachedConfigError())
	}
	ap2 := &applier{}
	run(t, b, ap2, nil)
	n := len(f.got())
	waitUntil(t, "heartbeats refused", func() bool { return len(f.got()) >= n+2 })
	if v := ap2.versions(); len(v) != 1 || v[0] != "v1" || ap2.callCount() != 1 {
		t.Fatalf("applied %v in %d calls", v, ap2.callCount())
	}
	for _, r := range f.got()[n:] {
		if r.ConfigVersion != "v1" {
			t.Fatalf("reported version %q while running v1", r.ConfigVersion)
		}
	}
	after, _ := os.ReadFile(filepath.Join(dir, configFile))
	if string(before) != string(after) {
		t.Fatal("the cache changed while no coordinator answered")
	}
	// The coordinator is back with a new configuration.
	f.set(config("v2"), 0)
	waitUntil(t, "v2 applied", func() bool { v := ap2.versions(); return len(v) == 2 && v[1] == "v2" })
}

// A cache that is not a configuration of this component is reported, never
// applied; the coordinator's answer replaces it.
func TestCorruptCacheNotApplied(t *testing.T) {
	_, caFile := newCA(t)
	for name, content := range map[string]string{
		"garbage":    "{not json",
		"no version": `{"kind":"proxy","id":"px-1","tasks":[]}`,
		"other kind": `{"version":"v1","kind":"filter","id":"vc/host-1","tasks":[]}`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, configFile), []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			a := newAgent(t, caFile, dir, deadURL(t))
			if _, ok := a.Last(); ok {
				t.Fatal("a corrupt cache is offered")
			}
			err := a.CachedConfigError()
			if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, configFile)) {
				t.Fatalf("error %v does not name the file", err)
			}
			ap := &applier{}
			stop := run(t, a, ap, nil)
			time.Sleep(50 * time.Millisecond)
			stop()
			if ap.callCount() != 0 {
				t.Fatalf("applied %d times", ap.callCount())
			}
		})
	}
	// And a coordinator's answer replaces it.
	ca, caFile := newCA(t)
	f := newFake(t, ca)
	f.set(config("v3"), 0)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, configFile), []byte("{not json"), 0o600)
	a := newAgent(t, caFile, dir, f.srv.URL)
	ap := &applier{}
	run(t, a, ap, nil)
	waitUntil(t, "v3 cached", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, configFile))
		return strings.Contains(string(b), `"v3"`)
	})
	if a.CachedConfigError() != nil {
		t.Fatalf("error stays after a good config: %v", a.CachedConfigError())
	}
}

// An apply error is retried at the next heartbeat; the version reported is
// the one running until the new one applied; the cache holds only what
// applied.
func TestApplyErrorRetried(t *testing.T) {
	ca, caFile := newCA(t)
	f := newFake(t, ca)
	f.set(config("v1"), 0)
	dir := t.TempDir()
	a := newAgent(t, caFile, dir, f.srv.URL)
	ap := &applier{fail: 2}
	run(t, a, ap, nil)
	waitUntil(t, "v1 applied", func() bool { return len(ap.versions()) == 1 })
	if ap.callCount() != 3 {
		t.Fatalf("apply called %d times, want 3 (two failures)", ap.callCount())
	}
	reports := f.got()
	if reports[0].ConfigVersion != "" || reports[1].ConfigVersion != "" {
		t.Fatalf("reported a version before it applied: %q %q", reports[0].ConfigVersion, reports[1].ConfigVersion)
	}
	waitUntil(t, "v1 cached", func() bool { last, ok := a.Last(); return ok && last.Version == "v1" })
	if c, _ := readCache(t, dir); c.Version != "v1" {
		t.Fatalf("cache %q", c.Version)
	}
}

// Heartbeats move to the next coordinator on a refused connection or 503,
// keep to the one that answered, and stop at a final refusal (4xx).
func TestFailoverAcrossCoordinators(t *testing.T) {
	ca, caFile := newCA(t)
	noLeader := newFake(t, ca)
	noLeader.set(config("x"), http.StatusServiceUnavailable)
	good := newFake(t, ca)
	good.set(config("v1"), 0)
	a := newAgent(t, caFile, t.TempDir(), deadURL(t)+","+noLeader.srv.URL, good.srv.URL)
	cfg, err := a.Heartbeat(context.Background(), model.ComponentReport{Kind: model.ComponentProxy, ID: "px-1"})
	if err != nil || cfg.Version != "v1" {
		t.Fatalf("heartbeat: %v %+v", err, cfg)
	}
	if len(noLeader.got()) != 1 || len(good.got()) != 1 {
		t.Fatalf("tried %d and %d times", len(noLeader.got()), len(good.got()))
	}
	if _, err := a.Heartbeat(context.Background(), model.ComponentReport{Kind: model.ComponentProxy, ID: "px-1"}); err != nil {
		t.Fatal(err)
	}
	if len(noLeader.got()) != 1 || len(good.got()) != 2 {
		t.Fatalf("the coordinator that answered is not asked first: %d %d", len(noLeader.got()), len(good.got()))
	}
	// Everyone down: ErrNoCoordinator.
	good.set(config("x"), http.StatusServiceUnavailable)
	if _, err := a.Heartbeat(context.Background(), model.ComponentReport{}); !errors.Is(err, ErrNoCoordinator) {
		t.Fatalf("all down: %v", err)
	}
	// A final answer is not retried elsewhere and names the field.
	good.set(config("x"), http.StatusNotFound)
	before := len(noLeader.got())
	_, err = a.Heartbeat(context.Background(), model.ComponentReport{})
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusNotFound || len(noLeader.got()) != before {
		t.Fatalf("404: %v (no-leader node asked %d more times)", err, len(noLeader.got())-before)
	}
}

// TLS obtains the certificate once with the token and then loads it from
// the state directory; the key is 0600; the chain verifies against the CA.
func TestTLSCertificateObtainedOnce(t *testing.T) {
	ca, caFile := newCA(t)
	f := newFake(t, ca)
	dir := t.TempDir()
	a, err := New(Config{Coordinators: []string{f.srv.URL}, Token: "t", CACertFile: caFile, Kind: model.ComponentFilter,
		ID: "vc-1/host-21", StateDir: dir, Hosts: []string{"127.0.0.1:7200", "esx21.lab"}})
	if err != nil {
		t.Fatal(err)
	}
	cert, pool, err := a.TLS(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	leaf := cert.Leaf
	if leaf.Subject.CommonName != "vc-1-host-21" || !pki.IsComponent(leaf) || !slices.Contains(leaf.DNSNames, "esx21.lab") || len(leaf.IPAddresses) != 1 {
		t.Fatalf("certificate: %q %v %v", leaf.Subject.CommonName, leaf.DNSNames, leaf.IPAddresses)
	}
	if _, err := leaf.Verify(x509Opts(pool)); err != nil {
		t.Fatalf("chain: %v", err)
	}
	if st, err := os.Stat(filepath.Join(dir, keyFile)); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", st, err)
	}
	// A restarted component loads it: the coordinator is not asked again,
	// even unreachable.
	b, err := New(Config{Coordinators: []string{deadURL(t)}, Token: "t", CACertFile: caFile, Kind: model.ComponentFilter, ID: "vc-1/host-21", StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	again, _, err := b.TLS(context.Background())
	if err != nil || !again.Leaf.Equal(leaf) || f.certs != 1 {
		t.Fatalf("reload: %v, same %v, %d requests", err, err == nil && again.Leaf.Equal(leaf), f.certs)
	}
	// A certificate of another CA on disk is replaced.
	other, _ := newCA(t)
	l, _ := other.IssueComponent("x", []string{"127.0.0.1"}, 0)
	key, _ := pki.KeyPEM(l.Key)
	os.WriteFile(filepath.Join(dir, certFile), pki.CertPEM(l.Cert), 0o600)
	os.WriteFile(filepath.Join(dir, keyFile), key, 0o600)
	c, err := New(Config{Coordinators: []string{f.srv.URL}, Token: "t", CACertFile: caFile, Kind: model.ComponentFilter, ID: "vc-1/host-21", StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.TLS(context.Background()); err != nil || f.certs != 2 {
		t.Fatalf("foreign certificate not replaced: %v, %d requests", err, f.certs)
	}
	// A coordinator of another cluster is not trusted at all.
	_, otherFile := newCA(t)
	d, err := New(Config{Coordinators: []string{f.srv.URL}, Token: "t", CACertFile: otherFile, Kind: model.ComponentFilter, ID: "h", StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := d.TLS(context.Background()); err == nil {
		t.Fatal("a coordinator with another CA issued a certificate")
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	_, caFile := newCA(t)
	good := Config{Coordinators: []string{"https://127.0.0.1:1"}, Token: "t", CACertFile: caFile, Kind: model.ComponentProxy, ID: "p", StateDir: t.TempDir()}
	bad := filepath.Join(t.TempDir(), "bad.pem")
	os.WriteFile(bad, []byte("not a pem"), 0o644)
	for name, mut := range map[string]func(c *Config){
		"no coordinator": func(c *Config) { c.Coordinators = nil },
		"http":           func(c *Config) { c.Coordinators = []string{"http://127.0.0.1:1"} },
		"no token":       func(c *Config) { c.Token = "" },
		"no CA file":     func(c *Config) { c.CACertFile = filepath.Join(t.TempDir(), "none.pem") },
		"bad CA":         func(c *Config) { c.CACertFile = bad },
		"kind":           func(c *Config) { c.Kind = "coordinator" },
		"no ID":          func(c *Config) { c.ID = "" },
		"no state dir":   func(c *Config) { c.StateDir = "" },
	} {
		c := good
		mut(&c)
		if _, err := New(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	a, err := New(good)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Run(context.Background(), nil, nil); err == nil {
		t.Fatal("Run without callbacks")
	}
}

func TestCertName(t *testing.T) {
	for in, want := range map[string]string{"px-1": "px-1", "vc-1/host-21": "vc-1-host-21", "/x": "c-x", "esx 1.lab": "esx 1.lab", "": "c"} {
		if got := CertName(in); got != want {
			t.Errorf("CertName(%q) = %q, want %q", in, got, want)
		}
	}
}

func x509Opts(pool *x509.CertPool) x509.VerifyOptions {
	return x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
}

// A long apply (hundreds of VMs opened) does not stop the heartbeats: they
// go on reporting the running version until the new one is applied.
func TestHeartbeatsGoOnDuringALongApply(t *testing.T) {
	ca, caFile := newCA(t)
	f := newFake(t, ca)
	f.set(config("v1", "p/vm-1"), 0)
	a := newAgent(t, caFile, t.TempDir(), f.srv.URL)
	release := make(chan struct{})
	var mu sync.Mutex
	var applied []string
	apply := func(c model.ComponentConfig) error {
		if c.Version == "v2" {
			<-release
		}
		mu.Lock()
		applied = append(applied, c.Version)
		mu.Unlock()
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- a.Run(ctx, func() model.ComponentReport { return model.ComponentReport{DataAddr: "127.0.0.1:7100"} }, apply)
	}()
	defer func() {
		cancel()
		<-done
	}()
	waitUntil(t, "v1 reported", func() bool {
		g := f.got()
		return len(g) > 0 && g[len(g)-1].ConfigVersion == "v1"
	})
	f.set(config("v2", "p/vm-1", "p/vm-2"), 0)
	n := len(f.got())
	waitUntil(t, "heartbeats while v2 is being applied", func() bool { return len(f.got()) >= n+3 })
	for _, r := range f.got()[n:] {
		if r.ConfigVersion != "v1" {
			t.Fatalf("reported %q before v2 was applied", r.ConfigVersion)
		}
	}
	close(release)
	waitUntil(t, "v2 reported", func() bool {
		g := f.got()
		return g[len(g)-1].ConfigVersion == "v2"
	})
	mu.Lock()
	defer mu.Unlock()
	if len(applied) != 2 || applied[0] != "v1" || applied[1] != "v2" {
		t.Fatalf("applied %v, want [v1 v2]", applied)
	}
}

// An answer that says the running version is unchanged carries no tasks:
// it applies nothing, and one naming a version the component does not run
// is ignored rather than applied empty.
func TestUnchangedAnswersApplyNothing(t *testing.T) {
	ca, caFile := newCA(t)
	f := newFake(t, ca)
	f.set(config("v1", "p/vm-1"), 0)
	dir := t.TempDir()
	a := newAgent(t, caFile, dir, f.srv.URL)
	ap := &applier{}
	run(t, a, ap, nil)
	waitUntil(t, "v1 reported", func() bool {
		g := f.got()
		return len(g) > 0 && g[len(g)-1].ConfigVersion == "v1"
	})
	f.set(model.ComponentConfig{Version: "v1", Kind: model.ComponentProxy, ID: "px-1", Unchanged: true}, 0)
	n := len(f.got())
	waitUntil(t, "heartbeats answered unchanged", func() bool { return len(f.got()) >= n+3 })
	f.set(model.ComponentConfig{Version: "v9", Kind: model.ComponentProxy, ID: "px-1", Unchanged: true}, 0)
	n = len(f.got())
	waitUntil(t, "heartbeats answered with an unknown version", func() bool { return len(f.got()) >= n+3 })
	if v := ap.versions(); len(v) != 1 || v[0] != "v1" || ap.callCount() != 1 {
		t.Fatalf("applied %v in %d calls", v, ap.callCount())
	}
	if last, ok := a.Last(); !ok || last.Version != "v1" || len(last.Tasks) != 1 {
		t.Fatalf("cached %+v", last)
	}
	for _, r := range f.got()[n:] {
		if r.ConfigVersion != "v1" {
			t.Fatalf("reported %q while running v1", r.ConfigVersion)
		}
	}
	f.set(config("v2", "p/vm-1", "p/vm-2"), 0)
	waitUntil(t, "v2 applied", func() bool { v := ap.versions(); return len(v) == 2 && v[1] == "v2" })
}
