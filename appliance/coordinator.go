package appliance

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/continuum-cdp/continuum/appliance/controllers"
	"github.com/continuum-cdp/continuum/client"
	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/pki"
	"github.com/continuum-cdp/continuum/raftstore"
)

// Files of a coordinator's data directory (raftstore adds its own).
const (
	FileCA         = "ca.pem"
	FileCAKey      = "ca-key.pem"
	FileNodeCert   = "node.pem"
	FileNodeKey    = "node-key.pem"
	FileAdminToken = "admin.token"
	FileJoinToken  = "join.token"
	// fileJoinPending exists between receiving the join material and
	// becoming a voter, so an interrupted join is finished on restart.
	fileJoinPending = "join.pending"
)

// CoordinatorOptions are the flags of "continuum coordinator".
type CoordinatorOptions struct {
	NodeID    string
	DataDir   string
	APIAddr   string
	RaftAddr  string
	Bootstrap bool
	Join      string // URL of any member's API
	JoinToken string // "<ca-sha256>.<secret>"
	Logger    *slog.Logger
	// Ready, when set, is closed once the API is serving.
	Ready chan<- struct{}
	// Controllers run on the leader only, besides the policy reconciler
	// and the long-term point scheduler that every node has.
	Controllers []Controller
	// HeartbeatTimeout: a filter or proxy not heard from for longer is
	// dead (default 15s).
	HeartbeatTimeout time.Duration
}

func (o *CoordinatorOptions) validate() error {
	if err := validNodeID(o.NodeID); err != nil {
		return fmt.Errorf("--node-id: %w", err)
	}
	if o.DataDir == "" {
		return errors.New("--data-dir is required")
	}
	if err := checkHostPort("api_addr", o.APIAddr); err != nil {
		return fmt.Errorf("--api-addr: %w", err)
	}
	if err := checkHostPort("raft_addr", o.RaftAddr); err != nil {
		return fmt.Errorf("--raft-addr: %w", err)
	}
	if o.Bootstrap && o.Join != "" {
		return errors.New("--bootstrap and --join are exclusive")
	}
	if o.Join != "" && o.JoinToken == "" {
		return errors.New("--join needs --join-token")
	}
	if o.Join != "" {
		if _, _, err := parseJoinToken(o.JoinToken); err != nil {
			return fmt.Errorf("--join-token: %w", err)
		}
	}
	return nil
}

// parseJoinToken splits "<sha256-hex of CA DER>.<secret>".
func parseJoinToken(tok string) (fingerprint, secret string, err error) {
	fp, sec, ok := strings.Cut(strings.TrimSpace(tok), ".")
	if !ok || sec == "" {
		return "", "", errors.New("a join token looks like <ca-sha256>.<secret>")
	}
	if b, err := hex.DecodeString(fp); err != nil || len(b) != 32 {
		return "", "", errors.New("the part before '.' must be the 64-hex-digit SHA-256 of the cluster CA")
	}
	return strings.ToLower(fp), sec, nil
}

func exists(p string) (bool, error) {
	_, err := os.Stat(p)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return false, err
}

// nodeMaterial is what a node needs from its data directory to run.
type nodeMaterial struct {
	ca   *pki.CA
	cert tls.Certificate
}

func loadMaterial(dir string) (*nodeMaterial, error) {
	read := func(name string) ([]byte, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", name, err)
		}
		return b, nil
	}
	caPEM, err := read(FileCA)
	if err != nil {
		return nil, err
	}
	caKey, err := read(FileCAKey)
	if err != nil {
		return nil, err
	}
	ca, err := pki.ParseCA(caPEM, caKey)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	certPEM, err := read(FileNodeCert)
	if err != nil {
		return nil, err
	}
	keyPEM, err := read(FileNodeKey)
	if err != nil {
		return nil, err
	}
	leafCert, err := pki.ParseCertPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", FileNodeCert, err)
	}
	leafKey, err := pki.ParseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", FileNodeKey, err)
	}
	if _, err := leafCert.Verify(x509Opts(ca)); err != nil {
		return nil, fmt.Errorf("%s is not signed by %s: %w", FileNodeCert, FileCA, err)
	}
	leaf := &pki.Leaf{Cert: leafCert, Key: leafKey}
	return &nodeMaterial{ca: ca, cert: leaf.TLSCertificate(ca.Cert)}, nil
}

