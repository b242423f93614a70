package filter

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/continuum-cdp/continuum/filter/nbd"
	"github.com/continuum-cdp/continuum/filter/source"
	"github.com/continuum-cdp/continuum/filter/target"
	"github.com/continuum-cdp/continuum/internal/agent"
	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/pki"
	"github.com/continuum-cdp/continuum/internal/wire"
)

// managedOptions are the flags of managed mode: the coordinators give the
// configuration, the component token authenticates the filter.
type managedOptions struct {
	Coordinators []string
	Token        string
	CACert       string
	StateDir     string
	Host         string
	VCenterID    string
	Interval     time.Duration
}

// tokenEnv is read when --token is not given.
const tokenEnv = "CONTINUUM_COMPONENT_TOKEN"

func (o *managedOptions) validate(cfg FileConfig) error {
	var errs []error
	need := func(v, flag string) {
		if v == "" {
			errs = append(errs, fmt.Errorf("managed mode: %s is required", flag))
		}
	}
	need(o.Token, "--token (or "+tokenEnv+")")
	need(o.CACert, "--cacert")
	need(o.StateDir, "--state-dir")
	need(o.Host, "--host")
	need(cfg.Datastore, "--datastore")
	need(cfg.JournalDir, "--journal-dir")
	need(cfg.Listen, "--listen")
	if cfg.Role != "" {
		errs = append(errs, errors.New("managed mode: --role does not apply (one filter runs both sides)"))
	}
	if len(cfg.VMs) > 0 || cfg.Proxy != "" {
		errs = append(errs, errors.New("managed mode: --vm and --proxy come from the coordinator, not flags"))
	}
	if cfg.Plaintext {
		errs = append(errs, errors.New("managed mode: the data path is always TLS"))
	}
	if cfg.JournalMaxBytes < 0 {
		errs = append(errs, fmt.Errorf("managed mode: --journal-max-bytes must not be negative, got %d", cfg.JournalMaxBytes))
	}
	return errors.Join(errs...)
}

// managed is one host's filter run from the coordinators' configuration:
// the source side for the VMs that run on the host, the target side for
// the replicas on it.
type managed struct {
	log  *slog.Logger
	host string // --host: the host's MoRef or name
	ds   string
	src  *source.Service
	tgt  *target.Service

	dataAddr, adminAddr, nbdAddr string

	mu sync.Mutex
	// srcTasks are the running configuration's tasks with their VM here.
	srcTasks []model.TaskPath
	// notOpen says why a source task's VM is not running here.
	notOpen map[string]string
}

