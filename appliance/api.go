package appliance

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/pki"
)

// maxBody bounds every request body; API objects are small.
const maxBody = 1 << 20

// forwardedHeader marks a request a follower passed to the leader, so that a
// leader that lost its role meanwhile answers 503 instead of forwarding again.
const forwardedHeader = "X-Continuum-Forwarded-By"

type authKind int

// The zero value asks for an admin token, so a route added without thought
// is protected; only /healthz opts out.
const (
	authAdmin     authKind = iota // an admin token or a cluster node certificate
	authJoin                      // a join token, an admin token or a node certificate
	authNone                      // no authentication (/healthz only)
	authComponent                 // a component, join or admin token, or any cluster certificate
)

type placement int

const (
	local      placement = iota // answered by whichever node receives it
	leaderRW                    // changes state: always on the leader
	leaderRead                  // linearizable on the leader unless ?stale=true
	// localVM: answered by the receiving node when it knows the protected
	// VM named in the path (so restore points stay readable while the
	// cluster has no quorum); a follower that does not know it yet, having
	// not applied the leader's latest entries, passes the request on.
	localVM
)

// handler answers with a status and a JSON body, or an error that is mapped
// to the error JSON.
type handler func(r *http.Request) (int, any, error)

// route is one row of the API table: the mux and the OpenAPI document are
// both built from it.
type route struct {
	Method, Path string
	Summary      string
	Request      string // schema name of the body, "" for none
	Response     string // schema name of the success body, "" for none
	Auth         authKind
	Place        placement
	Query        []string // optional boolean query parameters
	h            handler
	raw          http.Handler // instead of h, for /metrics
}

// Pattern is the http.ServeMux pattern of the route.
func (rt route) Pattern() string { return rt.Method + " " + rt.Path }

// ServerConfig configures the API server of one coordinator node.
type ServerConfig struct {
	NodeID   string
	APIAddr  string // host:port other nodes and clients reach this node at
	RaftAddr string
	Store    Store
	CA       *pki.CA         // signs certificates for joining nodes
	NodeCert tls.Certificate // presented when forwarding to the leader
	Logger   *slog.Logger
	// Registry receives the metrics; nil: a new registry.
	Registry *prometheus.Registry
	// Inventory checks a policy's vCenter references before it is
	// proposed; nil: only the references the state holds are checked.
	Inventory PolicyInventory
	// OnPolicyWrite is told the ID of every policy written through this
	// node (the reconciler's Enqueue), so nothing waits for its poll.
	OnPolicyWrite func(policyID string)
	// Filters reaches the filters' admin APIs; nil: a client built from
	// CA and NodeCert per request.
	Filters *FilterAdmin
	// Installers reaches a vCenter to install the filter on its clusters;
	// nil: filter installs answer 503.
	Installers func(ctx context.Context, vcenterID string) (FilterInstaller, error)
}

// Server is the HTTPS API of one coordinator node.
type Server struct {
	cfg    ServerConfig
	store  Store
	log    *slog.Logger
	routes []route
	mux    *http.ServeMux
	peerTr *http.Transport

	reg           *prometheus.Registry
	requests      *prometheus.CounterVec
	leaderChanges prometheus.Counter
	started       time.Time
}

// NewServer builds the API handler.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Store == nil || cfg.NodeID == "" || cfg.CA == nil {
		return nil, errors.New("new API server: store, node ID and CA are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, store: cfg.Store, log: cfg.Logger, started: time.Now()}
	cert := cfg.NodeCert
	s.peerTr = &http.Transport{
		TLSClientConfig:     pki.ClientTLS(cfg.CA.Cert, &cert),
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
		TLSHandshakeTimeout: 3 * time.Second,
		MaxIdleConnsPerHost: 8,
		IdleConnTimeout:     30 * time.Second,
	}
	s.initMetrics()
	s.routes = s.routeTable()
	s.mux = http.NewServeMux()
	for _, rt := range s.routes {
		s.mux.Handle(rt.Pattern(), s.wrap(rt))
	}
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.requests.WithLabelValues("unmatched", "404").Inc()
		writeError(w, model.NotFound("path", "route", r.Method+" "+r.URL.Path))
	})
	return s, nil
}

