package appliance

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/appliance/controllers"
	"github.com/continuum-cdp/continuum/client"
	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/vcsim"
)

// A policy naming a VM, cluster, host or datastore that vCenter does not
// have is refused with the field named and nothing stored; a policy whose
// vCenter cannot be asked is accepted (its status will name the reason).
func TestPolicyInventoryChecks(t *testing.T) {
	ctx := context.Background()
	lab, err := vcsim.Start(ctx, vcsim.Options{ProtectedVMs: 2, ProxyVMs: -1}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lab.Close)
	var conn *controllers.Connector
	e := newEnv(t, func(c *ServerConfig) {
		conn = &controllers.Connector{Store: c.Store, Unseal: c.Store.Unseal, Dir: t.TempDir()}
		c.Inventory = &VCenterInventory{
			Get: func(ctx context.Context, id string) (InventorySource, error) {
				return conn.Get(ctx, id)
			},
			Timeout: 10 * time.Second,
		}
	})
	t.Cleanup(func() { conn.Close(context.Background()) })
	vc, err := e.cl.AddVCenter(ctx, client.VCenterRequest{Name: "lab", URL: lab.SDKURL(),
		Username: vcsim.Username, Password: vcsim.Password, Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	// A registered vCenter that answers nothing: policies on it are accepted.
	down, err := e.cl.AddVCenter(ctx, client.VCenterRequest{Name: "down", URL: "https://" + freeAddr(t) + "/sdk",
		Username: "u", Password: "p", Insecure: true})
	if err != nil {
		t.Fatal(err)
	}

	vm0, vm1 := vcsim.ProtectedVMName(0), vcsim.ProtectedVMName(1)
	policy := func(mut func(p *model.Policy)) *model.Policy {
		p := &model.Policy{Name: "gold", VCenterID: vc.ID, VMs: []model.VMRef{{Name: vm0}, {Name: vm1}},
			Target: model.Target{VCenterID: vc.ID, Cluster: vcsim.TargetClusterName, Datastore: vcsim.TargetDatastoreName(0)},
			RPO:    model.Duration(15 * time.Second), ShortTermRetention: model.Duration(time.Hour)}
		if mut != nil {
			mut(p)
		}
		return p
	}
	bad := []struct {
		name   string
		mut    func(p *model.Policy)
		status int
		field  string
	}{
		{"unknown VM", func(p *model.Policy) { p.VMs[1].Name = "no-such-vm" }, http.StatusNotFound, "vms[1]"},
		{"unknown VM moref", func(p *model.Policy) { p.VMs[0] = model.VMRef{MoRef: "vm-999999"} }, http.StatusNotFound, "vms[0]"},
		{"unknown cluster", func(p *model.Policy) { p.Target.Cluster = "no-such-cluster" }, http.StatusNotFound, "target.cluster"},
		{"unknown datastore", func(p *model.Policy) { p.Target.Datastore = "no-such-ds" }, http.StatusNotFound, "target.datastore"},
		{"datastore not mounted in the cluster", func(p *model.Policy) { p.Target.Datastore = vcsim.SourceDatastoreName(0) }, http.StatusBadRequest, "target.datastore"},
		{"unknown host", func(p *model.Policy) { p.Target.Host = "no-such-host" }, http.StatusNotFound, "target.host"},
		{"host of another cluster", func(p *model.Policy) { p.Target.Host = vcsim.SourceHostName(0) }, http.StatusBadRequest, "target.host"},
	}
	before := e.snapshot(t)
	for _, tc := range bad {
		_, err := e.cl.CreatePolicy(ctx, policy(tc.mut))
		var ae *client.APIError
		if !errors.As(err, &ae) || ae.Status != tc.status || ae.Field != tc.field {
			t.Errorf("%s: want %d on %s, got %v", tc.name, tc.status, tc.field, err)
		}
	}
	if after := e.snapshot(t); after != before {
		t.Fatal("a refused policy changed the state")
	}

	p, err := e.cl.CreatePolicy(ctx, policy(func(p *model.Policy) { p.Target.Host = vcsim.TargetHostName(0) }))
	if err != nil {
		t.Fatalf("valid policy refused: %v", err)
	}
	// An edit is checked the same way.
	p.VMs = append(p.VMs, model.VMRef{Name: "gone"})
	if _, err := e.cl.UpdatePolicy(ctx, p.ID, p); !fieldIs(err, "vms[2]") {
		t.Fatalf("edit with an unknown VM: %v", err)
	}
	if _, err := e.cl.CreatePolicy(ctx, policy(func(p *model.Policy) {
		p.Name, p.VCenterID, p.Target.VCenterID = "on-down", down.ID, down.ID
	})); err != nil {
		t.Fatalf("policy on an unreachable vCenter refused: %v", err)
	}
}

func fieldIs(err error, field string) bool {
	var ae *client.APIError
	return errors.As(err, &ae) && ae.Field == field
}