// runManaged is `continuum filter --coordinator ...`.
func runManaged(ctx context.Context, cmd *cobra.Command, cfg FileConfig, mo managedOptions, log *slog.Logger) error {
	if err := mo.validate(cfg); err != nil {
		return err
	}
	log = log.With("role", "filter", "host", mo.Host)
	ag, err := agent.New(agent.Config{
		Coordinators: mo.Coordinators, Token: mo.Token, CACertFile: mo.CACert,
		Kind: model.ComponentFilter, ID: mo.Host, VCenterID: mo.VCenterID, StateDir: mo.StateDir,
		Interval: mo.Interval, Logger: log,
	})
	if err != nil {
		return fmt.Errorf("filter: %w", err)
	}
	if err := ag.CachedConfigError(); err != nil {
		log.Warn("cached configuration not usable; waiting for a coordinator", "err", err)
	}
	certs, pool, err := firstCert(ctx, ag, log)
	if err != nil {
		return err
	}
	if certs == nil {
		return nil // stopped before a certificate came
	}
	dataTLS := dataPathTLS(certs, pool)

	nodeID := cfg.NodeID
	if nodeID == "" {
		nodeID = "filter-" + mo.Host
	}
	m := &managed{log: log, host: mo.Host, ds: cfg.Datastore, notOpen: map[string]string{}}
	nbdSrv := nbd.NewServer(log.With("component", "nbd"))
	defer nbdSrv.Close()
	srcReg := prometheus.NewRegistry()
	m.src, err = source.New(source.Options{
		NodeID: nodeID, Datastore: cfg.Datastore, BufferBytes: cfg.BufferBytes, BlockSize: cfg.BlockSize,
		Grace: cfg.Grace.D(), BackpressureWait: cfg.BackpressureWait.D(), Logger: log.With("side", "source"), Exports: nbdSrv, Exclusive: true,
		BufferedIO: cfg.BufferedIO,
		DialProxy: func(ctx context.Context, addr string) (net.Conn, error) {
			d := &net.Dialer{KeepAlive: 15 * time.Second}
			return wire.DialTLS(ctx, d, addr, dataTLS)
		},
	})
	if err != nil {
		return err
	}
	defer m.src.Close()
	if err := m.src.Register(srcReg); err != nil {
		return err
	}
	for _, c := range nbdSrv.Collectors() {
		// the target side's NBD server has the same metrics
		if err := prometheus.WrapRegistererWith(prometheus.Labels{"side": "source"}, srcReg).Register(c); err != nil {
			return fmt.Errorf("register nbd metrics: %w", err)
		}
	}
	nl, err := net.Listen("tcp", cfg.NBDAddr)
	if err != nil {
		return fmt.Errorf("listen nbd %s: %w", cfg.NBDAddr, err)
	}
	defer nl.Close()
	m.nbdAddr = nl.Addr().String()

	tc := target.Config{
		NodeID: nodeID, JournalDir: cfg.JournalDir, ListenAddr: cfg.Listen, TLS: dataTLS,
		NBDAddr: net.JoinHostPort(hostOf(m.nbdAddr), "0"), ExportDir: cfg.ExportDir,
		ShortTerm: cfg.ShortTerm.D(), LongTerm: cfg.LongTerm.D(), Logger: log.With("side", "target"),
	}
	tc.Journal.NoSync = cfg.NoSync
	tc.Journal.BufferedIO = cfg.BufferedIO
	tc.Journal.MaxBytes = cfg.JournalMaxBytes
	m.tgt, err = target.New(tc)
	if err != nil {
		return err
	}
	m.dataAddr = m.tgt.Addr()
	// no replica is accepted before a configuration names it
	m.tgt.SetVMs(nil)
	errc := make(chan error, 4)
	var wg sync.WaitGroup
	runCtx, stop := context.WithCancel(ctx)
	defer func() {
		stop()
		nl.Close()
		m.tgt.Close()
		wg.Wait()
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := m.tgt.Run(runCtx); err != nil {
			errc <- fmt.Errorf("target side: %w", err)
		}
	}()

	if cfg.AdminAddr != "" {
		al, err := net.Listen("tcp", cfg.AdminAddr)
		if err != nil {
			return fmt.Errorf("listen admin %s: %w", cfg.AdminAddr, err)
		}
		m.adminAddr = al.Addr().String()
		hs := &http.Server{Handler: m.adminHandler(prometheus.Gatherers{m.tgt.Registry(), srcReg}),
			ReadHeaderTimeout: 10 * time.Second, TLSConfig: adminTLS(certs, pool),
			ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
		defer hs.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := hs.ServeTLS(al, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("admin api: %w", err)
			}
		}()
	}
	if err := m.src.Start(runCtx); err != nil {
		return err
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := nbdSrv.Serve(nl); err != nil && runCtx.Err() == nil {
			errc <- fmt.Errorf("nbd server: %w", err)
		}
	}()
	fmt.Fprintf(cmd.OutOrStdout(), "filter ready host=%s data=%s admin=%s nbd=%s\n", mo.Host, m.dataAddr, m.adminAddr, m.nbdAddr)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := ag.Run(runCtx, m.report, m.apply); err != nil {
			errc <- fmt.Errorf("coordinator link: %w", err)
		}
	}()
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return err
	}
}

