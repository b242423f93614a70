package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The observability tests run a real Prometheus server against real
// coordinator and data-path processes on loopback, check that the example
// deployment files under deploy/ are valid, and that the Grafana dashboard
// only queries metrics the processes expose.

const (
	prometheusBin = "/usr/bin/prometheus"
	promtoolBin   = "/usr/bin/promtool"
	deployDir     = "../deploy"
	dashboardPath = "../deploy/grafana/continuum.json"
)

// needPrometheus skips when the Prometheus package is absent on a developer
// machine; under CI its absence is a failure (scripts/test-deps.sh installs it).
func needPrometheus(t *testing.T, bin string) {
	t.Helper()
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CI") == "" {
			t.Skipf("%s not installed (scripts/test-deps.sh installs the prometheus package)", bin)
		}
		t.Fatalf("%s: %v (scripts/test-deps.sh installs the prometheus package)", bin, err)
	}
}

// promServer is a Prometheus process started by a test.
type promServer struct {
	t    *testing.T
	addr string
	log  string
	cmd  *exec.Cmd
	done chan struct{}
	hc   *http.Client
}

func startPrometheus(t *testing.T, dir, config string) *promServer {
	t.Helper()
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &promServer{t: t, addr: coordFreeAddr(t), log: filepath.Join(dir, "prometheus.log"),
		hc: &http.Client{Timeout: 5 * time.Second}}
	f, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(prometheusBin,
		"--config.file="+cfgPath,
		"--storage.tsdb.path="+filepath.Join(dir, "tsdb"),
		"--web.listen-address="+p.addr,
		"--log.level=warn")
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start prometheus: %v", err)
	}
	p.cmd, p.done = cmd, make(chan struct{})
	go func() {
		cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
		if t.Failed() {
			t.Logf("prometheus log:\n%s", tail(p.log))
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			t.Fatalf("prometheus exited early:\n%s", tail(p.log))
		default:
		}
		resp, err := p.hc.Get("http://" + p.addr + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("prometheus not ready after 20s:\n%s", tail(p.log))
	return nil
}

// api GETs a Prometheus HTTP API path and decodes its data field.
func (p *promServer) api(path string, q url.Values, data any) error {
	u := "http://" + p.addr + path
	if q != nil {
		u += "?" + q.Encode()
	}
	resp, err := p.hc.Get(u)
	if err != nil {
		return fmt.Errorf("prometheus %s: %w", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("prometheus %s: read: %w", path, err)
	}
	var env struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(b, &env); err != nil {
		return fmt.Errorf("prometheus %s: %s: %w", path, b, err)
	}
	if env.Status != "success" {
		return fmt.Errorf("prometheus %s: %s %s", path, env.Status, env.Error)
	}
	return json.Unmarshal(env.Data, data)
}

// sample is one element of an instant vector.
type sample struct {
	Metric map[string]string
	Value  float64
}

// query runs an instant query that must return a vector.
func (p *promServer) query(expr string) ([]sample, error) {
	var data struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		} `json:"result"`
	}
	if err := p.api("/api/v1/query", url.Values{"query": {expr}}, &data); err != nil {
		return nil, err
	}
	if data.ResultType != "vector" {
		return nil, fmt.Errorf("query %q: result type %s, want vector", expr, data.ResultType)
	}
	out := make([]sample, 0, len(data.Result))
	for _, r := range data.Result {
		s, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("query %q: value %v: %w", expr, r.Value[1], err)
		}
		out = append(out, sample{Metric: r.Metric, Value: v})
	}
	return out, nil
}

// scalar runs a query expected to give exactly one sample.
func (p *promServer) scalar(expr string) (float64, error) {
	s, err := p.query(expr)
	if err != nil {
		return 0, err
	}
	if len(s) != 1 {
		return 0, fmt.Errorf("query %q: %d samples, want 1: %+v", expr, len(s), s)
	}
	return s[0].Value, nil
}

