package appliance

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/appliance/controllers"
	"github.com/continuum-cdp/continuum/client"
	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/pki"
	"github.com/continuum-cdp/continuum/raftstore"
	"github.com/continuum-cdp/continuum/vcsim"
)

// componentClient is a client holding a new component token.
func (e *testEnv) componentClient(t *testing.T) (*client.Client, string) {
	t.Helper()
	tok, err := e.cl.CreateToken(context.Background(), model.TokenComponent)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(e.url, tok.Token, pki.CertPEM(e.ca.Cert))
	if err != nil {
		t.Fatal(err)
	}
	cl.RetryFor = 0
	return cl, tok.Token
}

// seedTask stores a policy of vc with one configured task: vm-1 ("web")
// from vc/host-1 to vc/host-2 through src and dst.
func (e *testEnv) seedTask(t *testing.T, vc *model.VCenter, src, dst *model.Proxy) *model.VMTask {
	t.Helper()
	ctx := context.Background()
	p := mustPolicy(t, policyJSON(func(m map[string]any) {
		m["vcenter_id"] = vc.ID
		m["target"] = map[string]any{"vcenter_id": vc.ID, "cluster": "c1", "datastore": "ds1"}
		m["rpo_warning"], m["rpo_error"] = "10s", "30s"
	}))
	p, err := e.cl.CreatePolicy(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	task := model.VMTask{ID: p.ID + "/vm-1", PolicyID: p.ID, VMMoRef: "vm-1", VMName: "web",
		SourceHost: vc.ID + "/host-1", TargetHost: "host-2", SourceProxy: src.ID, TargetProxy: dst.ID,
		Disks: []model.DiskMap{{Key: 2000, CapacityBytes: 1 << 20}}, Status: model.StatusInitialSync, Generation: p.Generation}
	for _, cmd := range []raftstore.Command{
		raftstore.PutHost{Host: model.Host{ID: vc.ID + "/host-1", VCenterID: vc.ID, MoRef: "host-1", Name: "esx1"}},
		raftstore.PutHost{Host: model.Host{ID: vc.ID + "/host-2", VCenterID: vc.ID, MoRef: "host-2", Name: "esx2", FilterAddr: "127.0.0.1:7300"}},
		raftstore.PutTask{Task: task},
	} {
		if _, err := e.node.Apply(ctx, cmd); err != nil {
			t.Fatal(err)
		}
	}
	return &task
}

// A proxy's heartbeat records its liveness and its VMs' lag in the state
// and answers with the data paths it serves, addresses and keys resolved.
func TestComponentHeartbeatProxy(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	vc, src, dst := e.seed(t)
	task := e.seedTask(t, vc, src, dst)
	cl, _ := e.componentClient(t)

	before := time.Now().UTC().Add(-time.Second)
	point := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	cfg, err := cl.ComponentHeartbeat(ctx, model.ComponentReport{Kind: model.ComponentProxy, ID: "src", DataAddr: "127.0.0.1:1",
		VMs: []model.VMReport{{TaskID: task.ID, VM: "web", LagSeconds: 12, LastPointAt: point}, {TaskID: "gone/vm-9", LagSeconds: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	var px model.Proxy
	var stored model.VMTask
	e.node.Read(func(s *model.State) { px, stored = *s.Proxies[src.ID], *s.Tasks[task.ID] })
	if px.LastHeartbeat.Before(before) || px.Address != "127.0.0.1:9001" {
		t.Fatalf("proxy after heartbeat: %+v", px)
	}
	if stored.LagSeconds != 12 || !stored.LastPointAt.Equal(point) || stored.Status != model.StatusInitialSync {
		t.Fatalf("task after heartbeat: %+v", stored)
	}
	if cfg.Kind != model.ComponentProxy || cfg.ID != src.ID || cfg.Version == "" || len(cfg.Tasks) != 1 {
		t.Fatalf("config: %+v", cfg)
	}
	tp := cfg.Tasks[0]
	key := controllers.DeriveKeys(e.node.ClusterKey())(task.ID)
	if tp.TaskID != task.ID || tp.VM != "web" || tp.SourceProxy != "127.0.0.1:9001" || tp.TargetProxy != "127.0.0.1:9002" ||
		tp.TargetFilter != "127.0.0.1:7300" || tp.SourceHost != "host-1" || tp.TargetHost != "host-2" ||
		tp.RPO != model.Duration(15*time.Second) || len(tp.Disks) != 1 || !bytes.Equal(tp.Key, key) {
		t.Fatalf("task path: %+v", tp)
	}
	// The same state gives the same version; the target proxy gets the
	// same path.
	again, err := cl.ComponentHeartbeat(ctx, model.ComponentReport{Kind: model.ComponentProxy, ID: src.ID, ConfigVersion: cfg.Version})
	if err != nil || again.Version != cfg.Version {
		t.Fatalf("second heartbeat: %v %+v", err, again)
	}
	// The component runs that version: the answer says so without the
	// tasks. A component running another version gets them all.
	if !again.Unchanged || len(again.Tasks) != 0 || again.Kind != model.ComponentProxy || again.ID != src.ID {
		t.Fatalf("answer to a component running the current version: %+v", again)
	}
	if stale, err := cl.ComponentHeartbeat(ctx, model.ComponentReport{Kind: model.ComponentProxy, ID: src.ID, ConfigVersion: "older"}); err != nil ||
		stale.Unchanged || stale.Version != cfg.Version || len(stale.Tasks) != 1 {
		t.Fatalf("answer to a component running an older version: %v %+v", err, stale)
	}
	other, err := cl.ComponentHeartbeat(ctx, model.ComponentReport{Kind: model.ComponentProxy, ID: "dst"})
	if err != nil || len(other.Tasks) != 1 || !bytes.Equal(other.Tasks[0].Key, key) || other.Version == cfg.Version {
		t.Fatalf("target proxy: %v %+v", err, other)
	}
	// A traffic rule is part of every path.
	if _, err := e.cl.CreateTrafficRule(ctx, &model.TrafficRule{Name: "wan", SourceCIDR: "127.0.0.0/8", TargetCIDR: "127.0.0.0/8", Encrypt: true}); err != nil {
		t.Fatal(err)
	}
	ruled, err := cl.ComponentHeartbeat(ctx, model.ComponentReport{Kind: model.ComponentProxy, ID: src.ID})
	if err != nil || ruled.Version == cfg.Version || len(ruled.Tasks[0].Rules) != 1 || !ruled.Tasks[0].Rules[0].Encrypt {
		t.Fatalf("with a rule: %v %+v", err, ruled)
	}

	var ae *client.APIError
	snap := e.snapshot(t)
	if _, err := cl.ComponentHeartbeat(ctx, model.ComponentReport{Kind: model.ComponentProxy, ID: "nope"}); !errors.As(err, &ae) || ae.Status != http.StatusNotFound || ae.Field != "id" {
		t.Fatalf("unknown proxy: %v", err)
	}
	if e.snapshot(t) != snap {
		t.Fatal("a refused heartbeat changed the state")
	}
}

// A filter's report sets its VMs' status; Syncing becomes the policy's lag
// status. The filter's config holds the tasks whose VM or replica is on its
// host.
func TestComponentHeartbeatFilterReports(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	vc, src, dst := e.seed(t)
	task := e.seedTask(t, vc, src, dst)
	cl, _ := e.componentClient(t)
	if _, err := cl.ComponentHeartbeat(ctx, model.ComponentReport{Kind: model.ComponentProxy, ID: "src",
		VMs: []model.VMReport{{TaskID: task.ID, LagSeconds: 12}}}); err != nil {
		t.Fatal(err)
	}
	cfg, err := cl.ComponentHeartbeat(ctx, model.ComponentReport{Kind: model.ComponentFilter, ID: "host-1", DataAddr: "127.0.0.1:7200",
		AdminAddr: "127.0.0.1:7201", NBDAddr: "127.0.0.1:10809",
		VMs: []model.VMReport{{TaskID: task.ID, VM: "web", Status: model.StatusSyncing, SyncDoneBytes: 1 << 20, SyncTotalBytes: 1 << 20}}})
	if err != nil {
		t.Fatal(err)
	}
	var h model.Host
	var stored model.VMTask
	e.node.Read(func(s *model.State) { h, stored = *s.Hosts[vc.ID+"/host-1"], *s.Tasks[task.ID] })
	if h.FilterAddr != "127.0.0.1:7200" || h.FilterAdmin != "127.0.0.1:7201" || h.FilterNBD != "127.0.0.1:10809" || h.LastHeartbeat.IsZero() {
		t.Fatalf("host: %+v", h)
	}
	if stored.Status != model.StatusWarning || !strings.HasPrefix(stored.Reason, model.LagReasonPrefix) || stored.SyncDoneBytes != 1<<20 {
		t.Fatalf("task: %s %q %d", stored.Status, stored.Reason, stored.SyncDoneBytes)
	}
	if cfg.Kind != model.ComponentFilter || cfg.ID != vc.ID+"/host-1" || len(cfg.Tasks) != 1 || cfg.Tasks[0].SourceHost != "host-1" {
		t.Fatalf("source filter config: %+v", cfg)
	}
	// A report made under another task path (a disk added, not applied
	// yet) is dropped; one under the current path counts.
	cbt := func(version string) model.VMTask {
		t.Helper()
		if _, err := cl.ComponentHeartbeat(ctx, model.ComponentReport{Kind: model.ComponentFilter, ID: "host-1",
			DataAddr: "127.0.0.1:7200", AdminAddr: "127.0.0.1:7201", NBDAddr: "127.0.0.1:10809",
			VMs: []model.VMReport{{TaskID: task.ID, VM: "web", Status: model.StatusCBT, PathVersion: version}}}); err != nil {
			t.Fatal(err)
		}
		var got model.VMTask
		e.node.Read(func(s *model.State) { got = *s.Tasks[task.ID] })
		return got
	}
	if got := cbt("0123456789abcdef0123456789abcdef"); got.Status != stored.Status {
		t.Fatalf("a report under a stale task path changed the status to %s", got.Status)
	}
	if got := cbt(model.TaskPathVersion(cfg.Tasks[0])); got.Status != model.StatusCBT {
		t.Fatalf("a report under the current task path left the status at %s", got.Status)
	}
	tgt, err := cl.ComponentHeartbeat(ctx, model.ComponentReport{Kind: model.ComponentFilter, ID: "esx2", VCenterID: "vc1"})
	if err != nil || tgt.ID != vc.ID+"/host-2" || len(tgt.Tasks) != 1 || tgt.Tasks[0].TargetFilter != "127.0.0.1:7300" {
		t.Fatalf("target filter config: %v %+v", err, tgt)
	}
	// The policy disabled: nobody runs the task any more.
	if _, err := e.cl.DisablePolicy(ctx, task.PolicyID); err != nil {
		t.Fatal(err)
	}
	off, err := cl.ComponentHeartbeat(ctx, model.ComponentReport{Kind: model.ComponentFilter, ID: "host-1"})
	if err != nil || len(off.Tasks) != 0 || off.Version == cfg.Version {
		t.Fatalf("after disable: %v %+v", err, off)
	}
}

// Bad bodies are 400 with the field named, a missing or wrong token 401,
// another component's certificate 403; none changes the state.
func TestComponentHeartbeatRefusals(t *testing.T) {
	e := newEnv(t)
	vc, src, dst := e.seed(t)
	task := e.seedTask(t, vc, src, dst)
	_, tok := e.componentClient(t)
	const path = "/api/v1/components/heartbeat"
	snap := e.snapshot(t)
	for _, tc := range []struct {
		body, field string
	}{
		{`{"kind":"proxy","id":"src","extra":1}`, "extra"},
		{`{"kind":"proxy","id":"src"} {}`, "body"},
		{`{"kind":"coordinator","id":"src"}`, "kind"},
		{`{"kind":"proxy","id":""}`, "id"},
		{`{"kind":"proxy","id":"src","data_addr":"nope"}`, "data_addr"},
		{`{"kind":"filter","id":"host-1","vms":[{"task_id":"` + task.ID + `","status":"Success"}]}`, "vms[0].status"},
		{`{"kind":"proxy","id":"src","vms":[{"task_id":"","lag_seconds":1}]}`, "vms[0].task_id"},
		{`{"kind":"proxy","id":"src","vms":[{"task_id":"x","lag_seconds":-1}]}`, "vms[0].lag_seconds"},
		{`{"kind":"filter","id":"host-1","vcenter_id":"vc-nope"}`, "vcenter_id"},
	} {
		status, eb, body := e.raw(t, "POST", path, tok, tc.body)
		if status != http.StatusBadRequest && !(tc.field == "vcenter_id" && status == http.StatusNotFound) {
			t.Errorf("%s: %d %s", tc.body, status, trunc(body))
		}
		if eb.Error.Field != tc.field {
			t.Errorf("%s: field %q, want %q", tc.body, eb.Error.Field, tc.field)
		}
	}
	status, _, _ := e.raw(t, "POST", path, tok, `{"kind":"proxy","id":"src","vms":[{"task_id":"x"}]}`+strings.Repeat(" ", maxBody))
	if status != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized body: %d", status)
	}
	for _, bad := range []string{"", "wrong-secret"} {
		if status, _, _ := e.raw(t, "POST", path, bad, `{"kind":"proxy","id":"src"}`); status != http.StatusUnauthorized {
			t.Errorf("token %q: %d", bad, status)
		}
	}
	// The certificate of proxy "dst" cannot report for "src" nor for a host.
	leaf, err := e.ca.IssueComponent("dst", []string{"127.0.0.1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	cert := leaf.TLSCertificate(e.ca.Cert)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: pki.ClientTLS(e.ca.Cert, &cert)}}
	post := func(body string) int {
		t.Helper()
		r, err := hc.Post(e.url+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		return r.StatusCode
	}
	for _, body := range []string{`{"kind":"proxy","id":"src"}`, `{"kind":"filter","id":"host-1"}`} {
		if code := post(body); code != http.StatusForbidden {
			t.Errorf("%s with the certificate of dst: %d", body, code)
		}
	}
	if e.snapshot(t) != snap {
		t.Fatal("a refused heartbeat changed the state")
	}
	if code := post(`{"kind":"proxy","id":"dst"}`); code != http.StatusOK {
		t.Fatalf("own heartbeat with the certificate: %d", code)
	}
}

// A filter on a host the state does not know yet is found in the vCenter
// inventory by name or MoRef and the host recorded with its cluster; an
// unknown host is 404 and writes nothing.
func TestComponentHeartbeatCreatesHostFromInventory(t *testing.T) {
	ctx := context.Background()
	lab, err := vcsim.Start(ctx, vcsim.Options{ProtectedVMs: -1, ProxyVMs: -1}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lab.Close)
	var conn *controllers.Connector
	e := newEnv(t, func(c *ServerConfig) {
		conn = &controllers.Connector{Store: c.Store, Unseal: c.Store.Unseal, Dir: t.TempDir()}
		c.Inventory = &VCenterInventory{Get: func(ctx context.Context, id string) (InventorySource, error) { return conn.Get(ctx, id) },
			Timeout: 10 * time.Second}
	})
	t.Cleanup(func() { conn.Close(context.Background()) })
	vc, err := e.cl.AddVCenter(ctx, client.VCenterRequest{Name: "lab", URL: lab.SDKURL(),
		Username: vcsim.Username, Password: vcsim.Password, Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	cl, tok := e.componentClient(t)
	snap := e.snapshot(t)
	status, eb, body := e.raw(t, "POST", "/api/v1/components/heartbeat", tok, `{"kind":"filter","id":"no-such-host"}`)
	if status != http.StatusNotFound || eb.Error.Field != "id" {
		t.Fatalf("unknown host: %d %s", status, trunc(body))
	}
	if e.snapshot(t) != snap {
		t.Fatal("an unknown host changed the state")
	}

	name := vcsim.SourceHostName(0)
	cfg, err := cl.ComponentHeartbeat(ctx, model.ComponentReport{Kind: model.ComponentFilter, ID: name, DataAddr: "127.0.0.1:7200", NBDAddr: "127.0.0.1:10809"})
	if err != nil {
		t.Fatal(err)
	}
	var hosts []model.Host
	var cluster string
	e.node.Read(func(s *model.State) {
		for _, h := range s.Hosts {
			hosts = append(hosts, *h)
		}
	})
	if len(hosts) != 1 {
		t.Fatalf("hosts: %+v", hosts)
	}
	h := hosts[0]
	if h.Name != name || h.VCenterID != vc.ID || h.ID != vc.ID+"/"+h.MoRef || !strings.HasPrefix(h.ClusterID, vc.ID+"/") ||
		h.FilterAddr != "127.0.0.1:7200" || h.FilterNBD != "127.0.0.1:10809" || h.LastHeartbeat.IsZero() {
		t.Fatalf("host: %+v", h)
	}
	cluster = h.ClusterID
	if cfg.ID != h.ID || len(cfg.Tasks) != 0 {
		t.Fatalf("config: %+v", cfg)
	}
	// By MoRef now: the same host, found in the state.
	again, err := cl.ComponentHeartbeat(ctx, model.ComponentReport{Kind: model.ComponentFilter, ID: h.MoRef, VCenterID: vc.ID})
	if err != nil || again.ID != h.ID {
		t.Fatalf("by moref: %v %+v", err, again)
	}
	var n int
	e.node.Read(func(s *model.State) { n = len(s.Hosts) })
	if n != 1 || cluster == "" {
		t.Fatalf("%d hosts after the second heartbeat", n)
	}
	b, _ := json.Marshal(again)
	if !bytes.Contains(b, []byte(`"tasks":[]`)) {
		t.Fatalf("an empty config lists no tasks as []: %s", b)
	}
}

// A follower forwards a heartbeat to the leader, which records it and
// answers the config.
func TestComponentHeartbeatForwardedByFollower(t *testing.T) {
	e := newEnv(t)
	vc, src, dst := e.seed(t)
	task := e.seedTask(t, vc, src, dst)
	_, tok := e.componentClient(t)
	leaf, err := e.ca.Issue("n2", []string{"127.0.0.1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	st := model.NewState()
	st.Tokens["c"] = &model.Token{ID: "c", Role: model.TokenComponent, SHA256: hashToken(tokenSecret(tok))}
	st.Coordinators["n1"] = &model.Coordinator{ID: "n1", APIAddr: strings.TrimPrefix(e.url, "https://")}
	srv, err := NewServer(ServerConfig{NodeID: "n2", Store: &followerStore{leaderID: "n1", state: st}, CA: e.ca, NodeCert: leaf.TLSCertificate(e.ca.Cert)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	req := httptest.NewRequest("POST", "/api/v1/components/heartbeat", strings.NewReader(`{"kind":"proxy","id":"src","vms":[{"task_id":"`+task.ID+`","lag_seconds":2}]}`))
	req.Header.Set("Authorization", "Bearer "+tok)
	rec := httptest.NewRecorder()
	srv.Handler().ServeHTTP(rec, req)
	var cfg model.ComponentConfig
	if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &cfg) != nil || len(cfg.Tasks) != 1 {
		t.Fatalf("forwarded heartbeat: %d %s", rec.Code, trunc(rec.Body.Bytes()))
	}
	var lag float64
	e.node.Read(func(s *model.State) { lag = s.Tasks[task.ID].LagSeconds })
	if lag != 2 || len(st.Proxies) != 0 {
		t.Fatalf("leader lag %v; follower state changed: %v", lag, st.Proxies)
	}
}