// firstCert gets the filter's certificate: from the state directory, else
// from a coordinator, retrying until one answers or ctx ends (then nil).
func firstCert(ctx context.Context, ag *agent.Agent, log *slog.Logger) (*certSource, *x509.CertPool, error) {
	wait := time.Second
	for {
		cert, pool, err := ag.TLS(ctx)
		if err == nil {
			return &certSource{ag: ag, last: &cert}, pool, nil
		}
		var apiErr *agent.APIError
		if errors.As(err, &apiErr) && apiErr.Status >= 400 && apiErr.Status < 500 && apiErr.Status != http.StatusTooManyRequests {
			// a refused token or request does not get better by waiting
			return nil, nil, fmt.Errorf("filter certificate: %w", err)
		}
		log.Warn("no certificate yet; retrying", "retry_in", wait, "err", err)
		select {
		case <-ctx.Done():
			return nil, nil, nil
		case <-time.After(wait):
		}
		wait = min(2*wait, 15*time.Second)
	}
}

// certSource hands the agent's certificate to TLS handshakes, keeping the
// last good one while a renewal cannot reach a coordinator.
type certSource struct {
	ag   *agent.Agent
	mu   sync.Mutex
	last *tls.Certificate
}

func (c *certSource) get() (*tls.Certificate, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cert, _, err := c.ag.TLS(ctx)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil {
		c.last = &cert
	}
	if c.last == nil {
		return nil, fmt.Errorf("filter certificate: %w", err)
	}
	return c.last, nil
}

// dataPathTLS is mutual TLS for the data hops (source proxy, target
// proxy): both ends present a certificate chaining to the cluster CA. Only
// the chain is checked: peers are reached by address.
func dataPathTLS(certs *certSource, pool *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// One session per VM: resuming skips the certificates' signatures
		// and chain checks of every handshake after the first to a peer.
		ClientSessionCache:   tls.NewLRUClientSessionCache(0),
		GetCertificate:       func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return certs.get() },
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return certs.get() },
		ClientAuth:           tls.RequireAnyClientCert,
		InsecureSkipVerify:   true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return pki.VerifyChain(raw, pool)
		},
	}
}

// adminTLS serves the admin API with the filter's certificate; a client
// certificate is optional at the TLS level (Prometheus and health probes
// have none) and checked per route by the handler.
func adminTLS(certs *certSource, pool *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return certs.get() },
		ClientCAs:      pool,
		ClientAuth:     tls.VerifyClientCertIfGiven,
	}
}