// writeMaterial stores the CA and node certificate; keys are 0600.
func writeMaterial(dir string, caPEM, caKeyPEM, certPEM, keyPEM []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	for _, f := range []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{FileCAKey, caKeyPEM, 0o600},
		{FileNodeKey, keyPEM, 0o600},
		{FileNodeCert, certPEM, 0o600},
		// ca.pem last: its presence marks the directory as initialised.
		{FileCA, caPEM, 0o644},
	} {
		if err := pki.WriteFile(filepath.Join(dir, f.name), f.data, f.perm); err != nil {
			return err
		}
	}
	return nil
}

func certHosts(addrs ...string) []string {
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	if h, err := os.Hostname(); err == nil {
		hosts = append(hosts, h)
	}
	for _, a := range addrs {
		if h, _, err := net.SplitHostPort(a); err == nil && h != "" && h != "0.0.0.0" && h != "::" {
			hosts = append(hosts, h)
		}
	}
	return hosts
}

// initBootstrap creates the CA and the node certificate of the first node.
func initBootstrap(o *CoordinatorOptions) (*nodeMaterial, error) {
	ca, err := pki.NewCA("continuum-cluster-ca")
	if err != nil {
		return nil, err
	}
	leaf, err := ca.Issue(o.NodeID, certHosts(o.APIAddr, o.RaftAddr), pki.LeafValidity)
	if err != nil {
		return nil, err
	}
	caKey, err := pki.KeyPEM(ca.Key)
	if err != nil {
		return nil, err
	}
	key, err := pki.KeyPEM(leaf.Key)
	if err != nil {
		return nil, err
	}
	if err := writeMaterial(o.DataDir, pki.CertPEM(ca.Cert), caKey, pki.CertPEM(leaf.Cert), key); err != nil {
		return nil, fmt.Errorf("bootstrap %s: %w", o.DataDir, err)
	}
	return &nodeMaterial{ca: ca, cert: leaf.TLSCertificate(ca.Cert)}, nil
}

// fetchJoin asks a member for the cluster's material. The server is trusted
// only if its CA matches the token's fingerprint.
func fetchJoin(ctx context.Context, joinURL, token string, req client.JoinRequest) (*client.JoinResponse, error) {
	fp, _, err := parseJoinToken(token)
	if err != nil {
		return nil, err
	}
	hc := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{TLSClientConfig: pki.PinnedTLS(fp)}}
	defer hc.CloseIdleConnections()
	body, _ := json.Marshal(req)
	u := strings.TrimRight(joinURL, "/") + "/api/v1/cluster/join"
	deadline := time.Now().Add(30 * time.Second)
	for {
		hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
		if err != nil {
			return nil, fmt.Errorf("join via %s: %w", joinURL, err)
		}
		hreq.Header.Set("Authorization", "Bearer "+token)
		hreq.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(hreq)
		if err != nil {
			// Only an unreachable node is worth waiting for; a TLS
			// pinning failure is final.
			if errors.Is(err, syscall.ECONNREFUSED) && time.Now().Before(deadline) {
				select {
				case <-ctx.Done():
					return nil, ctx.Err()
				case <-time.After(500 * time.Millisecond):
				}
				continue
			}
			return nil, fmt.Errorf("join via %s: %w", joinURL, err)
		}
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			var eb client.ErrorBody
			_ = json.Unmarshal(data, &eb)
			return nil, fmt.Errorf("join via %s refused: %s: %s", joinURL, resp.Status, eb.Error.Message)
		}
		var jr client.JoinResponse
		if err := json.Unmarshal(data, &jr); err != nil {
			return nil, fmt.Errorf("join via %s: decode answer: %w", joinURL, err)
		}
		caCert, err := pki.ParseCertPEM([]byte(jr.CACert))
		if err != nil {
			return nil, fmt.Errorf("join via %s: %w", joinURL, err)
		}
		if pki.Fingerprint(caCert.Raw) != fp {
			return nil, fmt.Errorf("join via %s: returned CA does not match the join token", joinURL)
		}
		return &jr, nil
	}
}

// Coordinator is a running coordinator node.
type Coordinator struct {
	opts   CoordinatorOptions
	log    *slog.Logger
	node   *raftstore.Node
	srv    *Server
	http   *http.Server
	runner *LeaderRunner
	mat    *nodeMaterial
}

