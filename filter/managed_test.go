package filter

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/filter/nbd"
	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/pki"
	"github.com/continuum-cdp/continuum/internal/wire"
)

// testCoordinator answers heartbeats with the configuration set by the
// test, issues component certificates from its CA, and can be down.
type testCoordinator struct {
	t   *testing.T
	ca  *pki.CA
	srv *httptest.Server

	mu      sync.Mutex
	cfg     model.ComponentConfig
	hosts   map[string]model.ComponentConfig // by reported host, over cfg
	down    bool
	reports []model.ComponentReport
}

func newTestCoordinator(t *testing.T, ca *pki.CA) *testCoordinator {
	c := &testCoordinator{t: t, ca: ca}
	node, err := ca.Issue("c1", []string{"127.0.0.1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v1/components/heartbeat", func(w http.ResponseWriter, r *http.Request) {
		var rep model.ComponentReport
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rep); err != nil {
			t.Errorf("heartbeat body: %v", err)
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.down {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, `{"error":{"code":"unavailable","message":"no leader"}}`)
			return
		}
		c.reports = append(c.reports, rep)
		if hc, ok := c.hosts[rep.ID]; ok {
			_ = json.NewEncoder(w).Encode(hc)
			return
		}
		_ = json.NewEncoder(w).Encode(c.cfg)
	})
	mux.HandleFunc("POST /api/v1/components/certificate", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Name  string   `json:"name"`
			Hosts []string `json:"hosts"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, "bad", http.StatusBadRequest)
			return
		}
		l, err := ca.IssueComponent(req.Name, req.Hosts, 0)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		key, _ := pki.KeyPEM(l.Key)
		_ = json.NewEncoder(w).Encode(map[string]string{"ca_cert": string(pki.CertPEM(ca.Cert)),
			"cert": string(pki.CertPEM(l.Cert)), "key": string(key)})
	})
	c.srv = httptest.NewUnstartedServer(mux)
	c.srv.TLS = pki.APIServerTLS(ca.Cert, node.TLSCertificate(ca.Cert))
	c.srv.StartTLS()
	t.Cleanup(c.srv.Close)
	return c
}

func (c *testCoordinator) set(cfg model.ComponentConfig) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cfg.Kind, cfg.ID = model.ComponentFilter, "vc-1/host-1"
	cfg.Version = fmt.Sprint(time.Now().UnixNano())
	c.cfg = cfg
}

// setHost gives the filter of host its own configuration.
func (c *testCoordinator) setHost(host string, cfg model.ComponentConfig) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cfg.Kind, cfg.ID = model.ComponentFilter, "vc-1/"+host
	cfg.Version = fmt.Sprint(time.Now().UnixNano())
	if c.hosts == nil {
		c.hosts = map[string]model.ComponentConfig{}
	}
	c.hosts[host] = cfg
}

// lastOf is the newest report of host.
func (c *testCoordinator) lastOf(host string) model.ComponentReport {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.reports) - 1; i >= 0; i-- {
		if c.reports[i].ID == host {
			return c.reports[i]
		}
	}
	return model.ComponentReport{}
}

func (c *testCoordinator) setDown(b bool) {
	c.mu.Lock()
	c.down = b
	c.mu.Unlock()
}

func (c *testCoordinator) last() (model.ComponentReport, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.reports) == 0 {
		return model.ComponentReport{}, 0
	}
	return c.reports[len(c.reports)-1], len(c.reports)
}

// testProxy is a source proxy and target in one, over mutual TLS with a
// component certificate: it applies what it gets to one image per disk.
type testProxy struct {
	t   *testing.T
	l   net.Listener
	mu  sync.Mutex
	img map[string][]byte // "vm/key"
	seq map[string]uint64
	ini map[string]bool
}

func newTestProxy(t *testing.T, ca *pki.CA) *testProxy {
	leaf, err := ca.IssueComponent("px", []string{"127.0.0.1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{leaf.TLSCertificate(ca.Cert)},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pki.Pool(ca.Cert)}
	l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	return serveTestProxy(t, l)
}

func serveTestProxy(t *testing.T, l net.Listener) *testProxy {
	p := &testProxy{t: t, l: l, img: map[string][]byte{}, seq: map[string]uint64{}, ini: map[string]bool{}}
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			go p.serve(nc)
		}
	}()
	t.Cleanup(func() { l.Close() })
	return p
}

func (p *testProxy) serve(nc net.Conn) {
	c := wire.NewConn(nc)
	defer c.Close()
	h, err := wire.Expect[*wire.Hello](c)
	if err != nil {
		return
	}
	p.mu.Lock()
	for _, d := range h.Disks {
		k := fmt.Sprintf("%s/%d", h.VM, d.Key)
		if p.img[k] == nil {
			p.img[k] = make([]byte, d.Capacity)
		}
	}
	ack := &wire.HelloAck{Resume: p.seq[h.VM], InitialSyncDone: p.ini[h.VM]}
	p.mu.Unlock()
	if c.Send(ack) != nil {
		return
	}
	for {
		m, err := c.ReadMsg()
		if err != nil {
			return
		}
		var seq uint64
		p.mu.Lock()
		switch m := m.(type) {
		case *wire.Write:
			seq = m.Seq
			if seq > p.seq[h.VM] {
				img := p.img[fmt.Sprintf("%s/%d", h.VM, m.Disk)]
				if m.Op == wire.OpData {
					copy(img[m.Off:], m.Data)
				} else {
					clear(img[m.Off : m.Off+int64(m.Len)])
				}
			}
		case *wire.Marker:
			seq = m.Seq
			if m.Kind == wire.MarkerInitialSyncDone {
				p.ini[h.VM] = true
			}
		}
		if seq > p.seq[h.VM] {
			p.seq[h.VM] = seq
		}
		p.mu.Unlock()
		if seq > 0 && c.Send(&wire.Ack{Seq: seq}) != nil {
			return
		}
	}
}

func (p *testProxy) image(k string) []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return bytes.Clone(p.img[k])
}

// filterProc is the filter command run in this process.
type filterProc struct {
	cancel context.CancelFunc
	done   chan error
	ready  map[string]string
	lines  []string // stdout before "filter ready"
}

func startManaged(t *testing.T, args ...string) *filterProc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	cmd := NewCommand()
	cmd.SetArgs(args)
	cmd.SetOut(pw)
	f := &filterProc{cancel: cancel, done: make(chan error, 1)}
	go func() { err := cmd.ExecuteContext(ctx); pw.Close(); f.done <- err }()
	line := make(chan string, 1)
	var before []string
	go func() {
		sc := bufio.NewScanner(pr)
		ready := false
		for sc.Scan() {
			switch {
			case ready:
			case strings.HasPrefix(sc.Text(), "filter ready"):
				ready = true
				line <- sc.Text()
			default:
				before = append(before, sc.Text())
			}
		}
	}()
	select {
	case l := <-line:
		f.lines = before
		f.ready = map[string]string{}
		for _, kv := range strings.Fields(l)[2:] {
			k, v, _ := strings.Cut(kv, "=")
			f.ready[k] = v
		}
	case err := <-f.done:
		t.Fatalf("filter exited before ready: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("filter not ready")
	}
	t.Cleanup(f.stop)
	return f
}

func (f *filterProc) stop() {
	f.cancel()
	<-f.done
	f.done <- nil // a second stop returns at once
}

func waitUntil(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// targetHello opens a target proxy's session to the filter's data
// listener with a component certificate and returns the answer.
func targetHello(t *testing.T, ca *pki.CA, addr, vm string) *wire.HelloAck {
	t.Helper()
	leaf, err := ca.IssueComponent("tp", []string{"127.0.0.1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{leaf.TLSCertificate(ca.Cert)}})
	if err != nil {
		t.Fatal(err)
	}
	c := wire.NewConn(nc)
	defer c.Close()
	ack, err := wire.Greet(c, &wire.Hello{Role: wire.RoleTargetProxy, VM: vm, Disks: []wire.Disk{{Key: 2000, Capacity: 1 << 20}}}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return ack
}

func qemuWrite(t *testing.T, nbdAddr, export string, pattern byte, off, n int) {
	t.Helper()
	uri := nbd.URI(nbdAddr, export)
	out, err := exec.Command("qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P 0x%02x %d %d", pattern, off, n), uri).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-io write to %s: %v\n%s", uri, err, out)
	}
}

// TestManagedFilter: the filter's configuration comes from the
// coordinator: a task whose VM runs on its host is exported over NBD and
// streamed to the task's proxy; a disk added and a proxy changed follow;
// the admin listener is HTTPS with open /healthz and /metrics and
// certificate-only API; with the coordinator down, a restarted filter
// runs its cached configuration.
func TestManagedFilter(t *testing.T) {
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Fatal("qemu-io is required (Debian package qemu-utils, see scripts/test-deps.sh)")
	}
	ca, err := pki.NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pki.CertPEM(ca.Cert), 0o644); err != nil {
		t.Fatal(err)
	}
	coord := newTestCoordinator(t, ca)
	pa, pb := newTestProxy(t, ca), newTestProxy(t, ca)
	task := model.TaskPath{TaskID: "pol-1/vm-7", PolicyID: "pol-1", VM: "web", SourceHost: "host-1", TargetHost: "host-2",
		SourceProxy: pa.l.Addr().String(), Disks: []model.DiskMap{{Key: 2000, CapacityBytes: 1 << 20}},
		ShortTermRetention: model.Duration(time.Hour)}
	replica := model.TaskPath{TaskID: "pol-2/vm-9", PolicyID: "pol-2", VM: "db", SourceHost: "host-3", TargetHost: "host-1",
		Disks: []model.DiskMap{{Key: 2000, CapacityBytes: 1 << 20}}, ShortTermRetention: model.Duration(2 * time.Hour),
		LongTermRetention: model.Duration(72 * time.Hour)}
	// a task this filter cannot run (a disk capacity that is no multiple
	// of 512) is reported with why, and does not hold the others back
	bad := model.TaskPath{TaskID: "pol-3/vm-11", PolicyID: "pol-3", VM: "odd", SourceHost: "host-1", TargetHost: "host-2",
		SourceProxy: pa.l.Addr().String(), Disks: []model.DiskMap{{Key: 2000, CapacityBytes: 1000}}}
	coord.set(model.ComponentConfig{Tasks: []model.TaskPath{task, replica, bad}})
	args := []string{"--coordinator", coord.srv.URL, "--token", "tok", "--cacert", caFile,
		"--state-dir", filepath.Join(dir, "state"), "--host", "host-1", "--datastore", filepath.Join(dir, "ds"),
		"--journal-dir", filepath.Join(dir, "journal"), "--listen", "127.0.0.1:0", "--nbd-addr", "127.0.0.1:0",
		"--admin-addr", "127.0.0.1:0", "--heartbeat-interval", "100ms", "--log-level", "warn"}
	f := startManaged(t, args...)
	nbdAddr, admin := f.ready["nbd"], f.ready["admin"]

	waitUntil(t, "a report of the task in Syncing", func() error {
		rep, _ := coord.last()
		if rep.NBDAddr != nbdAddr || rep.AdminAddr != admin || rep.DataAddr != f.ready["data"] || rep.ID != "host-1" {
			return fmt.Errorf("addresses %+v", rep)
		}
		if len(rep.VMs) != 2 || rep.VMs[0].TaskID != task.TaskID || rep.VMs[0].Status != model.StatusSyncing ||
			rep.VMs[1].TaskID != bad.TaskID || rep.VMs[1].Status != model.StatusCBT || !strings.Contains(rep.VMs[1].Reason, "capacity") {
			return fmt.Errorf("vms %+v", rep.VMs)
		}
		return nil
	})
	qemuWrite(t, nbdAddr, "web/2000", 0xab, 4096, 65536)
	want, err := os.ReadFile(filepath.Join(dir, "ds", "web", "web-2000-flat.vmdk"))
	if err != nil {
		t.Fatal(err)
	}
	if want[4096] != 0xab {
		t.Fatal("the write did not reach the flat file")
	}
	waitUntil(t, "the write at the proxy", func() error {
		if !bytes.Equal(pa.image("web/2000"), want) {
			return fmt.Errorf("image differs")
		}
		return nil
	})
	// the target side takes the replicas of the configuration only
	for vm, ok := range map[string]bool{"db": true, "web": false} {
		ack := targetHello(t, ca, f.ready["data"], vm)
		if (ack.Err == "") != ok {
			t.Fatalf("target hello for %s: %+v", vm, ack)
		}
	}
	if nc, err := tls.Dial("tcp", f.ready["data"], &tls.Config{InsecureSkipVerify: true}); err == nil {
		c := wire.NewConn(nc)
		if _, err := wire.Greet(c, &wire.Hello{Role: wire.RoleTargetProxy, VM: "db", Disks: []wire.Disk{{Key: 2000, Capacity: 1 << 20}}}, 5*time.Second); err == nil {
			t.Fatal("the data listener took a session without a client certificate")
		}
		c.Close()
	}
	b, err := os.ReadFile(filepath.Join(dir, "journal", "retention.json"))
	if err != nil || !strings.Contains(string(b), `"db"`) {
		t.Fatalf("the replica's retention window was not kept: %v %s", err, b)
	}

	// the admin API
	pool := pki.Pool(ca.Cert)
	anon := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", InsecureSkipVerify: true}}}
	comp, _ := ca.IssueComponent("other", []string{"127.0.0.1"}, 0)
	node, _ := ca.Issue("c2", []string{"127.0.0.1"}, 0)
	asComp := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{comp.TLSCertificate(ca.Cert)}}}}
	asNode := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{node.TLSCertificate(ca.Cert)}}}}
	for _, c := range []struct {
		client *http.Client
		path   string
		want   int
	}{
		{anon, "/healthz", 200}, {anon, "/metrics", 200}, {anon, "/v1/vms", 401}, {anon, "/v1/status", 401},
		{asComp, "/v1/vms", 403}, {asNode, "/v1/vms", 200}, {asNode, "/v1/status", 200},
	} {
		resp, err := c.client.Get("https://" + admin + c.path)
		if err != nil {
			t.Fatalf("GET %s: %v", c.path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Fatalf("GET %s: %d, want %d: %s", c.path, resp.StatusCode, c.want, body)
		}
		if c.path == "/metrics" && (!strings.Contains(string(body), "continuum_source_filter_seq") || !strings.Contains(string(body), `continuum_nbd_requests_total{op="write",side="source"}`)) {
			t.Fatalf("metrics lack the source side:\n%s", body)
		}
	}
	if _, err := http.Get("http://" + admin + "/healthz"); err == nil {
		// plain HTTP gets no answer from a TLS listener that is worth a 200
		resp, _ := http.Get("http://" + admin + "/healthz")
		if resp != nil && resp.StatusCode == 200 {
			t.Fatal("the admin listener answered plain HTTP")
		}
	}

	// a new disk, another proxy
	task.Disks = append(task.Disks, model.DiskMap{Key: 2001, CapacityBytes: 2 << 20})
	task.SourceProxy = pb.l.Addr().String()
	coord.set(model.ComponentConfig{Tasks: []model.TaskPath{task, replica}})
	waitUntil(t, "the new disk exported", func() error {
		out, err := exec.Command("qemu-io", "-f", "raw", "-r", "-c", "read 0 512", nbd.URI(nbdAddr, "web/2001")).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
	qemuWrite(t, nbdAddr, "web/2001", 0xcd, 1<<20, 8192)
	qemuWrite(t, nbdAddr, "web/2000", 0x11, 0, 512)
	waitUntil(t, "both disks exact at the new proxy", func() error {
		for _, k := range []int32{2000, 2001} {
			want, err := os.ReadFile(filepath.Join(dir, "ds", "web", DiskFileName("web", k)))
			if err != nil {
				return err
			}
			if !bytes.Equal(pb.image(fmt.Sprintf("web/%d", k)), want) {
				return fmt.Errorf("disk %d differs", k)
			}
		}
		rep, _ := coord.last()
		if len(rep.VMs) != 1 || rep.VMs[0].Status != model.StatusSyncing {
			return fmt.Errorf("vms %+v", rep.VMs)
		}
		return nil
	})

	// coordinator down: a restarted filter runs the cached configuration
	coord.setDown(true)
	time.Sleep(300 * time.Millisecond) // the last configuration is cached once applied
	f.stop()
	f = startManaged(t, args...)
	nbdAddr = f.ready["nbd"]
	qemuWrite(t, nbdAddr, "web/2001", 0xef, 0, 4096)
	waitUntil(t, "the write after the restart at the proxy", func() error {
		want, err := os.ReadFile(filepath.Join(dir, "ds", "web", DiskFileName("web", 2001)))
		if err != nil {
			return err
		}
		if want[0] != 0xef || !bytes.Equal(pb.image("web/2001"), want) {
			return fmt.Errorf("image differs")
		}
		return nil
	})
	st, err := os.Stat(filepath.Join(dir, "state", "config.json"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("cached configuration: %v %v", err, st)
	}

	// back up: the task removed, its export goes
	coord.set(model.ComponentConfig{Tasks: []model.TaskPath{replica}})
	coord.setDown(false)
	waitUntil(t, "the export withdrawn", func() error {
		out, err := exec.Command("qemu-io", "-f", "raw", "-r", "-c", "read 0 512", nbd.URI(nbdAddr, "web/2000")).CombinedOutput()
		if err == nil {
			return fmt.Errorf("still exported: %s", out)
		}
		rep, _ := coord.last()
		if len(rep.VMs) != 0 {
			return fmt.Errorf("still reported: %+v", rep.VMs)
		}
		return nil
	})
	if _, err := os.Stat(filepath.Join(dir, "ds", "web", DiskFileName("web", 2000))); err != nil {
		t.Fatalf("the removed VM's file: %v", err)
	}
}

// TestStaticVMNamesItsProxy: in the static configuration a VM may name
// its own source proxy; the others use --proxy.
func TestStaticVMNamesItsProxy(t *testing.T) {
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Fatal("qemu-io is required (Debian package qemu-utils, see scripts/test-deps.sh)")
	}
	proxies := [2]*testProxy{}
	for i := range proxies {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		proxies[i] = serveTestProxy(t, l)
	}
	dir := t.TempDir()
	conf := fmt.Sprintf(`{"vms": [{"name": "a", "disks": [{"key": 1, "capacity": 1048576}]},
		{"name": "b", "proxy": %q, "disks": [{"key": 1, "capacity": 1048576}]}]}`, proxies[1].l.Addr())
	if err := os.WriteFile(filepath.Join(dir, "conf.json"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	f := startManaged(t, "--role", "source", "--config", filepath.Join(dir, "conf.json"), "--plaintext",
		"--datastore", filepath.Join(dir, "ds"), "--proxy", proxies[0].l.Addr().String(), "--nbd-addr", "127.0.0.1:0",
		"--log-level", "warn")
	nbdAddr := ""
	for _, p := range f.lines {
		if strings.HasPrefix(p, "disk a/1 ") {
			u := strings.Fields(p)[2]
			nbdAddr = strings.TrimPrefix(strings.Split(u, "/a")[0], "nbd://")
		}
	}
	if nbdAddr == "" {
		t.Fatalf("no disk line in %q", f.lines)
	}
	qemuWrite(t, nbdAddr, "a/1", 0x0a, 0, 4096)
	qemuWrite(t, nbdAddr, "b/1", 0x0b, 0, 4096)
	waitUntil(t, "each vm at its proxy", func() error {
		if a := proxies[0].image("a/1"); len(a) == 0 || a[0] != 0x0a {
			return fmt.Errorf("vm a not at the default proxy")
		}
		if b := proxies[1].image("b/1"); len(b) == 0 || b[0] != 0x0b {
			return fmt.Errorf("vm b not at its own proxy")
		}
		if proxies[0].image("b/1") != nil || proxies[1].image("a/1") != nil {
			return fmt.Errorf("a vm reached the other proxy")
		}
		return nil
	})
}

// TestManagedVMotion: two hosts share the source datastore; the task
// moves from one host's configuration to the other's. The new host cannot
// open the VM while the old one runs it (and says so), then takes it over:
// the export moves, the sequence goes on and the replica stays exact.
func TestManagedVMotion(t *testing.T) {
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Fatal("qemu-io is required (Debian package qemu-utils, see scripts/test-deps.sh)")
	}
	ca, err := pki.NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pki.CertPEM(ca.Cert), 0o644); err != nil {
		t.Fatal(err)
	}
	coord := newTestCoordinator(t, ca)
	px := newTestProxy(t, ca)
	task := func(host string) model.TaskPath {
		return model.TaskPath{TaskID: "pol-1/vm-7", PolicyID: "pol-1", VM: "web", SourceHost: host, TargetHost: "host-9",
			SourceProxy: px.l.Addr().String(), Disks: []model.DiskMap{{Key: 2000, CapacityBytes: 1 << 20}}}
	}
	coord.setHost("host-1", model.ComponentConfig{Tasks: []model.TaskPath{task("host-1")}})
	coord.setHost("host-2", model.ComponentConfig{Tasks: []model.TaskPath{}})
	filters := map[string]*filterProc{}
	for _, h := range []string{"host-1", "host-2"} {
		filters[h] = startManaged(t, "--coordinator", coord.srv.URL, "--token", "tok", "--cacert", caFile,
			"--state-dir", filepath.Join(dir, "state-"+h), "--host", h, "--datastore", filepath.Join(dir, "ds"),
			"--journal-dir", filepath.Join(dir, "journal-"+h), "--listen", "127.0.0.1:0", "--nbd-addr", "127.0.0.1:0",
			"--heartbeat-interval", "100ms", "--log-level", "error")
	}
	file := filepath.Join(dir, "ds", "web", DiskFileName("web", 2000))
	exact := func(what string) {
		t.Helper()
		waitUntil(t, what, func() error {
			want, err := os.ReadFile(file)
			if err != nil {
				return err
			}
			if !bytes.Equal(px.image("web/2000"), want) {
				return fmt.Errorf("the replica differs")
			}
			return nil
		})
	}
	waitUntil(t, "web syncing on host-1", func() error {
		if r := coord.lastOf("host-1"); len(r.VMs) != 1 || r.VMs[0].Status != model.StatusSyncing {
			return fmt.Errorf("%+v", r.VMs)
		}
		return nil
	})
	qemuWrite(t, filters["host-1"].ready["nbd"], "web/2000", 0x21, 0, 65536)
	exact("the write on host-1 at the replica")

	// the new host is told first: it waits for the old one to let go
	coord.setHost("host-2", model.ComponentConfig{Tasks: []model.TaskPath{task("host-2")}})
	waitUntil(t, "host-2 reporting the vm in use", func() error {
		r := coord.lastOf("host-2")
		if len(r.VMs) != 1 || r.VMs[0].Status != model.StatusCBT || !strings.Contains(r.VMs[0].Reason, "in use") {
			return fmt.Errorf("%+v", r.VMs)
		}
		return nil
	})
	coord.setHost("host-1", model.ComponentConfig{Tasks: []model.TaskPath{}})
	waitUntil(t, "web syncing on host-2", func() error {
		if r := coord.lastOf("host-2"); len(r.VMs) != 1 || r.VMs[0].Status != model.StatusSyncing {
			return fmt.Errorf("%+v", r.VMs)
		}
		if r := coord.lastOf("host-1"); len(r.VMs) != 0 {
			return fmt.Errorf("host-1 still reports %+v", r.VMs)
		}
		return nil
	})
	qemuWrite(t, filters["host-2"].ready["nbd"], "web/2000", 0x22, 32768, 65536)
	exact("the write on host-2 at the replica")
	if out, err := exec.Command("qemu-io", "-f", "raw", "-r", "-c", "read 0 512", nbd.URI(filters["host-1"].ready["nbd"], "web/2000")).CombinedOutput(); err == nil {
		t.Fatalf("the old host still exports the vm: %s", out)
	}
}

// TestManagedFlags: managed mode refuses what it cannot run, before
// anything is opened.
func TestManagedFlags(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"--coordinator", "https://127.0.0.1:1", "--token", "t", "--cacert", "x", "--state-dir", dir, "--datastore", dir, "--journal-dir", dir, "--listen", "127.0.0.1:0"},
		{"--coordinator", "https://127.0.0.1:1", "--token", "t", "--cacert", "x", "--state-dir", dir, "--host", "h", "--journal-dir", dir, "--listen", "127.0.0.1:0"},
		{"--coordinator", "https://127.0.0.1:1", "--cacert", "x", "--state-dir", dir, "--host", "h", "--datastore", dir, "--journal-dir", dir, "--listen", "127.0.0.1:0"},
		{"--coordinator", "https://127.0.0.1:1", "--token", "t", "--cacert", "x", "--state-dir", dir, "--host", "h", "--datastore", dir, "--journal-dir", dir, "--listen", "127.0.0.1:0", "--role", "source"},
	} {
		t.Setenv(tokenEnv, "")
		cmd := NewCommand()
		cmd.SetArgs(args)
		cmd.SetOut(io.Discard)
		cmd.SetErr(io.Discard)
		if err := cmd.Execute(); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("refused flags left files: %v", entries)
	}
}
