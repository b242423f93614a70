package appliance

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/appliance/controllers"
	"github.com/continuum-cdp/continuum/client"
	"github.com/continuum-cdp/continuum/filter/target"
	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/pki"
	"github.com/continuum-cdp/continuum/raftstore"
)

// stateStore is a controllers.Store over a fixed state.
type stateStore struct{ st *model.State }

func (s stateStore) Read(fn func(*model.State)) { fn(s.st) }
func (s stateStore) ReadConsistent(_ context.Context, fn func(*model.State)) error {
	fn(s.st)
	return nil
}
func (s stateStore) Apply(context.Context, raftstore.Command) (any, error) {
	return nil, errors.New("read-only")
}

func TestComponentsConfigureNamesMissingComponents(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	fresh, stale := now.Add(-2*time.Second), now.Add(-time.Minute)
	st := model.NewState()
	st.Hosts["vc/host-1"] = &model.Host{ID: "vc/host-1", MoRef: "host-1", Name: "esx-1", FilterAddr: "127.0.0.1:1", LastHeartbeat: fresh}
	st.Hosts["vc/host-2"] = &model.Host{ID: "vc/host-2", MoRef: "host-2", Name: "esx-2", FilterAddr: "127.0.0.1:2", LastHeartbeat: fresh}
	st.Proxies["px-s"] = &model.Proxy{ID: "px-s", Name: "src", Role: model.RoleSource, LastHeartbeat: fresh}
	st.Proxies["px-t"] = &model.Proxy{ID: "px-t", Name: "dst", Role: model.RoleTarget, LastHeartbeat: fresh}
	c := &Components{Store: stateStore{st}, HeartbeatTimeout: 15 * time.Second, Now: func() time.Time { return now }}
	dp := controllers.DataPath{
		Task:        model.VMTask{ID: "p/vm-1", VMName: "web", SourceHost: "vc/host-1", TargetHost: "vc/host-2"},
		SourceProxy: *st.Proxies["px-s"], TargetProxy: *st.Proxies["px-t"],
	}
	if err := c.Configure(context.Background(), dp); err != nil {
		t.Fatalf("every component alive: %v", err)
	}

	for _, tc := range []struct {
		name   string
		break_ func()
		want   []string
	}{
		{"target filter silent", func() { st.Hosts["vc/host-2"].LastHeartbeat = stale }, []string{"filter of target host esx-2", "has not reported for 1m0s"}},
		{"source filter never", func() { st.Hosts["vc/host-1"].LastHeartbeat = time.Time{} }, []string{"filter of source host esx-1", "never reported"}},
		{"target filter without data address", func() { st.Hosts["vc/host-2"].FilterAddr = "" }, []string{"target host esx-2", "data address"}},
		{"source proxy silent", func() { st.Proxies["px-s"].LastHeartbeat = stale }, []string{"source proxy src has not reported"}},
		{"target proxy gone", func() { delete(st.Proxies, "px-t") }, []string{"target proxy px-t is no longer registered"}},
		{"target host unknown", func() { delete(st.Hosts, "vc/host-2") }, []string{"filter of target host vc/host-2 has never reported"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			saved := st.Clone()
			defer func() { *st = *saved }()
			tc.break_()
			err := c.Configure(context.Background(), dp)
			if err == nil {
				t.Fatal("configured a path with a missing component")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Fatalf("error %q does not say %q", err, w)
				}
			}
		})
	}

	// Both sides missing: both are named.
	st.Hosts["vc/host-1"].LastHeartbeat = stale
	st.Proxies["px-t"].LastHeartbeat = time.Time{}
	err := c.Configure(context.Background(), dp)
	if err == nil || !strings.Contains(err.Error(), "esx-1") || !strings.Contains(err.Error(), "target proxy dst") {
		t.Fatalf("error %v should name the source filter and the target proxy", err)
	}
}

// fakeFilter is a managed filter's admin API: HTTPS with a component
// certificate, requiring a cluster client certificate that is not a
// component's.
type fakeFilter struct {
	srv   *httptest.Server
	image []byte
	idle  bool // long-term answers 412: nothing new since the last one

	mu       sync.Mutex
	longTerm []string
	peers    []string
	// purge: the journals this filter has ("vm" → replicating it still)
	journals map[string]bool
	purged   []string
}