// RunCoordinator starts a coordinator node and serves until ctx ends, then
// hands leadership over (when leader) and shuts down.
func RunCoordinator(ctx context.Context, o CoordinatorOptions) error {
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if err := o.validate(); err != nil {
		return err
	}
	log := o.Logger.With("node", o.NodeID)
	initialised, err := exists(filepath.Join(o.DataDir, FileCA))
	if err != nil {
		return fmt.Errorf("inspect data directory %s: %w", o.DataDir, err)
	}
	var (
		mat       *nodeMaterial
		clusterID string
		key       []byte
		joined    bool
	)
	switch {
	case initialised:
		pending, err := exists(filepath.Join(o.DataDir, fileJoinPending))
		if err != nil {
			return fmt.Errorf("inspect data directory %s: %w", o.DataDir, err)
		}
		if pending && o.Join == "" {
			return fmt.Errorf("%s: an earlier join did not finish; start again with --join URL --join-token TOKEN", o.DataDir)
		}
		joined = pending
		// A node that ran before starts from its directory; bootstrap and
		// join flags are ignored so the same command line can restart it.
		if mat, err = loadMaterial(o.DataDir); err != nil {
			return fmt.Errorf("start from %s: %w", o.DataDir, err)
		}
	case o.Bootstrap:
		if mat, err = initBootstrap(&o); err != nil {
			return err
		}
		log.Info("created cluster CA", "fingerprint", pki.Fingerprint(mat.ca.Cert.Raw))
	case o.Join != "":
		jr, err := fetchJoin(ctx, o.Join, o.JoinToken, client.JoinRequest{NodeID: o.NodeID, APIAddr: o.APIAddr, RaftAddr: o.RaftAddr})
		if err != nil {
			return err
		}
		if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
			return fmt.Errorf("join: create data directory: %w", err)
		}
		if err := pki.WriteFile(filepath.Join(o.DataDir, fileJoinPending), []byte(o.Join+"\n"), 0o600); err != nil {
			return fmt.Errorf("join: %w", err)
		}
		if err := writeMaterial(o.DataDir, []byte(jr.CACert), []byte(jr.CAKey), []byte(jr.NodeCert), []byte(jr.NodeKey)); err != nil {
			return fmt.Errorf("join: %w", err)
		}
		if mat, err = loadMaterial(o.DataDir); err != nil {
			return fmt.Errorf("join: %w", err)
		}
		clusterID, key, joined = jr.ClusterID, jr.ClusterKey, true
	default:
		return fmt.Errorf("%s holds no coordinator state: start the first node with --bootstrap or join one with --join URL --join-token TOKEN", o.DataDir)
	}

	node, err := raftstore.Open(raftstore.Config{
		NodeID: o.NodeID, DataDir: o.DataDir, RaftAddr: o.RaftAddr,
		TLS:       pki.RaftServerTLS(mat.ca.Cert, mat.cert),
		Bootstrap: o.Bootstrap, ClusterID: clusterID, ClusterKey: key,
		Logger: o.Logger,
	})
	if err != nil {
		return fmt.Errorf("start coordinator %s: %w", o.NodeID, err)
	}
	c := &Coordinator{opts: o, log: log, node: node, mat: mat}
	defer node.Close()
	return c.serve(ctx, joined)
}

func (c *Coordinator) serve(ctx context.Context, joined bool) error {
	o := c.opts
	vcenters := &controllers.Connector{Store: c.node, Unseal: c.node.Unseal, Dir: o.DataDir, Logger: c.log}
	defer vcenters.Close(context.Background())
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	loops, rec, filters, err := c.controllers(reg, vcenters)
	if err != nil {
		return err
	}
	defer filters.Close()
	srv, err := NewServer(ServerConfig{NodeID: o.NodeID, APIAddr: o.APIAddr, RaftAddr: o.RaftAddr, Store: c.node,
		CA: c.mat.ca, NodeCert: c.mat.cert, Logger: c.log, Registry: reg, OnPolicyWrite: rec.Enqueue, Filters: filters,
		Installers: func(ctx context.Context, id string) (FilterInstaller, error) {
			inv, err := vcenters.Get(ctx, id)
			if err != nil {
				return nil, err
			}
			fi, ok := inv.(FilterInstaller)
			if !ok {
				return nil, fmt.Errorf("vCenter %s: the connection cannot install filters", id)
			}
			return fi, nil
		},
		Inventory: &VCenterInventory{Get: func(ctx context.Context, id string) (InventorySource, error) {
			return vcenters.Get(ctx, id)
		}, Logger: c.log}})
	if err != nil {
		return err
	}
	defer srv.Close()
	c.srv = srv
	ln, err := net.Listen("tcp", o.APIAddr)
	if err != nil {
		return fmt.Errorf("listen for the API on %s: %w", o.APIAddr, err)
	}
	c.http = &http.Server{Handler: srv.Handler(), TLSConfig: pki.APIServerTLS(c.mat.ca.Cert, c.mat.cert),
		ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(c.log.Handler(), slog.LevelDebug)}
	serveErr := make(chan error, 1)
	go func() { serveErr <- c.http.ServeTLS(ln, "", "") }()

	runCtx, stopRunner := context.WithCancel(context.Background())
	runnerDone := make(chan struct{})
	c.runner = NewLeaderRunner(c.node.LeadershipChanges(), c.node, c.log)
	c.runner.OnChange = srv.LeadershipChanged
	c.runner.Register(Controller{Name: "coordinator-record", Run: c.keepRecord})
	for _, l := range loops {
		c.runner.Register(Controller{Name: l.Name, Run: l.Run})
	}
	for _, ctl := range o.Controllers {
		c.runner.Register(ctl)
	}
	go func() { c.runner.Run(runCtx); close(runnerDone) }()
	defer func() { stopRunner(); <-runnerDone }()

	c.catchUp(ctx, 15*time.Second)
	if o.Bootstrap {
		if err := c.initTokens(ctx); err != nil {
			c.shutdown()
			return err
		}
	}
	if joined {
		if err := c.addSelf(ctx); err != nil {
			c.shutdown()
			return err
		}
		if err := os.Remove(filepath.Join(o.DataDir, fileJoinPending)); err != nil {
			c.log.Warn("remove join marker", "err", err)
		}
	}
	c.log.Info("coordinator ready", "api", "https://"+o.APIAddr, "raft", o.RaftAddr)
	if o.Ready != nil {
		close(o.Ready)
	}
	select {
	case <-ctx.Done():
		c.log.Info("shutting down")
		c.shutdown()
		return nil
	case err := <-serveErr:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("serve API on %s: %w", o.APIAddr, err)
	}
}