// adminHandler serves /healthz and /metrics to anyone who can reach the
// listener (they reveal no data and Prometheus scrapes without a client
// certificate); everything else (status, restore points, images, exports)
// needs a client certificate of the cluster CA that is not a component's:
// a coordinator node or an operator's.
func (m *managed) adminHandler(gather prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.Handle("GET /metrics", promhttp.HandlerFor(gather, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(m.src.Status())
	})
	mux.Handle("/", m.tgt.Handler())
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" || r.URL.Path == "/metrics" {
			mux.ServeHTTP(w, r)
			return
		}
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
			adminRefuse(w, http.StatusUnauthorized, model.CodeUnauthorized, "a client certificate of the cluster CA is required")
			return
		}
		if pki.IsComponent(r.TLS.VerifiedChains[0][0]) {
			adminRefuse(w, http.StatusForbidden, model.CodeForbidden, "a component certificate may not use the filter's admin API")
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func adminRefuse(w http.ResponseWriter, status int, code, msg string) {
	var e target.APIError
	e.Error.Code, e.Error.Message = code, msg
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(e)
}

// isSelf says whether a task's host reference (a MoRef) is this filter's
// host: the configuration's ID is "<vcenter-id>/<moref>", and --host may
// name it either way.
func isSelf(ref, cfgID, host string) bool {
	if ref == "" {
		return false
	}
	if ref == host || ref == cfgID {
		return true
	}
	if i := strings.LastIndex(cfgID, "/"); i >= 0 && cfgID[i+1:] == ref {
		return true
	}
	return false
}

// vmConfig is the source side of a task. Disk files are named by key, so a
// disk keeps its file whatever the order or set of the VM's other disks.
func vmConfig(t model.TaskPath, datastore string) source.VMConfig {
	c := source.VMConfig{Name: t.VM, Proxy: t.SourceProxy}
	disks := slices.Clone(t.Disks)
	slices.SortFunc(disks, func(a, b model.DiskMap) int { return int(a.Key) - int(b.Key) })
	for _, d := range disks {
		c.Disks = append(c.Disks, source.DiskConfig{Key: d.Key, Capacity: d.CapacityBytes,
			File: filepath.Join(datastore, t.VM, DiskFileName(t.VM, d.Key))})
	}
	return c
}

// DiskFileName is the flat file of a disk of a managed filter's VM.
func DiskFileName(vm string, key int32) string { return fmt.Sprintf("%s-%d-flat.vmdk", vm, key) }

// apply runs a configuration: the source side opens, moves or closes VMs,
// the target side takes the replicas (no other VM opens a session) and
// their retention windows. A task that cannot run
// here is left out and reported; the others run. An error makes the agent
// apply the configuration again at the next heartbeat.
func (m *managed) apply(cfg model.ComponentConfig) error {
	var vms []source.VMConfig
	var srcTasks []model.TaskPath
	notOpen := map[string]string{}
	windows := map[string]target.Retention{}
	seen := map[string]string{}
	for _, t := range cfg.Tasks {
		if isSelf(t.SourceHost, cfg.ID, m.host) {
			srcTasks = append(srcTasks, t)
			c := vmConfig(t, m.ds)
			switch err := m.src.CheckVM(c); {
			case err != nil:
				notOpen[t.TaskID] = "not protected by this filter: " + err.Error()
			case seen[t.VM] != "":
				notOpen[t.TaskID] = fmt.Sprintf("vm %s is already protected by task %s on this host", t.VM, seen[t.VM])
			default:
				seen[t.VM] = t.TaskID
				vms = append(vms, c)
			}
		}
		if isSelf(t.TargetHost, cfg.ID, m.host) && t.VM != "" {
			windows[t.VM] = target.Retention{ShortTerm: t.ShortTermRetention.D(), LongTerm: t.LongTermRetention.D()}
		}
	}
	srcErr := m.src.Apply(vms)
	open := map[string]bool{}
	for _, n := range m.src.VMs() {
		open[n] = true
	}
	for _, t := range srcTasks {
		if _, bad := notOpen[t.TaskID]; !bad && !open[t.VM] {
			notOpen[t.TaskID] = fmt.Sprintf("vm %s is not open on this host: %v", t.VM, errorOf(srcErr, t.VM))
		}
	}
	m.mu.Lock()
	m.srcTasks, m.notOpen = srcTasks, notOpen
	m.mu.Unlock()
	replicas := make([]string, 0, len(windows))
	for vm := range windows {
		replicas = append(replicas, vm)
	}
	m.tgt.SetVMs(replicas)
	tgtErr := m.tgt.SetRetention(windows)
	if err := errors.Join(srcErr, tgtErr); err != nil {
		return fmt.Errorf("apply configuration %s: %w", cfg.Version, err)
	}
	return nil
}

// errorOf picks, of a joined error, the parts that name vm.
func errorOf(err error, vm string) error {
	j, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return err
	}
	var mine []error
	for _, e := range j.Unwrap() {
		if strings.Contains(e.Error(), vm) {
			mine = append(mine, e)
		}
	}
	if len(mine) == 0 {
		return err
	}
	return errors.Join(mine...)
}

// report is the heartbeat: the filter's addresses and the state of every
// VM whose source side runs here.
func (m *managed) report() model.ComponentReport {
	rep := model.ComponentReport{DataAddr: m.dataAddr, AdminAddr: m.adminAddr, NBDAddr: m.nbdAddr}
	byVM := map[string]source.VMStatus{}
	for _, st := range m.src.Status() {
		byVM[st.VM] = st
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, t := range m.srcTasks {
		r := model.VMReport{TaskID: t.TaskID, VM: t.VM, PathVersion: model.TaskPathVersion(t)}
		if why, ok := m.notOpen[t.TaskID]; ok {
			// its writes are not tracked here: as good as CBT mode
			r.Status, r.Reason = model.StatusCBT, why
		} else if st, ok := byVM[t.VM]; ok {
			r.Status, r.Reason = st.Status, st.Reason
			r.SyncDoneBytes, r.SyncTotalBytes = st.SyncDoneBytes, st.SyncTotalBytes
		} else {
			continue
		}
		rep.VMs = append(rep.VMs, r)
	}
	return rep
}

func hostOf(addr string) string {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	return h
}
