package appliance

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"encoding/json"
	"github.com/continuum-cdp/continuum/client"
	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/pki"
)

// followerStore is a follower whose leader is leaderID; only what the
// forwarding path touches is implemented.
type followerStore struct {
	Store
	leaderID string
	state    *model.State
}

func (f *followerStore) IsLeader() bool             { return false }
func (f *followerStore) Leader() (string, string)   { return f.leaderID, "" }
func (f *followerStore) Read(fn func(*model.State)) { fn(f.state) }
func (f *followerStore) Stats() map[string]string   { return map[string]string{"state": "Follower"} }
func (f *followerStore) AppliedIndex() uint64       { return 7 }

func TestFollowerWithoutLeaderAnswersUnavailable(t *testing.T) {
	ca, _ := pki.NewCA("t")
	leaf, _ := ca.Issue("n2", []string{"127.0.0.1"}, 0)
	st := model.NewState()
	st.Tokens["a"] = &model.Token{ID: "a", Role: model.TokenAdmin, SHA256: hashToken(testAdmin)}
	fs := &followerStore{state: st}
	srv, err := NewServer(ServerConfig{NodeID: "n2", Store: fs, CA: ca, NodeCert: leaf.TLSCertificate(ca.Cert)})
	if err != nil {
		t.Fatal(err)
	}
	do := func(method, path string, hdr map[string]string) (int, string) {
		req := httptest.NewRequest(method, path, strings.NewReader(`{"name":"r","source_cidr":"10.0.0.0/8","target_cidr":"10.0.0.0/8"}`))
		req.Header.Set("Authorization", "Bearer "+testAdmin)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		rec := httptest.NewRecorder()
		srv.Handler().ServeHTTP(rec, req)
		var eb client.ErrorBody
		_ = json.Unmarshal(rec.Body.Bytes(), &eb)
		return rec.Code, eb.Error.Code
	}
	// No leader known.
	if code, c := do("POST", "/api/v1/traffic-rules", nil); code != http.StatusServiceUnavailable || c != model.CodeUnavailable {
		t.Fatalf("no leader: %d %s", code, c)
	}
	if code, _ := do("GET", "/api/v1/traffic-rules", nil); code != http.StatusServiceUnavailable {
		t.Fatalf("linearizable read without leader: %d", code)
	}
	// A stale read is answered locally.
	if code, _ := do("GET", "/api/v1/traffic-rules?stale=true", nil); code != http.StatusOK {
		t.Fatalf("stale read: %d", code)
	}
	// Leader known but its API address not yet replicated.
	fs.leaderID = "n1"
	if code, c := do("POST", "/api/v1/traffic-rules", nil); code != http.StatusServiceUnavailable || c != model.CodeUnavailable {
		t.Fatalf("leader without address: %d %s", code, c)
	}
	// A token this follower does not know yet is left to the leader; with
	// no leader address known, it is refused here.
	if code, c := doTok(srv, "nope"); code != http.StatusUnauthorized || c != model.CodeUnauthorized {
		t.Fatalf("unknown token without leader address: %d %s", code, c)
	}
	// A request already forwarded once is not forwarded again.
	st.Coordinators["n1"] = &model.Coordinator{ID: "n1", APIAddr: "127.0.0.1:1"}
	if code, _ := do("POST", "/api/v1/traffic-rules", map[string]string{forwardedHeader: "n3"}); code != http.StatusServiceUnavailable {
		t.Fatalf("forward loop: %d", code)
	}
	if code, _ := doTok(srv, "nope"); code != http.StatusServiceUnavailable {
		t.Fatalf("unknown token is sent to the (unreachable) leader: %d", code)
	}
	// An unreachable leader gives 503 so that clients retry.
	if code, c := do("POST", "/api/v1/traffic-rules", nil); code != http.StatusServiceUnavailable || c != model.CodeUnavailable {
		t.Fatalf("unreachable leader: %d %s", code, c)
	}
	// Health and cluster-local routes still answer on a follower.
	if code, _ := do("GET", "/healthz", nil); code != http.StatusOK {
		t.Fatalf("healthz: %d", code)
	}
	if len(st.TrafficRules) != 0 {
		t.Fatal("follower changed state")
	}
}