// controllers builds the leader-only loops: the policy reconciler and the
// long-term point scheduler, reporting to reg.
func (c *Coordinator) controllers(reg prometheus.Registerer, vcenters *controllers.Connector) ([]controllers.Loop, *controllers.PolicyReconciler, *FilterAdmin, error) {
	o := c.opts
	m, err := controllers.NewMetrics(reg)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("register controller metrics: %w", err)
	}
	filters := NewFilterAdmin(c.mat.ca.Cert, c.mat.cert)
	comps := &Components{Store: c.node, Filters: filters, HeartbeatTimeout: o.HeartbeatTimeout}
	rec, err := controllers.NewPolicyReconciler(controllers.Config{
		Store: c.node, Inventories: vcenters.Get, Components: comps, Metrics: m, Logger: c.log,
		KeyFor: controllers.DeriveKeys(c.node.ClusterKey()), HeartbeatTimeout: o.HeartbeatTimeout,
	})
	if err != nil {
		filters.Close()
		return nil, nil, nil, err
	}
	sched, err := controllers.NewScheduler(controllers.SchedulerConfig{Store: c.node, Components: comps, Metrics: m, Logger: c.log})
	if err != nil {
		filters.Close()
		return nil, nil, nil, err
	}
	return controllers.Loops(rec, sched), rec, filters, nil
}

// catchUp waits (bounded) until the entries in the local log are applied,
// so a restarted node answers from the state it had rather than an empty
// one.
func (c *Coordinator) catchUp(ctx context.Context, d time.Duration) {
	last, _ := strconv.ParseUint(c.node.Stats()["last_log_index"], 10, 64)
	deadline := time.Now().Add(d)
	for c.node.AppliedIndex() < last && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
	if applied := c.node.AppliedIndex(); applied < last {
		c.log.Warn("serving before the local log is applied", "applied", applied, "last", last)
	}
}

// shutdown hands leadership over so the cluster does not wait for an
// election timeout, then stops serving.
func (c *Coordinator) shutdown() {
	if c.node.IsLeader() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := c.node.TransferLeadership(ctx, ""); err != nil {
			c.log.Warn("transfer leadership before shutdown", "err", err)
		}
		cancel()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = c.http.Shutdown(ctx)
}