// Handler returns the HTTP handler of the API.
func (s *Server) Handler() http.Handler { return s.mux }

// Registry returns the Prometheus registry the server reports to.
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// Close releases connections to other nodes.
func (s *Server) Close() { s.peerTr.CloseIdleConnections() }

// LeadershipChanged counts a change of this node's leadership.
func (s *Server) LeadershipChanged(bool) { s.leaderChanges.Inc() }

var raftStates = map[string]float64{"Follower": 0, "Candidate": 1, "Leader": 2, "Shutdown": 3}

func (s *Server) initMetrics() {
	s.reg = s.cfg.Registry
	if s.reg == nil {
		s.reg = prometheus.NewRegistry()
		s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	s.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "continuum_http_requests_total", Help: "API requests by route and status code.",
	}, []string{"route", "code"})
	s.leaderChanges = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "continuum_raft_leader_changes_total", Help: "Times this node gained or lost leadership.",
	})
	state := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "continuum_raft_state", Help: "Raft state of this node: 0 follower, 1 candidate, 2 leader, 3 shutdown.",
	}, func() float64 { return raftStates[s.store.Stats()["state"]] })
	applied := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "continuum_raft_applied_index", Help: "Last raft log index applied to the state on this node.",
	}, func() float64 { return float64(s.store.AppliedIndex()) })
	isLeader := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "continuum_raft_is_leader", Help: "1 when this node is the raft leader.",
	}, func() float64 {
		if s.store.IsLeader() {
			return 1
		}
		return 0
	})
	s.reg.MustRegister(s.requests, s.leaderChanges, state, applied, isLeader)
}

// statusRecorder remembers the status code for the metrics.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (w *statusRecorder) WriteHeader(c int) {
	if w.code == 0 {
		w.code = c
	}
	w.ResponseWriter.WriteHeader(c)
}

func (w *statusRecorder) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusRecorder) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *Server) wrap(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w}
		defer func() {
			code := rec.code
			if code == 0 {
				code = http.StatusOK
			}
			s.requests.WithLabelValues(rt.Pattern(), strconv.Itoa(code)).Inc()
		}()
		if err := s.authenticate(r, rt.Auth); err != nil {
			// A follower may not have applied a token created a moment
			// ago; the leader's state decides.
			if isUnauthorized(err) && r.Header.Get("Authorization") != "" && !s.store.IsLeader() &&
				r.Header.Get(forwardedHeader) == "" {
				if _, addr := s.leaderAPI(); addr != "" {
					s.forward(rec, r)
					return
				}
			}
			writeError(rec, err)
			return
		}
		if s.mustForward(rt, r) || s.unknownVMOnFollower(rt, r) {
			s.forward(rec, r)
			return
		}
		if rt.raw != nil {
			rt.raw.ServeHTTP(rec, r)
			return
		}
		r.Body = http.MaxBytesReader(rec, r.Body, maxBody)
		status, body, err := rt.h(r)
		if err != nil {
			code := writeError(rec, err)
			if code >= 500 {
				s.log.Warn("request failed", "route", rt.Pattern(), "err", err)
			}
			return
		}
		if status == http.StatusNoContent {
			rec.WriteHeader(status)
			return
		}
		writeJSON(rec, status, body)
	})
}

