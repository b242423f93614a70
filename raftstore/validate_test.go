package raftstore

import (
	"bytes"
	"errors"
	"testing"

	"github.com/continuum-cdp/continuum/internal/model"
)

// TestApplyStateErrors checks that the FSM enforces the rules itself (so two
// racing proposers cannot both win), names the field, and changes nothing.
func TestApplyStateErrors(t *testing.T) {
	f := NewFSM(nil)
	must := func(c Command) any {
		t.Helper()
		res := applyLog(t, f, c)
		if res.Err != nil {
			t.Fatalf("apply %T: %v", c, res.Err)
		}
		return res.Value
	}
	must(PutVCenter{VCenter: testVCenter("vc1", "one"), Create: true})
	must(PutVCenter{VCenter: testVCenter("vc2", "two"), Create: true})
	must(PutProxy{Proxy: testProxy("px1", "proxy-1"), Create: true})
	must(PutProxy{Proxy: testProxy("px2", "proxy-2"), Create: true})
	manual := testPolicy("p1", "gold", "vc1")
	manual.ProxySelection = model.SelectManual
	manual.SourceProxies, manual.TargetProxies = []string{"px1"}, []string{"px1"}
	got := must(PutPolicy{Policy: manual, Create: true}).(*model.Policy)
	if got.Generation != 1 {
		t.Fatalf("created policy generation %d, want 1", got.Generation)
	}
	upd := manual
	upd.Description = "changed"
	upd.CreatedAt = t0.Add(99)
	got = must(PutPolicy{Policy: upd, ExpectGeneration: 1}).(*model.Policy)
	if got.Generation != 2 || !got.CreatedAt.Equal(t0) {
		t.Fatalf("updated policy generation %d created %v, want 2 and the original time", got.Generation, got.CreatedAt)
	}
	got.Name = "mutated by caller"
	f.Read(func(s *model.State) {
		if s.Policies["p1"].Name != "gold" {
			t.Fatalf("returned policy aliases the state")
		}
	})

	badPolicy := testPolicy("p9", "silver", "vc1")
	badPolicy.RPO = 0
	missingRef := testPolicy("p9", "silver", "vc-nope")
	vcUsed := testPolicy("p2", "bronze", "vc2")
	must(PutPolicy{Policy: vcUsed, Create: true})
	badProxy := testProxy("px3", "proxy-3")
	badProxy.Address = "nope"

	cases := []struct {
		name  string
		cmd   Command
		is    error
		field string
	}{
		{"duplicate policy id", PutPolicy{Policy: testPolicy("p1", "other", "vc1"), Create: true}, model.ErrConflict, "id"},
		{"duplicate policy name", PutPolicy{Policy: testPolicy("p3", "gold", "vc1"), Create: true}, model.ErrConflict, "name"},
		{"rename onto existing name", PutPolicy{Policy: testPolicy("p2", "gold", "vc2")}, model.ErrConflict, "name"},
		{"update missing policy", PutPolicy{Policy: testPolicy("p7", "x", "vc1")}, model.ErrNotFound, "id"},
		{"generation mismatch", PutPolicy{Policy: upd, ExpectGeneration: 1}, model.ErrPrecond, "generation"},
		{"invalid policy", PutPolicy{Policy: badPolicy, Create: true}, model.ErrInvalid, "rpo"},
		{"policy names unknown vcenter", PutPolicy{Policy: missingRef, Create: true}, model.ErrNotFound, "vcenter_id"},
		{"delete proxy of manual policy", DeleteProxy{ID: "px1"}, model.ErrPrecond, "id"},
		{"delete vcenter used as source", DeleteVCenter{ID: "vc1"}, model.ErrPrecond, "id"},
		{"delete vcenter used as target", DeleteVCenter{ID: "vc2"}, model.ErrPrecond, "id"},
		{"duplicate proxy name", PutProxy{Proxy: testProxy("px3", "proxy-1"), Create: true}, model.ErrConflict, "name"},
		{"invalid proxy", PutProxy{Proxy: badProxy, Create: true}, model.ErrInvalid, "address"},
		{"duplicate vcenter name", PutVCenter{VCenter: testVCenter("vc3", "one"), Create: true}, model.ErrConflict, "name"},
		{"update missing vcenter", PutVCenter{VCenter: testVCenter("vc3", "three")}, model.ErrNotFound, "id"},
		{"heartbeat of missing proxy", ProxyHeartbeat{ID: "px9", At: t0}, model.ErrNotFound, "id"},
		{"task of missing policy", PutTask{Task: model.VMTask{ID: "t1", PolicyID: "p9"}}, model.ErrNotFound, "policy_id"},
		{"host of missing vcenter", PutHost{Host: model.Host{ID: "h1", VCenterID: "vc9"}}, model.ErrNotFound, "vcenter_id"},
		{"traffic rule bad cidr", PutTrafficRule{TrafficRule: model.TrafficRule{ID: "r1", Name: "r", SourceCIDR: "x", TargetCIDR: "10.0.0.0/8"}, Create: true}, model.ErrInvalid, "source_cidr"},
		{"token without hash", PutToken{Token: model.Token{ID: "k", Role: model.TokenAdmin}}, model.ErrInvalid, "sha256"},
		{"delete missing tenant", DeleteTenant{ID: "tn9"}, model.ErrNotFound, "id"},
		{"missing id", PutReplica{Replica: model.Replica{Name: "x"}}, model.ErrInvalid, "id"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := fsmBytes(t, f)
			res := applyLog(t, f, tc.cmd)
			if !errors.Is(res.Err, tc.is) {
				t.Fatalf("got %v, want %v", res.Err, tc.is)
			}
			if got := model.ErrorField(res.Err); got != tc.field {
				t.Fatalf("error %q names field %q, want %q", res.Err, got, tc.field)
			}
			if !bytes.Equal(before, fsmBytes(t, f)) {
				t.Fatalf("failed command changed the state")
			}
		})
	}

	// Deleting the policy deletes its tasks, and then frees the proxy.
	must(PutTask{Task: model.VMTask{ID: "p1/vm-1", PolicyID: "p1"}})
	must(PutTask{Task: model.VMTask{ID: "p2/vm-1", PolicyID: "p2"}})
	must(DeletePolicy{ID: "p1"})
	f.Read(func(s *model.State) {
		if _, ok := s.Tasks["p1/vm-1"]; ok || len(s.Tasks) != 1 {
			t.Fatalf("tasks after deleting policy p1: %v", s.Tasks)
		}
	})
	must(DeleteProxy{ID: "px1"})

	// Enabling keeps the generation; a heartbeat changes only the time.
	must(SetPolicyEnabled{ID: "p2", Enabled: false})
	must(ProxyHeartbeat{ID: "px2", At: t0.Add(5)})
	f.Read(func(s *model.State) {
		if p := s.Policies["p2"]; p.Enabled || p.Generation != 1 {
			t.Fatalf("policy after disable: enabled=%v generation=%d", p.Enabled, p.Generation)
		}
		if px := s.Proxies["px2"]; !px.LastHeartbeat.Equal(t0.Add(5)) || px.Name != "proxy-2" {
			t.Fatalf("proxy after heartbeat: %+v", px)
		}
	})
}