func (c *Coordinator) waitLeader(ctx context.Context, d time.Duration) error {
	deadline := time.Now().Add(d)
	for !c.node.IsLeader() {
		if time.Now().After(deadline) {
			return errors.New("this node did not become leader")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// initTokens creates the admin and join tokens on first bootstrap. A
// restarted node finds admin.token and leaves everything as it is.
func (c *Coordinator) initTokens(ctx context.Context) error {
	dir := c.opts.DataDir
	have, err := exists(filepath.Join(dir, FileAdminToken))
	if err != nil || have {
		return err
	}
	if err := c.waitLeader(ctx, 30*time.Second); err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	actx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := c.node.Barrier(actx); err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	if _, err := c.node.Apply(actx, raftstore.PutCoordinator{Coordinator: model.Coordinator{ID: c.opts.NodeID, RaftAddr: c.opts.RaftAddr, APIAddr: c.opts.APIAddr}}); err != nil {
		return fmt.Errorf("bootstrap: record coordinator: %w", err)
	}
	admin, join := newSecret(), newSecret()
	now := time.Now().UTC()
	for _, t := range []model.Token{
		{ID: newID("tok"), Role: model.TokenAdmin, SHA256: hashToken(admin), CreatedAt: now},
		{ID: newID("tok"), Role: model.TokenJoin, SHA256: hashToken(join), CreatedAt: now},
	} {
		if _, err := c.node.Apply(actx, raftstore.PutToken{Token: t}); err != nil {
			return fmt.Errorf("bootstrap: store %s token: %w", t.Role, err)
		}
	}
	fp := pki.Fingerprint(c.mat.ca.Cert.Raw)
	if err := pki.WriteFile(filepath.Join(dir, FileJoinToken), []byte(fp+"."+join+"\n"), 0o600); err != nil {
		return err
	}
	// admin.token last: its presence means bootstrap finished.
	if err := pki.WriteFile(filepath.Join(dir, FileAdminToken), []byte(admin+"\n"), 0o600); err != nil {
		return err
	}
	c.log.Info("bootstrapped cluster", "cluster_id", c.node.ClusterID(), "admin_token_file", filepath.Join(dir, FileAdminToken))
	return nil
}

// addSelf asks the cluster (through the join URL) to add this node as a
// voter; adding an existing member with the same address is a no-op.
func (c *Coordinator) addSelf(ctx context.Context) error {
	cl, err := client.New(c.opts.Join, c.opts.JoinToken, pki.CertPEM(c.mat.ca.Cert))
	if err != nil {
		return err
	}
	defer cl.Close()
	cl.RetryFor = 60 * time.Second
	actx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	if err := cl.AddMember(actx, client.AddMemberRequest{ID: c.opts.NodeID, RaftAddr: c.opts.RaftAddr, APIAddr: c.opts.APIAddr}); err != nil {
		return fmt.Errorf("join: become a voter via %s: %w", c.opts.Join, err)
	}
	c.log.Info("joined cluster", "cluster_id", c.node.ClusterID(), "via", c.opts.Join)
	return nil
}

// keepRecord makes sure the leader's own address record is current, so
// followers can forward to it even after its addresses changed.
func (c *Coordinator) keepRecord(ctx context.Context) error {
	want := model.Coordinator{ID: c.opts.NodeID, RaftAddr: c.opts.RaftAddr, APIAddr: c.opts.APIAddr}
	var cur *model.Coordinator
	c.node.Read(func(st *model.State) {
		if r, ok := st.Coordinators[want.ID]; ok {
			v := *r
			cur = &v
		}
	})
	if cur == nil || *cur != want {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := c.node.Apply(actx, raftstore.PutCoordinator{Coordinator: want})
		cancel()
		if err != nil {
			return fmt.Errorf("record own addresses: %w", err)
		}
	}
	<-ctx.Done()
	return nil
}

func newCoordinatorCommand() *cobra.Command {
	var o CoordinatorOptions
	var logLevel string
	cmd := &cobra.Command{
		Use:   "coordinator",
		Short: "Run a coordinator node (REST API, raft member, leader-only controllers)",
		Long: `Run a coordinator node.

The first node is started with --bootstrap: it creates the cluster CA and writes
DATA/ca.pem, DATA/admin.token and DATA/join.token. Further nodes join with
--join https://MEMBER:PORT --join-token "$(cat DATA/join.token)". A node that ran
before restarts from its data directory with the same command line.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			o.Logger = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: lvl}))
			return RunCoordinator(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.NodeID, "node-id", "", "unique ID of this node (required)")
	f.StringVar(&o.DataDir, "data-dir", "", "directory for certificates, tokens and raft state (required)")
	f.StringVar(&o.APIAddr, "api-addr", "", "HOST:PORT of the HTTPS API (required)")
	f.StringVar(&o.RaftAddr, "raft-addr", "", "HOST:PORT of the raft transport (required)")
	f.BoolVar(&o.Bootstrap, "bootstrap", false, "create a new cluster with this node as its first member")
	f.StringVar(&o.Join, "join", "", "API URL of a member to join through")
	f.StringVar(&o.JoinToken, "join-token", "", "join token (<ca-sha256>.<secret>) from a member's join.token or 'cluster token create --role join'")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.DurationVar(&o.HeartbeatTimeout, "heartbeat-timeout", 15*time.Second, "a filter or proxy not heard from for this long is dead")
	return cmd
}

func x509Opts(ca *pki.CA) x509.VerifyOptions {
	return x509.VerifyOptions{Roots: pki.Pool(ca.Cert), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
}