func newFakeFilter(t *testing.T, ca *pki.CA, image []byte) *fakeFilter {
	t.Helper()
	leaf, err := ca.IssueComponent("filter-host-2", []string{"127.0.0.1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeFilter{image: image, journals: map[string]bool{}}
	writeErr := func(w http.ResponseWriter, code int, c, msg string) {
		var e target.APIError
		e.Error.Code, e.Error.Message = c, msg
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(e)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/vms/{vm}/points", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("vm") != "web" {
			writeErr(w, 404, model.CodeNotFound, "vm "+r.PathValue("vm")+" not found")
			return
		}
		_ = json.NewEncoder(w).Encode([]target.PointInfo{
			{ID: 1, Time: time.Unix(100, 0).UTC(), Kind: model.PointLongTerm},
			{ID: 2, Time: time.Unix(115, 0).UTC(), Kind: model.PointShortTerm},
		})
	})
	mux.HandleFunc("GET /v1/vms/{vm}/points/{point}/disks/{disk}/image", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("vm") != "web" || r.PathValue("point") != "2" || r.PathValue("disk") != "2000" {
			writeErr(w, 404, model.CodeNotFound, "no such point or disk")
			return
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(f.image)))
		_, _ = w.Write(f.image)
	})
	mux.HandleFunc("POST /v1/vms/{vm}/long-term", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.longTerm = append(f.longTerm, r.PathValue("vm"))
		idle := f.idle
		f.mu.Unlock()
		if idle {
			writeErr(w, http.StatusPreconditionFailed, model.CodeFailedPrecond, "no short-term point since 1")
			return
		}
		_ = json.NewEncoder(w).Encode(target.PointInfo{ID: 3, Time: time.Unix(130, 0).UTC(), Kind: model.PointLongTerm})
	})
	mux.HandleFunc("DELETE /v1/vms/{vm}", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		busy, ok := f.journals[r.PathValue("vm")]
		switch {
		case !ok:
			writeErr(w, 404, model.CodeNotFound, "vm "+r.PathValue("vm")+" not found")
		case busy:
			writeErr(w, 409, model.CodeConflict, "it is still in this filter's configuration")
		default:
			delete(f.journals, r.PathValue("vm"))
			f.purged = append(f.purged, r.PathValue("vm"))
			w.WriteHeader(http.StatusNoContent)
		}
	})
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		peer := r.TLS.PeerCertificates[0]
		f.mu.Lock()
		f.peers = append(f.peers, peer.Subject.CommonName)
		f.mu.Unlock()
		if pki.IsComponent(peer) {
			writeErr(w, 403, model.CodeForbidden, "component certificates may not call the admin API")
			return
		}
		mux.ServeHTTP(w, r)
	}))
	f.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are the point of one test
	f.srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{leaf.TLSCertificate(ca.Cert)},
		ClientCAs:    pki.Pool(ca.Cert),
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeFilter) addr() string { return strings.TrimPrefix(f.srv.URL, "https://") }

// protectWeb puts a configured task of VM "web" (source on host-1, replica
// on host-2 whose filter is f) into the state.
func protectWeb(t *testing.T, e *testEnv, f *fakeFilter) model.VMTask {
	t.Helper()
	ctx := context.Background()
	vc, src, dst := e.seed(t)
	p, err := e.cl.CreatePolicy(ctx, mustPolicy(t, policyJSON(nil)))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	task := model.VMTask{ID: p.ID + "/vm-1", PolicyID: p.ID, VMMoRef: "vm-1", VMName: "web",
		SourceHost: vc.ID + "/host-1", TargetHost: vc.ID + "/host-2", SourceProxy: src.ID, TargetProxy: dst.ID,
		Disks:  []model.DiskMap{{Key: 2000, CapacityBytes: 1 << 20}, {Key: 2001, CapacityBytes: 2 << 20}},
		Status: model.StatusSyncing, UpdatedAt: now}
	for _, cmd := range []raftstore.Command{
		raftstore.PutHost{Host: model.Host{ID: vc.ID + "/host-1", VCenterID: vc.ID, MoRef: "host-1", Name: "esx-1",
			FilterNBD: "127.0.0.1:10809", LastHeartbeat: now}},
		raftstore.PutHost{Host: model.Host{ID: vc.ID + "/host-2", VCenterID: vc.ID, MoRef: "host-2", Name: "esx-2",
			FilterAddr: "127.0.0.1:1", FilterAdmin: f.addr(), LastHeartbeat: now}},
		raftstore.PutTask{Task: task},
	} {
		if _, err := e.node.Apply(ctx, cmd); err != nil {
			t.Fatal(err)
		}
	}
	return task
}

