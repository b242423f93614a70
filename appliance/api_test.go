package appliance

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"github.com/continuum-cdp/continuum/internal/netutil"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/client"
	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/pki"
	"github.com/continuum-cdp/continuum/raftstore"
)

const testAdmin = "admin-secret"

type testEnv struct {
	node *raftstore.Node
	srv  *Server
	url  string
	ca   *pki.CA
	cl   *client.Client
	hc   *http.Client
}

func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := netutil.FreeLoopbackAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// newEnv bootstraps a one-node cluster in a temp dir and serves the API on
// a loopback TLS listener.
func newEnv(t *testing.T, opts ...func(*ServerConfig)) *testEnv {
	t.Helper()
	ca, err := pki.NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue("n1", []string{"127.0.0.1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	cert := leaf.TLSCertificate(ca.Cert)
	node, err := raftstore.Open(raftstore.Config{NodeID: "n1", DataDir: t.TempDir(), RaftAddr: freeAddr(t),
		TLS: pki.RaftServerTLS(ca.Cert, cert), Bootstrap: true,
		HeartbeatTimeout: 200 * time.Millisecond, ElectionTimeout: 200 * time.Millisecond,
		LeaderLeaseTimeout: 100 * time.Millisecond, CommitTimeout: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	waitFor(t, "leadership", node.IsLeader)
	ctx := context.Background()
	if err := node.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	scfg := ServerConfig{NodeID: "n1", Store: node, CA: ca, NodeCert: cert}
	for _, o := range opts {
		o(&scfg)
	}
	srv, err := NewServer(scfg)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewUnstartedServer(srv.Handler())
	hs.TLS = pki.APIServerTLS(ca.Cert, cert)
	hs.StartTLS()
	t.Cleanup(hs.Close)
	api := strings.TrimPrefix(hs.URL, "https://")
	for _, cmd := range []raftstore.Command{
		raftstore.PutCoordinator{Coordinator: model.Coordinator{ID: "n1", RaftAddr: "127.0.0.1:1", APIAddr: api}},
		raftstore.PutToken{Token: model.Token{ID: "tok-admin", Role: model.TokenAdmin, SHA256: hashToken(testAdmin)}},
		raftstore.PutToken{Token: model.Token{ID: "tok-join", Role: model.TokenJoin, SHA256: hashToken("join-secret")}},
	} {
		if _, err := node.Apply(ctx, cmd); err != nil {
			t.Fatal(err)
		}
	}
	cl, err := client.New(hs.URL, testAdmin, pki.CertPEM(ca.Cert))
	if err != nil {
		t.Fatal(err)
	}
	cl.RetryFor = 0
	return &testEnv{node: node, srv: srv, url: hs.URL, ca: ca, cl: cl,
		hc: &http.Client{Transport: &http.Transport{TLSClientConfig: pki.ClientTLS(ca.Cert, nil)}, Timeout: 10 * time.Second}}
}

// snapshot is a stale read of the whole state as JSON, to prove a refused
// request changed nothing.
func (e *testEnv) snapshot(t *testing.T) string {
	var b []byte
	e.node.Read(func(s *model.State) { b, _ = json.Marshal(s) })
	return string(b)
}

func (e *testEnv) raw(t *testing.T, method, path, token, body string) (int, client.ErrorBody, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, e.url+path, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := e.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var eb client.ErrorBody
	_ = json.Unmarshal(data, &eb)
	return resp.StatusCode, eb, data
}

func (e *testEnv) seed(t *testing.T) (vc *model.VCenter, src, dst *model.Proxy) {
	t.Helper()
	ctx := context.Background()
	vc, err := e.cl.AddVCenter(ctx, client.VCenterRequest{Name: "vc1", URL: "https://vc1.example/sdk", Username: "u", Password: "p"})
	if err != nil {
		t.Fatal(err)
	}
	src, err = e.cl.CreateProxy(ctx, &model.Proxy{Name: "src", Role: model.RoleSource, Kind: model.KindPhysical, Address: "127.0.0.1:9001", MaxTasks: 4})
	if err != nil {
		t.Fatal(err)
	}
	dst, err = e.cl.CreateProxy(ctx, &model.Proxy{Name: "dst", Role: model.RoleTarget, Kind: model.KindPhysical, Address: "127.0.0.1:9002", MaxTasks: 4})
	if err != nil {
		t.Fatal(err)
	}
	return vc, src, dst
}

func policyJSON(mut func(m map[string]any)) string {
	m := map[string]any{
		"name": "p1", "vcenter_id": "vc1", "vms": []any{map[string]any{"moref": "vm-1"}},
		"target": map[string]any{"vcenter_id": "vc1", "cluster": "c1", "datastore": "ds1"},
		"rpo":    "15s", "short_term_retention": "1h", "enabled": true,
	}
	if mut != nil {
		mut(m)
	}
	b, _ := json.Marshal(m)
	return string(b)
}

func TestBadInputChangesNothing(t *testing.T) {
	e := newEnv(t)
	e.seed(t)
	if _, err := e.cl.CreatePolicy(context.Background(), mustPolicy(t, policyJSON(func(m map[string]any) { m["name"] = "taken" }))); err != nil {
		t.Fatal(err)
	}
	if _, err := e.cl.CreateTrafficRule(context.Background(), &model.TrafficRule{Name: "r1", SourceCIDR: "10.0.0.0/8", TargetCIDR: "10.1.0.0/16"}); err != nil {
		t.Fatal(err)
	}
	big := `{"name":"` + strings.Repeat("a", maxBody+10) + `"}`
	cases := []struct {
		name, method, path, token, body string
		status                          int
		code, field                     string
	}{
		{"no token", "POST", "/api/v1/policies", "", policyJSON(nil), 401, model.CodeUnauthorized, ""},
		{"wrong token", "POST", "/api/v1/policies", "nope", policyJSON(nil), 401, model.CodeUnauthorized, ""},
		{"join token cannot write", "POST", "/api/v1/policies", "join-secret", policyJSON(nil), 403, model.CodeForbidden, ""},
		{"malformed json", "POST", "/api/v1/policies", testAdmin, `{"name":`, 400, model.CodeInvalid, "body"},
		{"not json", "POST", "/api/v1/policies", testAdmin, `hello`, 400, model.CodeInvalid, "body"},
		{"empty body", "POST", "/api/v1/policies", testAdmin, ``, 400, model.CodeInvalid, "body"},
		{"unknown field", "POST", "/api/v1/policies", testAdmin, policyJSON(func(m map[string]any) { m["colour"] = "red" }), 400, model.CodeInvalid, "colour"},
		{"trailing data", "POST", "/api/v1/policies", testAdmin, policyJSON(nil) + `{}`, 400, model.CodeInvalid, "body"},
		{"too large", "POST", "/api/v1/policies", testAdmin, big, 413, model.CodeTooLarge, ""},
		{"rpo zero", "POST", "/api/v1/policies", testAdmin, policyJSON(func(m map[string]any) { m["rpo"] = "0s" }), 400, model.CodeInvalid, "rpo"},
		{"rpo negative", "POST", "/api/v1/policies", testAdmin, policyJSON(func(m map[string]any) { m["rpo"] = "-5s" }), 400, model.CodeInvalid, "rpo"},
		{"rpo not a duration", "POST", "/api/v1/policies", testAdmin, policyJSON(func(m map[string]any) { m["rpo"] = "soon" }), 400, model.CodeInvalid, "rpo"},
		{"rpo a number", "POST", "/api/v1/policies", testAdmin, policyJSON(func(m map[string]any) { m["rpo"] = 15 }), 400, model.CodeInvalid, "rpo"},
		{"nested bad duration", "POST", "/api/v1/policies", testAdmin, policyJSON(func(m map[string]any) { m["target"] = map[string]any{"cluster": 5} }), 400, model.CodeInvalid, "target.cluster"},
		{"retention below rpo", "POST", "/api/v1/policies", testAdmin, policyJSON(func(m map[string]any) { m["rpo"] = "1m"; m["short_term_retention"] = "30s" }), 400, model.CodeInvalid, "short_term_retention"},
		{"unknown vcenter", "POST", "/api/v1/policies", testAdmin, policyJSON(func(m map[string]any) { m["vcenter_id"] = "nope" }), 404, model.CodeNotFound, "vcenter_id"},
		{"unknown target vcenter", "POST", "/api/v1/policies", testAdmin, policyJSON(func(m map[string]any) {
			m["target"] = map[string]any{"vcenter_id": "nope", "cluster": "c", "datastore": "d"}
		}), 404, model.CodeNotFound, "target.vcenter_id"},
		{"unknown proxy", "POST", "/api/v1/policies", testAdmin, policyJSON(func(m map[string]any) {
			m["proxy_selection"] = "manual"
			m["source_proxies"] = []string{"src"}
			m["target_proxies"] = []string{"ghost"}
		}), 404, model.CodeNotFound, "target_proxies[0]"},
		{"proxy wrong role", "POST", "/api/v1/policies", testAdmin, policyJSON(func(m map[string]any) {
			m["proxy_selection"] = "manual"
			m["source_proxies"] = []string{"dst"}
			m["target_proxies"] = []string{"dst"}
		}), 400, model.CodeInvalid, "source_proxies[0]"},
		{"duplicate policy name", "POST", "/api/v1/policies", testAdmin, policyJSON(func(m map[string]any) { m["name"] = "taken" }), 409, model.CodeConflict, "name"},
		{"no vms", "POST", "/api/v1/policies", testAdmin, policyJSON(func(m map[string]any) { m["vms"] = []any{} }), 400, model.CodeInvalid, "vms"},
		{"put without generation", "PUT", "/api/v1/policies/taken", testAdmin, policyJSON(func(m map[string]any) { m["name"] = "taken" }), 400, model.CodeInvalid, "generation"},
		{"put stale generation", "PUT", "/api/v1/policies/taken", testAdmin, policyJSON(func(m map[string]any) { m["name"] = "taken"; m["generation"] = 7 }), 412, model.CodeFailedPrecond, "generation"},
		{"put unknown policy", "PUT", "/api/v1/policies/ghost", testAdmin, policyJSON(func(m map[string]any) { m["generation"] = 1 }), 404, model.CodeNotFound, "id"},
		{"enable unknown", "POST", "/api/v1/policies/ghost/enable", testAdmin, "", 404, model.CodeNotFound, "id"},
		{"delete unknown", "DELETE", "/api/v1/policies/ghost", testAdmin, "", 404, model.CodeNotFound, "id"},
		{"duplicate proxy", "POST", "/api/v1/proxies", testAdmin, `{"name":"src","role":"source","kind":"physical","address":"127.0.0.1:1"}`, 409, model.CodeConflict, "name"},
		{"proxy bad role", "POST", "/api/v1/proxies", testAdmin, `{"name":"x","role":"sideways","kind":"physical","address":"127.0.0.1:1"}`, 400, model.CodeInvalid, "role"},
		{"proxy bad address", "POST", "/api/v1/proxies", testAdmin, `{"name":"x","role":"source","kind":"physical","address":"nowhere"}`, 400, model.CodeInvalid, "address"},
		{"proxy vm without cluster", "POST", "/api/v1/proxies", testAdmin, `{"name":"x","role":"source","kind":"vm","address":"127.0.0.1:1"}`, 400, model.CodeInvalid, "cluster_id"},
		{"proxy negative max", "POST", "/api/v1/proxies", testAdmin, `{"name":"x","role":"source","kind":"physical","address":"127.0.0.1:1","max_tasks":-1}`, 400, model.CodeInvalid, "max_tasks"},
		{"proxy unknown vcenter", "POST", "/api/v1/proxies", testAdmin, `{"name":"x","role":"source","kind":"physical","address":"127.0.0.1:1","vcenter_id":"nope"}`, 404, model.CodeNotFound, "vcenter_id"},
		{"delete proxy unknown", "DELETE", "/api/v1/proxies/ghost", testAdmin, "", 404, model.CodeNotFound, "id"},
		{"vcenter bad url", "POST", "/api/v1/vcenters", testAdmin, `{"name":"v","url":"ftp://x","username":"u","password":"p"}`, 400, model.CodeInvalid, "url"},
		{"vcenter no password", "POST", "/api/v1/vcenters", testAdmin, `{"name":"v","url":"https://x/sdk","username":"u"}`, 400, model.CodeInvalid, "password"},
		{"vcenter duplicate", "POST", "/api/v1/vcenters", testAdmin, `{"name":"vc1","url":"https://x/sdk","username":"u","password":"p"}`, 409, model.CodeConflict, "name"},
		{"vcenter in use", "DELETE", "/api/v1/vcenters/vc1", testAdmin, "", 412, model.CodeFailedPrecond, "id"},
		{"rule bad cidr", "POST", "/api/v1/traffic-rules", testAdmin, `{"name":"r","source_cidr":"10.0.0.0/33","target_cidr":"10.0.0.0/8"}`, 400, model.CodeInvalid, "source_cidr"},
		{"rule duplicate", "POST", "/api/v1/traffic-rules", testAdmin, `{"name":"r1","source_cidr":"10.0.0.0/8","target_cidr":"10.0.0.0/8"}`, 409, model.CodeConflict, "name"},
		{"rule negative throttle", "POST", "/api/v1/traffic-rules", testAdmin, `{"name":"r","source_cidr":"10.0.0.0/8","target_cidr":"10.0.0.0/8","throttle_bytes_per_sec":-1}`, 400, model.CodeInvalid, "throttle_bytes_per_sec"},
		{"rule unknown host traffic", "POST", "/api/v1/traffic-rules", testAdmin, `{"name":"r","source_cidr":"10.0.0.0/8","target_cidr":"10.0.0.0/8","host_traffic":"clear"}`, 400, model.CodeInvalid, "host_traffic"},
		{"token bad role", "POST", "/api/v1/tokens", testAdmin, `{"role":"admin"}`, 400, model.CodeInvalid, "role"},
		{"remove unknown member", "DELETE", "/api/v1/cluster/members/ghost", testAdmin, "", 404, model.CodeNotFound, "id"},
		{"remove last member", "DELETE", "/api/v1/cluster/members/n1", testAdmin, "", 412, model.CodeFailedPrecond, "id"},
		{"transfer to unknown", "POST", "/api/v1/cluster/transfer-leadership", testAdmin, `{"to":"ghost"}`, 404, model.CodeNotFound, "to"},
		{"join bad address", "POST", "/api/v1/cluster/join", "join-secret", `{"node_id":"n2","api_addr":"x","raft_addr":"127.0.0.1:5"}`, 400, model.CodeInvalid, "api_addr"},
		{"join admin-only route", "POST", "/api/v1/tokens", "join-secret", `{"role":"join"}`, 403, model.CodeForbidden, ""},
		{"unknown route", "GET", "/api/v1/nothing", testAdmin, "", 404, model.CodeNotFound, "path"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := e.snapshot(t)
			status, eb, raw := e.raw(t, tc.method, tc.path, tc.token, tc.body)
			if status != tc.status || eb.Error.Code != tc.code || eb.Error.Field != tc.field {
				t.Fatalf("got %d %q field %q (%s), want %d %q field %q", status, eb.Error.Code, eb.Error.Field, trunc(raw), tc.status, tc.code, tc.field)
			}
			if eb.Error.Message == "" {
				t.Fatal("error without a message")
			}
			if after := e.snapshot(t); after != before {
				t.Fatalf("state changed by a refused request")
			}
		})
	}
}

func trunc(b []byte) string {
	if len(b) > 300 {
		return string(b[:300]) + "..."
	}
	return string(b)
}

func mustPolicy(t *testing.T, js string) *model.Policy {
	t.Helper()
	var p model.Policy
	if err := json.Unmarshal([]byte(js), &p); err != nil {
		t.Fatal(err)
	}
	return &p
}

func TestTokensAndHealth(t *testing.T) {
	e := newEnv(t)
	status, _, body := e.raw(t, "GET", "/healthz", "", "")
	var h client.Health
	if status != 200 || json.Unmarshal(body, &h) != nil || h.NodeID != "n1" || h.Leader != "n1" || h.RaftState != "Leader" {
		t.Fatalf("healthz: %d %s", status, body)
	}
	if status, _, _ := e.raw(t, "GET", "/api/v1/policies", "", ""); status != 401 {
		t.Fatalf("no token: %d", status)
	}
	if status, _, _ := e.raw(t, "GET", "/api/v1/policies", "wrong", ""); status != 401 {
		t.Fatalf("wrong token: %d", status)
	}
	if status, _, _ := e.raw(t, "GET", "/api/v1/policies", testAdmin, ""); status != 200 {
		t.Fatalf("right token: %d", status)
	}
	tok, err := e.cl.CreateToken(context.Background(), model.TokenJoin)
	if err != nil {
		t.Fatal(err)
	}
	fp, secret, err := parseJoinToken(tok.Token)
	if err != nil || fp != pki.Fingerprint(e.ca.Cert.Raw) {
		t.Fatalf("token %q: %v", tok.Token, err)
	}
	// The secret is not stored, only its hash.
	if strings.Contains(e.snapshot(t), secret) {
		t.Fatal("token secret stored in clear")
	}
	// The new join token can fetch join material but not call admin routes.
	status, _, body = e.raw(t, "POST", "/api/v1/cluster/join", tok.Token, `{"node_id":"n2","api_addr":"127.0.0.1:7001","raft_addr":"127.0.0.1:7002"}`)
	var jr client.JoinResponse
	if status != 200 || json.Unmarshal(body, &jr) != nil || jr.ClusterID != e.node.ClusterID() || len(jr.ClusterKey) != 32 {
		t.Fatalf("join: %d %s", status, trunc(body))
	}
	leaf, err := pki.ParseCertPEM([]byte(jr.NodeCert))
	if err != nil || leaf.Subject.CommonName != "n2" {
		t.Fatalf("node cert: %v", err)
	}
	if _, err := leaf.Verify(x509Opts(e.ca)); err != nil {
		t.Fatalf("node cert not from the cluster CA: %v", err)
	}
	if status, _, _ := e.raw(t, "GET", "/api/v1/policies", tok.Token, ""); status != 403 {
		t.Fatalf("join token on admin route: %d", status)
	}
	// Metrics need a token like every route but /healthz, and count
	// requests by route and code.
	if status, _, _ := e.raw(t, "GET", "/metrics", "", ""); status != 401 {
		t.Fatalf("metrics without a token: %d", status)
	}
	if status, _, _ := e.raw(t, "GET", "/api/openapi.json", "", ""); status != 401 {
		t.Fatalf("openapi without a token: %d", status)
	}
	status, _, body = e.raw(t, "GET", "/metrics", testAdmin, "")
	for _, want := range []string{`continuum_http_requests_total{code="401",route="GET /api/v1/policies"} 2`, `continuum_http_requests_total{code="401",route="GET /metrics"} 1`, "continuum_raft_state 2", "continuum_raft_applied_index"} {
		if status != 200 || !bytes.Contains(body, []byte(want)) {
			t.Fatalf("metrics lack %q", want)
		}
	}
}

func TestCRUDEveryResource(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	vc, src, dst := e.seed(t)
	if len(vc.PasswordSealed) != 0 {
		t.Fatal("sealed password returned")
	}
	var sealed []byte
	e.node.Read(func(s *model.State) { sealed = s.VCenters[vc.ID].PasswordSealed })
	if plain, err := e.node.Unseal(sealed); err != nil || string(plain) != "p" {
		t.Fatalf("password not sealed with the cluster key: %q %v", plain, err)
	}
	if got, err := e.cl.GetVCenter(ctx, "vc1"); err != nil || got.ID != vc.ID || got.PasswordSealed != nil {
		t.Fatalf("get vcenter by name: %+v %v", got, err)
	}
	if l, err := e.cl.ListVCenters(ctx); err != nil || len(l) != 1 {
		t.Fatalf("list vcenters: %v %v", l, err)
	}
	if l, err := e.cl.ListClusters(ctx); err != nil || len(l) != 0 {
		t.Fatalf("clusters: %v %v", l, err)
	}
	if l, err := e.cl.ListHosts(ctx); err != nil || len(l) != 0 {
		t.Fatalf("hosts: %v %v", l, err)
	}

	// Proxies.
	if l, err := e.cl.ListProxies(ctx); err != nil || len(l) != 2 {
		t.Fatalf("list proxies: %v %v", l, err)
	}
	src.MaxTasks = 9
	if up, err := e.cl.UpdateProxy(ctx, "src", src); err != nil || up.MaxTasks != 9 || up.ID != src.ID {
		t.Fatalf("update proxy: %+v %v", up, err)
	}
	if got, err := e.cl.GetProxy(ctx, src.ID); err != nil || got.MaxTasks != 9 {
		t.Fatalf("get proxy: %+v %v", got, err)
	}

	// Policies, with names accepted for references.
	p := mustPolicy(t, policyJSON(func(m map[string]any) {
		m["proxy_selection"] = "manual"
		m["source_proxies"] = []string{"src"}
		m["target_proxies"] = []string{dst.ID}
	}))
	created, err := e.cl.CreatePolicy(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(created.ID, "pol-") || created.Generation != 1 || created.VCenterID != vc.ID || created.SourceProxies[0] != src.ID {
		t.Fatalf("created %+v", created)
	}
	if err := e.cl.DeleteProxy(ctx, "src"); !errors.Is(err, model.ErrPrecond) {
		t.Fatalf("deleting a proxy a policy uses: %v", err)
	}
	created.RPO = model.Duration(30 * time.Second)
	created.Enabled = false
	upd, err := e.cl.UpdatePolicy(ctx, "p1", created)
	if err != nil || upd.Generation != 2 || upd.RPO.D() != 30*time.Second || !upd.Enabled {
		t.Fatalf("update policy: %+v %v", upd, err)
	}
	if _, err := e.cl.UpdatePolicy(ctx, "p1", created); !errors.Is(err, model.ErrPrecond) {
		t.Fatalf("update with old generation: %v", err)
	}
	if d, err := e.cl.DisablePolicy(ctx, "p1"); err != nil || d.Enabled {
		t.Fatalf("disable: %+v %v", d, err)
	}
	st, err := e.cl.PolicyStatus(ctx, "p1")
	// A disabled policy reports Success, Warning or Error (nothing failed here).
	if err != nil || st.Enabled || st.Status != model.StatusSuccess || len(st.Tasks) != 0 {
		t.Fatalf("status: %+v %v", st, err)
	}
	if en, err := e.cl.EnablePolicy(ctx, created.ID); err != nil || !en.Enabled {
		t.Fatalf("enable: %+v %v", en, err)
	}
	task := model.VMTask{ID: created.ID + "/vm-1", PolicyID: created.ID, VMMoRef: "vm-1", Status: model.StatusInitialSync}
	if _, err := e.node.Apply(ctx, raftstore.PutTask{Task: task}); err != nil {
		t.Fatal(err)
	}
	st, err = e.cl.PolicyStatus(ctx, "p1")
	if err != nil || st.Status != model.StatusInitialSync || len(st.Tasks) != 1 {
		t.Fatalf("status with a task: %+v %v", st, err)
	}
	if l, err := e.cl.ListPolicies(ctx); err != nil || len(l) != 1 {
		t.Fatalf("list policies: %v", err)
	}
	if err := e.cl.DeletePolicy(ctx, "p1"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.cl.GetPolicy(ctx, "p1"); !errors.Is(err, model.ErrNotFound) {
		t.Fatalf("deleted policy: %v", err)
	}

	// Traffic rules.
	r, err := e.cl.CreateTrafficRule(ctx, &model.TrafficRule{Name: "wan", SourceCIDR: "10.0.0.0/8", TargetCIDR: "192.168.0.0/16", Encrypt: true, ThrottleBytesPerSec: 1 << 20,
		HostTraffic: model.HostTrafficIntegrity})
	if err != nil || !strings.HasPrefix(r.ID, "tr-") || r.HostTraffic != model.HostTrafficIntegrity {
		t.Fatalf("create rule: %+v %v", r, err)
	}
	if l, err := e.cl.ListTrafficRules(ctx); err != nil || len(l) != 1 || !reflect.DeepEqual(*l[0], *r) {
		t.Fatalf("list rules: %v %v", l, err)
	}
	if err := e.cl.DeleteTrafficRule(ctx, "wan"); err != nil {
		t.Fatal(err)
	}

	// Proxies and the vCenter go once nothing uses them.
	for _, id := range []string{"src", dst.ID} {
		if err := e.cl.DeleteProxy(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.cl.DeleteVCenter(ctx, "vc1"); err != nil {
		t.Fatal(err)
	}
	var empty bool
	e.node.Read(func(s *model.State) {
		empty = len(s.Policies)+len(s.Proxies)+len(s.VCenters)+len(s.TrafficRules)+len(s.Tasks) == 0
	})
	if !empty {
		t.Fatal("objects left after deleting everything")
	}

	// Cluster status of a one-node cluster.
	cs, err := e.cl.ClusterStatus(ctx)
	if err != nil || len(cs.Members) != 1 || cs.LeaderID != "n1" || !cs.Members[0].Leader || cs.Members[0].PID == 0 {
		t.Fatalf("cluster status: %+v %v", cs, err)
	}
	// Stale reads are served locally.
	e.cl.Stale = true
	if _, err := e.cl.ListPolicies(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestOpenAPIMatchesRoutes(t *testing.T) {
	e := newEnv(t)
	status, _, body := e.raw(t, "GET", "/api/openapi.json", testAdmin, "")
	if status != 200 {
		t.Fatalf("openapi: %d", status)
	}
	var doc struct {
		OpenAPI string                               `json:"openapi"`
		Paths   map[string]map[string]map[string]any `json:"paths"`
		Comp    struct {
			Schemas map[string]any `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("version %q", doc.OpenAPI)
	}
	documented := map[string]bool{}
	for path, ops := range doc.Paths {
		for m, op := range ops {
			documented[strings.ToUpper(m)+" "+path] = true
			if op["summary"] == "" {
				t.Errorf("%s %s has no summary", m, path)
			}
		}
	}
	// Every registered route is documented and routed by the mux.
	for _, rt := range e.srv.routes {
		if !documented[rt.Pattern()] {
			t.Errorf("route %s not documented", rt.Pattern())
		}
		for _, name := range []string{rt.Request, rt.Response} {
			if name = strings.TrimSuffix(name, "[]"); name != "" && doc.Comp.Schemas[name] == nil {
				t.Errorf("route %s names schema %q that is not defined", rt.Pattern(), name)
			}
		}
	}
	// Every documented path is routed: the mux finds a registered
	// pattern for it (not the catch-all).
	for p := range documented {
		method, path, _ := strings.Cut(p, " ")
		req := httptest.NewRequest(method, strings.ReplaceAll(path, "{id}", "x"), nil)
		_, pattern := e.srv.mux.Handler(req)
		if pattern != p {
			t.Errorf("documented %s is routed to %q", p, pattern)
		}
	}
	if len(documented) != len(e.srv.routes) {
		t.Errorf("%d documented operations, %d routes", len(documented), len(e.srv.routes))
	}
}