func doTok(srv *Server, tok string) (int, string) {
	req := httptest.NewRequest("GET", "/api/v1/policies", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	rec := httptest.NewRecorder()
	srv.Handler().ServeHTTP(rec, req)
	var eb client.ErrorBody
	_ = json.Unmarshal(rec.Body.Bytes(), &eb)
	return rec.Code, eb.Error.Code
}

// TestFollowerPassesOnUnknownVM: restore points are read on the node that
// receives the request, but a follower that has not yet applied a
// brand-new VM passes the request to the leader instead of answering 404.
func TestFollowerPassesOnUnknownVM(t *testing.T) {
	ca, _ := pki.NewCA("t")
	leaderLeaf, _ := ca.Issue("n1", []string{"127.0.0.1"}, 0)
	leaf, _ := ca.Issue("n2", []string{"127.0.0.1"}, 0)
	var mu sync.Mutex
	var seen []string // paths the leader answered, with the forwarding node
	leader := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.URL.Path+" by "+r.Header.Get(forwardedHeader))
		mu.Unlock()
		if strings.HasSuffix(r.URL.Path, "/image") {
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Write([]byte("image bytes"))
			return
		}
		writeJSON(w, http.StatusOK, []client.RestorePointInfo{{ID: 42, Kind: "short-term"}})
	}))
	leader.TLS = pki.APIServerTLS(ca.Cert, leaderLeaf.TLSCertificate(ca.Cert))
	leader.StartTLS()
	defer leader.Close()

	st := model.NewState()
	st.Tokens["a"] = &model.Token{ID: "a", Role: model.TokenAdmin, SHA256: hashToken(testAdmin)}
	// a VM this follower knows, on a host whose filter is not registered
	st.Tasks["t1"] = &model.VMTask{ID: "t1", PolicyID: "p1", VMName: "known", VMMoRef: "vm-1"}
	fs := &followerStore{state: st}
	srv, err := NewServer(ServerConfig{NodeID: "n2", Store: fs, CA: ca, NodeCert: leaf.TLSCertificate(ca.Cert)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	get := func(path string, hdr map[string]string) (int, string) {
		req := httptest.NewRequest("GET", path, nil)
		req.Header.Set("Authorization", "Bearer "+testAdmin)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		rec := httptest.NewRecorder()
		srv.Handler().ServeHTTP(rec, req)
		return rec.Code, rec.Body.String()
	}
	answered := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}

	// no leader known: answered here, 404
	if code, body := get("/api/v1/vms/fresh/restore-points", nil); code != http.StatusNotFound {
		t.Fatalf("unknown VM without a leader: %d %s", code, body)
	}
	fs.leaderID = "n1"
	st.Coordinators["n1"] = &model.Coordinator{ID: "n1", APIAddr: strings.TrimPrefix(leader.URL, "https://")}

	code, body := get("/api/v1/vms/fresh/restore-points", nil)
	if code != http.StatusOK || !strings.Contains(body, `"id": 42`) {
		t.Fatalf("unknown VM on a follower: want the leader's answer, got %d %s", code, body)
	}
	code, body = get("/api/v1/vms/fresh/restore-points/42/disks/2000/image", nil)
	if code != http.StatusOK || body != "image bytes" {
		t.Fatalf("image of an unknown VM on a follower: want the leader's stream, got %d %q", code, body)
	}
	want := []string{"/api/v1/vms/fresh/restore-points by n2", "/api/v1/vms/fresh/restore-points/42/disks/2000/image by n2"}
	if got := answered(); !slices.Equal(got, want) {
		t.Fatalf("leader answered %q, want %q", got, want)
	}

	// a VM the follower knows is answered here, even with a leader
	if code, _ := get("/api/v1/vms/known/restore-points", nil); code == http.StatusOK {
		t.Fatalf("known VM: the follower has no filter for it, yet got 200")
	}
	// and a request that was already forwarded once is not sent again
	if code, _ := get("/api/v1/vms/fresh/restore-points", map[string]string{forwardedHeader: "n3"}); code != http.StatusNotFound {
		t.Fatalf("forwarded request for an unknown VM: %d", code)
	}
	if got := answered(); len(got) != 2 {
		t.Fatalf("leader answered more than the unknown VM's two requests: %q", got)
	}
}