// hashToken is how tokens are stored: hex SHA-256 of the secret.
func hashToken(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// tokenSecret strips the CA fingerprint prefix of "<fingerprint>.<secret>".
func tokenSecret(tok string) string {
	if i := strings.LastIndexByte(tok, '.'); i >= 0 {
		return tok[i+1:]
	}
	return tok
}

func (s *Server) authenticate(r *http.Request, kind authKind) error {
	if kind == authNone {
		return nil
	}
	// Other coordinators present their node certificate, issued by the
	// cluster CA that the TLS layer already verified. A request a follower
	// forwards also arrives with that certificate, but it is the user's
	// token that must be checked for it.
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && r.Header.Get(forwardedHeader) == "" {
		// A component's certificate (a proxy, a filter) is no
		// coordinator: it reaches only the component routes.
		if pki.IsComponent(r.TLS.VerifiedChains[0][0]) && kind != authComponent {
			return errForbidden("a component certificate may not call this")
		}
		return nil
	}
	h := r.Header.Get("Authorization")
	if !strings.HasPrefix(h, "Bearer ") {
		return errUnauthorized("missing \"Authorization: Bearer <token>\" header")
	}
	secret := tokenSecret(strings.TrimSpace(strings.TrimPrefix(h, "Bearer ")))
	if secret == "" {
		return errUnauthorized("empty bearer token")
	}
	sum := []byte(hashToken(secret))
	now := time.Now()
	var match model.TokenRole
	var known int
	s.store.Read(func(st *model.State) {
		known = len(st.Tokens)
		for _, t := range st.Tokens {
			if !t.ExpiresAt.IsZero() && now.After(t.ExpiresAt) {
				continue
			}
			// Every stored hash is compared so the time taken does not
			// depend on which token matched.
			if subtle.ConstantTimeCompare([]byte(t.SHA256), sum) == 1 {
				match = t.Role
			}
		}
	})
	switch {
	case match == model.TokenAdmin:
		return nil
	case match == model.TokenJoin && (kind == authJoin || kind == authComponent):
		return nil
	case match == model.TokenComponent && kind == authComponent:
		return nil
	case match != "":
		return errForbidden(fmt.Sprintf("a %s token may not call this", match))
	case known == 0:
		// A cluster always holds its admin token; none means this node
		// has not replayed or received the state yet.
		return errUnavailable("this node is still catching up with the cluster state; retry")
	}
	return errUnauthorized("invalid token")
}

// unknownVMOnFollower reports whether a localVM route names a VM this
// follower does not know while a leader, which may, can be reached.
func (s *Server) unknownVMOnFollower(rt route, r *http.Request) bool {
	if rt.Place != localVM || s.store.IsLeader() || r.Header.Get(forwardedHeader) != "" {
		return false
	}
	if _, _, err := s.vmTarget(r.PathValue("vm")); !errors.Is(err, model.ErrNotFound) {
		return false
	}
	_, addr := s.leaderAPI()
	return addr != ""
}

func isUnauthorized(err error) bool {
	var ae *apiError
	return errors.As(err, &ae) && ae.status == http.StatusUnauthorized
}

func isStale(r *http.Request) bool {
	v := r.URL.Query().Get("stale")
	return v == "true" || v == "1"
}

func (s *Server) mustForward(rt route, r *http.Request) bool {
	switch rt.Place {
	case leaderRW:
	case leaderRead:
		if isStale(r) {
			return false
		}
	default:
		return false
	}
	return !s.store.IsLeader()
}

// leaderAPI returns the leader's API address from the replicated
// coordinator records.
func (s *Server) leaderAPI() (id, addr string) {
	id, _ = s.store.Leader()
	if id == "" {
		return "", ""
	}
	s.store.Read(func(st *model.State) {
		if c, ok := st.Coordinators[id]; ok {
			addr = c.APIAddr
		}
	})
	return id, addr
}

func (s *Server) forward(w http.ResponseWriter, r *http.Request) {
	if by := r.Header.Get(forwardedHeader); by != "" {
		writeError(w, errUnavailable("leadership is changing; retry"))
		return
	}
	id, addr := s.leaderAPI()
	if id == "" {
		writeError(w, errUnavailable("no leader elected; retry"))
		return
	}
	if addr == "" {
		writeError(w, errUnavailable(fmt.Sprintf("leader %s has no known API address yet; retry", id)))
		return
	}
	target := &url.URL{Scheme: "https", Host: addr}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = addr
			pr.Out.Header.Set(forwardedHeader, s.cfg.NodeID)
		},
		Transport: s.peerTr,
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			writeError(w, errUnavailable(fmt.Sprintf("forward to leader %s at %s: %v", id, addr, err)))
		},
	}
	rp.ServeHTTP(w, r)
}

// newID returns prefix + 12 random hex digits.
func newID(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// newSecret returns 32 random bytes in hex.
func newSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// read runs fn on the state: linearizable through the leader unless the
// request asked for a stale read.
func (s *Server) read(r *http.Request, fn func(*model.State)) error {
	if isStale(r) {
		s.store.Read(fn)
		return nil
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	if err := s.store.ReadConsistent(ctx, fn); err != nil {
		return fmt.Errorf("consistent read: %w", err)
	}
	return nil
}