func TestVMRoutesReachTheTargetFilter(t *testing.T) {
	e := newEnv(t)
	image := bytes.Repeat([]byte("cdp!"), 64<<10)
	copy(image[100<<10:], make([]byte, 64<<10)) // a zero block, skipped by the sparse writer
	f := newFakeFilter(t, e.ca, image)
	task := protectWeb(t, e, f)
	ctx := context.Background()

	disks, err := e.cl.VMDisks(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if disks.VM != "web" || disks.Host != task.SourceHost || len(disks.Disks) != 2 ||
		disks.Disks[0].NBDURI != "nbd://127.0.0.1:10809/web/2000" || disks.Disks[1].CapacityBytes != 2<<20 {
		t.Fatalf("disks %+v", disks)
	}
	if byMoRef, err := e.cl.VMDisks(ctx, "vm-1"); err != nil || byMoRef.VM != "web" {
		t.Fatalf("by MoRef: %+v %v", byMoRef, err)
	}
	if _, err := e.cl.VMDisks(ctx, "nope"); !errors.Is(err, model.ErrNotFound) {
		t.Fatalf("unknown VM: %v", err)
	}

	pts, err := e.cl.RestorePoints(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if len(pts) != 2 || pts[1].ID != 2 || pts[0].Kind != model.PointLongTerm {
		t.Fatalf("points %+v", pts)
	}

	out := filepath.Join(t.TempDir(), "web-2000.img")
	n, err := e.cl.ExportRestorePoint(ctx, "web", 2000, 2, out)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(len(image)) || !bytes.Equal(got, image) {
		t.Fatalf("exported %d bytes, equal %v", n, bytes.Equal(got, image))
	}
	// A point the filter does not have: its 404 comes through and no file
	// is left behind.
	bad := filepath.Join(t.TempDir(), "bad.img")
	if _, err := e.cl.ExportRestorePoint(ctx, "web", 2000, 9, bad); !errors.Is(err, model.ErrNotFound) {
		t.Fatalf("unknown point: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Dir(bad)); len(ents) != 0 {
		t.Fatalf("a failed export left %v", ents)
	}

	// The scheduler's path: a long-term point on the target host's filter.
	comps := &Components{Store: e.node, Filters: NewFilterAdmin(e.ca.Cert, e.srv.cfg.NodeCert)}
	defer comps.Filters.Close()
	at, err := comps.CreateLongTerm(ctx, task)
	if err != nil {
		t.Fatal(err)
	}
	if !at.Equal(time.Unix(130, 0)) {
		t.Fatalf("long-term point at %v", at)
	}
	f.mu.Lock()
	lt, peers := f.longTerm, f.peers
	f.mu.Unlock()
	if len(lt) != 1 || lt[0] != "web" {
		t.Fatalf("long-term calls %v", lt)
	}
	for _, p := range peers {
		if p != "n1" {
			t.Fatalf("filter saw client certificate %q, want the node's", p)
		}
	}

	// Nothing written since the last long-term point: that point stands.
	f.mu.Lock()
	f.idle = true
	f.mu.Unlock()
	if at, err := comps.CreateLongTerm(ctx, task); err != nil || !at.Equal(time.Unix(100, 0)) {
		t.Fatalf("idle VM: point at %v, %v; want the newest long-term point's time", at, err)
	}

	// A task whose replica has no host yet cannot get a point.
	host := task.TargetHost
	task.TargetHost = ""
	if _, err := comps.CreateLongTerm(ctx, task); err == nil || !strings.Contains(err.Error(), "not placed on a host") {
		t.Fatalf("no target host: %v", err)
	}

	// The reaper's path: purge a deleted replica's journal. Refused while
	// the filter still replicates the VM; gone already is success; a host
	// the state does not know has nothing to purge.
	f.mu.Lock()
	f.journals["web"] = true
	f.mu.Unlock()
	if err := comps.PurgeJournal(ctx, host, "web"); err == nil || !strings.Contains(err.Error(), "configuration") {
		t.Fatalf("purge while replicating: %v", err)
	}
	f.mu.Lock()
	f.journals["web"] = false
	f.mu.Unlock()
	for range 2 {
		if err := comps.PurgeJournal(ctx, host, "web"); err != nil {
			t.Fatalf("purge: %v", err)
		}
	}
	if err := comps.PurgeJournal(ctx, "vc-x/host-77", "web"); err != nil {
		t.Fatalf("purge on an unknown host: %v", err)
	}
	f.mu.Lock()
	purged := f.purged
	f.mu.Unlock()
	if len(purged) != 1 || purged[0] != "web" {
		t.Fatalf("journals purged: %v", purged)
	}
}

func TestFilterAdminRefusesAFilterOfAnotherCA(t *testing.T) {
	e := newEnv(t)
	other, err := pki.NewCA("other-ca")
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeFilter(t, other, []byte("x"))
	protectWeb(t, e, f)
	_, err = e.cl.RestorePoints(context.Background(), "web")
	var ae *client.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusBadGateway || !strings.Contains(ae.Message, "certificate") {
		t.Fatalf("a filter of another CA answered: %v", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.peers) != 0 {
		t.Fatalf("the request reached the foreign filter: %v", f.peers)
	}
}

// TestDeletePolicyWithReplicasAPI: ?delete_replicas=true marks the
// policy's replicas for deletion; a bad value or a failed-over replica is
// refused with nothing changed.
func TestDeletePolicyWithReplicasAPI(t *testing.T) {
	e := newEnv(t)
	f := newFakeFilter(t, e.ca, nil)
	task := protectWeb(t, e, f)
	ctx := context.Background()
	rep := model.Replica{ID: "vc/vm-91", PolicyID: task.PolicyID, SourceVM: task.VMMoRef, VCenterID: "vc", MoRef: "vm-91", Name: "web_replica", FailedOver: true}
	if _, err := e.node.Apply(ctx, raftstore.PutReplica{Replica: rep}); err != nil {
		t.Fatal(err)
	}
	replica := func() model.Replica {
		var r model.Replica
		e.node.Read(func(s *model.State) { r = *s.Replicas[rep.ID] })
		return r
	}
	if err := e.cl.Do(ctx, http.MethodDelete, "/api/v1/policies/"+task.PolicyID+"?delete_replicas=maybe", nil, nil); !errors.Is(err, model.ErrInvalid) {
		t.Fatalf("bad delete_replicas: %v", err)
	}
	if err := e.cl.DeletePolicyWithReplicas(ctx, task.PolicyID); !errors.Is(err, model.ErrConflict) {
		t.Fatalf("failed-over replica: %v", err)
	}
	if _, err := e.cl.GetPolicy(ctx, task.PolicyID); err != nil || replica().Deleting {
		t.Fatalf("a refused delete changed something: %v %+v", err, replica())
	}
	rep.FailedOver = false
	if _, err := e.node.Apply(ctx, raftstore.PutReplica{Replica: rep}); err != nil {
		t.Fatal(err)
	}
	if err := e.cl.DeletePolicyWithReplicas(ctx, task.PolicyID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.cl.GetPolicy(ctx, task.PolicyID); !errors.Is(err, model.ErrNotFound) {
		t.Fatalf("policy after delete: %v", err)
	}
	if r := replica(); !r.Deleting || r.JournalVM != "web" || r.TargetHost != task.TargetHost {
		t.Fatalf("replica after delete with replicas: %+v", r)
	}
}
