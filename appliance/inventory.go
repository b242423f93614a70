package appliance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/vsphere"
)

// PolicyInventory checks the vCenter side of a policy's references (the VMs
// it protects, the target cluster, host and datastore) before the policy is
// proposed. The FSM checks the references it can see itself (vCenters,
// proxies); these live only in vCenter.
type PolicyInventory interface {
	CheckPolicy(ctx context.Context, p *model.Policy) error
}

// InventorySource reads one vCenter's inventory.
type InventorySource interface {
	Inventory(ctx context.Context) (*vsphere.Inventory, error)
}

// VCenterInventory is the PolicyInventory over live vCenter connections.
// A vCenter that cannot be asked (down, refusing the login, an unknown
// certificate) does not block a policy: the policy is accepted and its
// status names the reason once the controllers try to configure it. Only
// an answer that a referenced object does not exist refuses the policy.
type VCenterInventory struct {
	// Get returns the connection to a registered vCenter
	// (controllers.Connector.Get fits).
	Get     func(ctx context.Context, vcenterID string) (InventorySource, error)
	Timeout time.Duration // per check; default 20s
	Logger  *slog.Logger
}

// CheckPolicy implements PolicyInventory.
func (v *VCenterInventory) CheckPolicy(ctx context.Context, p *model.Policy) error {
	timeout := v.Timeout
	if timeout <= 0 {
		timeout = 20 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	src, err := v.inventory(ctx, p.VCenterID)
	if src == nil {
		return err
	}
	for i, ref := range p.VMs {
		if findVM(src, ref) == nil {
			return model.NotFound(fmt.Sprintf("vms[%d]", i), "vm", ref.Key())
		}
	}
	dst := src
	if p.Target.VCenterID != p.VCenterID {
		if dst, err = v.inventory(ctx, p.Target.VCenterID); dst == nil {
			return err
		}
	}
	return checkTarget(dst, &p.Target)
}

// inventory returns nil and nil when the vCenter cannot be asked now.
func (v *VCenterInventory) inventory(ctx context.Context, id string) (*vsphere.Inventory, error) {
	c, err := v.Get(ctx, id)
	var inv *vsphere.Inventory
	if err == nil {
		inv, err = c.Inventory(ctx)
	}
	if err == nil {
		return inv, nil
	}
	if errors.Is(err, model.ErrNotFound) && !errors.Is(err, vsphere.ErrNotFound) {
		return nil, err // the registration itself is gone
	}
	if v.Logger != nil {
		v.Logger.Warn("policy references not checked: vCenter cannot be asked now", "vcenter", id, "err", err)
	}
	return nil, nil
}

func findVM(inv *vsphere.Inventory, ref model.VMRef) *vsphere.VM {
	for i := range inv.VMs {
		vm := &inv.VMs[i]
		if (ref.MoRef != "" && vm.MoRef == ref.MoRef) || (ref.MoRef == "" && vm.Name == ref.Name) {
			return vm
		}
	}
	return nil
}

// byNameOrMoRef finds the element whose name or managed object reference is key.
func byNameOrMoRef[T any](items []T, key string, ids func(*T) (name, moref string)) *T {
	for i := range items {
		if name, moref := ids(&items[i]); name == key || moref == key {
			return &items[i]
		}
	}
	return nil
}

func checkTarget(inv *vsphere.Inventory, t *model.Target) error {
	cl := byNameOrMoRef(inv.Clusters, t.Cluster, func(c *vsphere.Cluster) (string, string) { return c.Name, c.MoRef })
	if cl == nil {
		return model.NotFound("target.cluster", "cluster", t.Cluster)
	}
	ds := byNameOrMoRef(inv.Datastores, t.Datastore, func(d *vsphere.Datastore) (string, string) { return d.Name, d.MoRef })
	if ds == nil {
		return model.NotFound("target.datastore", "datastore", t.Datastore)
	}
	if t.Host != "" {
		h := byNameOrMoRef(inv.Hosts, t.Host, func(h *vsphere.Host) (string, string) { return h.Name, h.MoRef })
		switch {
		case h == nil:
			return model.NotFound("target.host", "host", t.Host)
		case !slices.Contains(cl.Hosts, h.MoRef):
			return model.Invalid("target.host", "host %q is not in cluster %q", t.Host, cl.Name)
		case !slices.Contains(ds.Hosts, h.MoRef):
			return model.Invalid("target.datastore", "datastore %q is not mounted by host %q", ds.Name, t.Host)
		}
		return nil
	}
	for _, h := range cl.Hosts {
		if slices.Contains(ds.Hosts, h) {
			return nil
		}
	}
	return model.Invalid("target.datastore", "datastore %q is not mounted by any host of cluster %q", ds.Name, cl.Name)
}