// until polls cond every 250ms until it holds or the deadline passes.
func until(t *testing.T, deadline time.Time, what string, cond func() error) {
	t.Helper()
	var err error
	for {
		if err = cond(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// promTarget is one scrape target of the generated configuration.
type promTarget struct {
	job, addr string
	labels    map[string]string
}

func scrapeConfig(targets []promTarget, caFile, tokenFile string) string {
	var b strings.Builder
	b.WriteString("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n")
	jobs := map[string][]promTarget{}
	var order []string
	for _, tg := range targets {
		if _, ok := jobs[tg.job]; !ok {
			order = append(order, tg.job)
		}
		jobs[tg.job] = append(jobs[tg.job], tg)
	}
	for _, job := range order {
		fmt.Fprintf(&b, "  - job_name: %q\n", job)
		if job == "continuum-coordinator" {
			fmt.Fprintf(&b, "    scheme: https\n    tls_config:\n      ca_file: %q\n", caFile)
			fmt.Fprintf(&b, "    authorization:\n      type: Bearer\n      credentials_file: %q\n", tokenFile)
		}
		b.WriteString("    static_configs:\n")
		for _, tg := range jobs[job] {
			fmt.Fprintf(&b, "      - targets: [%q]\n        labels:\n", tg.addr)
			keys := make([]string, 0, len(tg.labels))
			for k := range tg.labels {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				fmt.Fprintf(&b, "          %s: %q\n", k, tg.labels[k])
			}
		}
	}
	return b.String()
}

// dataPathAvailable reports whether the binary has the filter and proxy roles.
func dataPathAvailable(t *testing.T) bool {
	bin := continuumBinary(t)
	for _, role := range []string{"filter", "proxy"} {
		if err := exec.Command(bin, role, "--help").Run(); err != nil {
			t.Logf("no data path: continuum %s --help: %v", role, err)
			return false
		}
	}
	return true
}

// TestObservabilityPrometheus scrapes a 3-node coordinator cluster and a
// static data path with a real Prometheus and checks what it sees: every
// target up, exactly one raft leader, applied indexes, request counters
// and NBD/journal counters that move with the traffic the test makes, and
// that the dashboard queries only metrics that were exposed.
func TestObservabilityPrometheus(t *testing.T) {
	needPrometheus(t, prometheusBin)
	c := startCoordCluster(t)
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "admin.token")
	if err := os.WriteFile(tokenFile, []byte(c.token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var targets []promTarget
	for _, n := range c.nodes {
		targets = append(targets, promTarget{"continuum-coordinator", n.api, map[string]string{"node": n.id}})
	}
	var d *datapath
	if dataPathAvailable(t) {
		needTools(t, "qemu-io")
		d = startDatapath(t, dpOptions{grace: 5 * time.Second, logLevel: "info"})
		targets = append(targets,
			promTarget{"continuum-filter", d.sfAdmin, map[string]string{"role": "source"}},
			promTarget{"continuum-filter", d.tfAdmin, map[string]string{"role": "target"}},
			promTarget{"continuum-proxy", d.spAdmin, map[string]string{"role": "source"}},
			promTarget{"continuum-proxy", d.tpAdmin, map[string]string{"role": "target"}})
	}
	p := startPrometheus(t, dir, scrapeConfig(targets, c.caPath, tokenFile))
	t.Logf("prometheus at %s scrapes %d targets", p.addr, len(targets))
	deadline := time.Now().Add(60 * time.Second)

	// Every target is scraped successfully.
	until(t, deadline, "all targets up", func() error {
		var tg struct {
			ActiveTargets []struct {
				ScrapeURL string `json:"scrapeUrl"`
				Health    string `json:"health"`
				LastError string `json:"lastError"`
			} `json:"activeTargets"`
		}
		if err := p.api("/api/v1/targets", url.Values{"state": {"active"}}, &tg); err != nil {
			return err
		}
		if len(tg.ActiveTargets) != len(targets) {
			return fmt.Errorf("%d active targets, want %d", len(tg.ActiveTargets), len(targets))
		}
		for _, a := range tg.ActiveTargets {
			if a.Health != "up" {
				return fmt.Errorf("%s: health %q: %s", a.ScrapeURL, a.Health, a.LastError)
			}
		}
		up, err := p.query("up")
		if err != nil {
			return err
		}
		if len(up) != len(targets) {
			return fmt.Errorf("up has %d series, want %d", len(up), len(targets))
		}
		for _, s := range up {
			if s.Value != 1 {
				return fmt.Errorf("up=%v for %v", s.Value, s.Metric)
			}
		}
		return nil
	})

	// Exactly one leader among the three coordinators, the one the
	// cluster itself names.
	c1 := c.nodes[0]
	cl := c.client(c1, true)
	defer cl.Close()
	until(t, deadline, "one raft leader", func() error {
		leaders, err := p.query(`continuum_raft_state{job="continuum-coordinator"} == 2`)
		if err != nil {
			return err
		}
		if len(leaders) != 1 {
			return fmt.Errorf("%d nodes in state leader: %+v", len(leaders), leaders)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := cl.ClusterStatus(ctx)
		cancel()
		if err != nil {
			return err
		}
		if got := leaders[0].Metric["node"]; got != st.LeaderID {
			return fmt.Errorf("prometheus sees %s leading, the cluster says %s", got, st.LeaderID)
		}
		n, err := p.scalar(`sum(continuum_raft_is_leader)`)
		if err != nil {
			return err
		}
		if n != 1 {
			return fmt.Errorf("sum(continuum_raft_is_leader) = %v", n)
		}
		if n, err = p.scalar(`count(continuum_raft_state)`); err != nil || n != 3 {
			return fmt.Errorf("count(continuum_raft_state) = %v, %v", n, err)
		}
		return nil
	})

	// Every node applied the membership changes of the bootstrap and the
	// two joins.
	until(t, deadline, "applied index", func() error {
		s, err := p.query(`continuum_raft_applied_index`)
		if err != nil {
			return err
		}
		if len(s) != 3 {
			return fmt.Errorf("%d series", len(s))
		}
		for _, x := range s {
			if x.Value <= 0 {
				return fmt.Errorf("node %s applied index %v", x.Metric["node"], x.Value)
			}
		}
		return nil
	})

	// The request counter of a route moves by the calls made to it.
	reqExpr := fmt.Sprintf(`sum(continuum_http_requests_total{node=%q,route="GET /api/v1/cluster",code="200"}) or vector(0)`, c1.id)
	before, err := p.scalar(reqExpr)
	if err != nil {
		t.Fatal(err)
	}
	const calls = 20
	for i := 0; i < calls; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := cl.ClusterStatus(ctx)
		cancel()
		if err != nil {
			t.Fatalf("cluster status call %d: %v", i, err)
		}
	}
	until(t, deadline, "request counter", func() error {
		after, err := p.scalar(reqExpr)
		if err != nil {
			return err
		}
		if after < before+calls {
			return fmt.Errorf("GET /api/v1/cluster on %s: %v before, %v after %d calls", c1.id, before, after, calls)
		}
		return nil
	})

	if d != nil {
		checkDataPathMetrics(t, p, d, deadline)
	}

	// The dashboard queries only metrics that the processes exposed.
	var names []string
	if err := p.api("/api/v1/label/__name__/values", nil, &names); err != nil {
		t.Fatal(err)
	}
	used := dashboardMetrics(t)
	var missing []string
	for _, m := range used {
		if slices.Contains(names, m) {
			continue
		}
		if d == nil && !coordinatorMetric(m) {
			t.Logf("dashboard metric %s not checked: no data path here", m)
			continue
		}
		missing = append(missing, m)
	}
	t.Logf("dashboard: %d metric names, all exposed: %v", len(used), len(missing) == 0)
	if len(missing) > 0 {
		var exposed []string
		for _, n := range names {
			if strings.HasPrefix(n, "continuum_") {
				exposed = append(exposed, n)
			}
		}
		t.Fatalf("dashboard uses metrics no process exposed: %v\nexposed: %v", missing, exposed)
	}
}

func coordinatorMetric(name string) bool {
	return strings.HasPrefix(name, "continuum_raft_") || strings.HasPrefix(name, "continuum_http_")
}

// checkDataPathMetrics writes through NBD and expects the written bytes
// of the source filter, the points of the source proxy and the appended
// bytes of the target filter to grow.
func checkDataPathMetrics(t *testing.T, p *promServer, d *datapath, deadline time.Time) {
	t.Helper()
	exprs := map[string]string{
		"nbd written":          `sum(continuum_nbd_written_bytes_total{job="continuum-filter",role="source"}) or vector(0)`,
		"source proxy raw":     `sum(continuum_source_proxy_raw_bytes_total) or vector(0)`,
		"target filter points": `sum(continuum_target_filter_point_bytes_total) or vector(0)`,
	}
	before := map[string]float64{}
	for k, e := range exprs {
		v, err := p.scalar(e)
		if err != nil {
			t.Fatal(err)
		}
		before[k] = v
	}
	const written = 1 << 20
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 1M", "-c", "flush", d.uri("vm-a", 2000))
	d.waitQuiet(30 * time.Second)
	until(t, deadline, "data path counters", func() error {
		for k, e := range exprs {
			v, err := p.scalar(e)
			if err != nil {
				return err
			}
			if v < before[k]+written {
				return fmt.Errorf("%s: %v before, %v after writing %d bytes", k, before[k], v, written)
			}
		}
		return nil
	})
	// Every VM is syncing and nothing is buffered once quiet.
	until(t, deadline, "filter mode and buffer", func() error {
		s, err := p.query(`continuum_source_filter_mode{mode="syncing"} == 1`)
		if err != nil {
			return err
		}
		if len(s) != len(d.vms) {
			return fmt.Errorf("%d VMs syncing, want %d: %+v", len(s), len(d.vms), s)
		}
		buf, err := p.scalar(`sum(continuum_source_filter_buffer_bytes)`)
		if err != nil {
			return err
		}
		if buf != 0 {
			return fmt.Errorf("%v bytes buffered", buf)
		}
		return nil
	})
}

var (
	promQuoted = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'`)
	promRange  = regexp.MustCompile(`\[[^\]]*\]`)
	promIdent  = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
)

// exprMetrics returns the continuum_ metric names a PromQL expression uses.
func exprMetrics(expr string) []string {
	expr = promQuoted.ReplaceAllString(expr, `""`)
	expr = promRange.ReplaceAllString(expr, "")
	var out []string
	for _, id := range promIdent.FindAllString(expr, -1) {
		if strings.HasPrefix(id, "continuum_") && !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
}

// dashboardMetrics parses the Grafana dashboard and returns every metric
// name its panel queries and template variables use.
func dashboardMetrics(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title      string `json:"title"`
		UID        string `json:"uid"`
		Panels     []dashPanel
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	if dash.Title == "" || dash.UID == "" {
		t.Fatalf("%s: no title or uid", dashboardPath)
	}
	var exprs []string
	var walk func([]dashPanel)
	walk = func(ps []dashPanel) {
		for _, p := range ps {
			if p.Type != "row" && len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			for _, tg := range p.Targets {
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("panel %q has an empty query", p.Title)
				}
				exprs = append(exprs, tg.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(dash.Panels)
	for _, v := range dash.Templating.List {
		switch q := v.Query.(type) {
		case string:
			exprs = append(exprs, q)
		case map[string]any:
			if s, ok := q["query"].(string); ok {
				exprs = append(exprs, s)
			}
		}
	}
	var names []string
	for _, e := range exprs {
		for _, m := range exprMetrics(e) {
			if !slices.Contains(names, m) {
				names = append(names, m)
			}
		}
	}
	sort.Strings(names)
	// A parser that finds nothing would make the check above vacuous.
	if len(names) < 10 {
		t.Fatalf("%s: only %d metric names found in %d queries: %v", dashboardPath, len(names), len(exprs), names)
	}
	return names
}

type dashPanel struct {
	Title   string `json:"title"`
	Type    string `json:"type"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []dashPanel `json:"panels"`
}

// TestObservabilityDeployFiles validates the example Prometheus
// configuration and alert rules with promtool, runs the rules' unit tests,
// and checks that every metric they name is defined in the code.
func TestObservabilityDeployFiles(t *testing.T) {
	needPrometheus(t, promtoolBin)
	promDir := filepath.Join(deployDir, "prometheus")
	promtool := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, promtoolBin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	// The example points at files of a deployment (token, CA), so only
	// its syntax is checked; the rules it loads are checked on their own.
	promtool("check", "config", "--syntax-only", filepath.Join(promDir, "prometheus.yml"))
	out := promtool("check", "rules", filepath.Join(promDir, "alerts.yml"))
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool check rules: %s", out)
	}
	promtool("test", "rules", filepath.Join(promDir, "alerts_test.yml"))

	// Each alert an operator needs is there.
	b, err := os.ReadFile(filepath.Join(promDir, "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	rules := string(b)
	for _, alert := range []string{"ContinuumNoRaftLeader", "ContinuumCoordinatorDown", "ContinuumRPOLagHigh",
		"ContinuumVMInCBTMode", "ContinuumJournalAppendErrors", "ContinuumProxyDown"} {
		if !strings.Contains(rules, "alert: "+alert+"\n") {
			t.Errorf("alerts.yml has no alert %s", alert)
		}
	}

	// Metric names in the rules, the example config and the dashboard
	// must be defined by the code (counters with labels appear in a scrape
	// only after their first event, so the live check cannot see them all).
	defined := codeMetricNames(t)
	cfg, err := os.ReadFile(filepath.Join(promDir, "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	uses := map[string][]string{"alerts.yml": exprMetrics(rules), "prometheus.yml": exprMetrics(string(cfg)),
		"continuum.json": dashboardMetrics(t)}
	if len(uses["alerts.yml"]) < 5 {
		t.Fatalf("alerts.yml: only %v found", uses["alerts.yml"])
	}
	for file, ms := range uses {
		for _, m := range ms {
			base := m
			for _, suf := range []string{"_bucket", "_count", "_sum"} {
				if !defined[base] {
					base = strings.TrimSuffix(base, suf)
				}
			}
			if !defined[base] {
				t.Errorf("%s uses %s, which no Go file of the module defines", file, m)
			}
		}
	}
}

var metricDef = regexp.MustCompile(`"(continuum_[a-z0-9_]+)"`)

// codeMetricNames collects the metric names defined in the module's
// non-test Go files: literal continuum_ names, and Namespace/Subsystem/Name
// options joined.
func codeMetricNames(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	nsName := regexp.MustCompile(`Namespace:\s*"([a-z0-9_]+)",\s*Subsystem:\s*"([a-z0-9_]+)",\s*Name:\s*"([a-z0-9_]+)"`)
	err := filepath.WalkDir("..", func(path string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if de.IsDir() && (de.Name() == ".git" || de.Name() == "testdata" || de.Name() == "vendor") {
			return filepath.SkipDir
		}
		if de.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range metricDef.FindAllStringSubmatch(string(b), -1) {
			if m[1] != "" {
				names[m[1]] = true
			}
		}
		for _, m := range nsName.FindAllStringSubmatch(string(b), -1) {
			names[m[1]+"_"+m[2]+"_"+m[3]] = true
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	if !names["continuum_raft_state"] || !names["continuum_nbd_written_bytes_total"] {
		t.Fatalf("metric definitions not found in the code (got %d names)", len(names))
	}
	return names
}
