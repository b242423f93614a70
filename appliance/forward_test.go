package appliance

import (
	"net/http"
	"net/http/httptest"
	"strings"
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
