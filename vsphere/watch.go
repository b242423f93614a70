package vsphere

import (
	"context"
	"errors"
	"slices"

	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25/types"
)

// ChangeKind says what changed in vCenter.
type ChangeKind string

const (
	// Synced is sent once, when the feed has read the current state; every
	// later change is relative to it.
	Synced           ChangeKind = "synced"
	VMCreated        ChangeKind = "vm-created"
	VMRemoved        ChangeKind = "vm-removed"
	DiskAdded        ChangeKind = "disk-added"
	DiskRemoved      ChangeKind = "disk-removed"
	HostChanged      ChangeKind = "host-changed"      // vMotion
	DatastoreChanged ChangeKind = "datastore-changed" // storage vMotion
)

// Change is one event of the change feed.
type Change struct {
	Kind     ChangeKind
	VM       string
	Name     string
	Host     string
	PrevHost string
	DiskKeys []int32 // disks added, removed or moved
	// Datastores is the VM's datastores after a DatastoreChanged.
	Datastores []string
}

var watchProps = []string{"name", "runtime.host", "config.hardware.device", "datastore"}

type vmState struct {
	name       string
	host       string
	disks      map[int32]string // key -> datastore
	datastores []string         // sorted
}

func viewOf(ctx context.Context, c *Client, kinds []string) (*view.ContainerView, error) {
	return view.NewManager(c.vc).CreateContainerView(ctx, c.vc.ServiceContent.RootFolder, kinds, true)
}

// vmTraversal selects every VM of the inventory from the root folder:
// folders, datacenters' VM folders, and vApps.
func vmTraversal() []types.BaseSelectionSpec {
	sel := func(names ...string) []types.BaseSelectionSpec {
		var out []types.BaseSelectionSpec
		for _, n := range names {
			out = append(out, &types.SelectionSpec{Name: n})
		}
		return out
	}
	return []types.BaseSelectionSpec{
		&types.TraversalSpec{SelectionSpec: types.SelectionSpec{Name: "folder"}, Type: "Folder", Path: "childEntity",
			SelectSet: sel("folder", "datacenter", "vapp")},
		&types.TraversalSpec{SelectionSpec: types.SelectionSpec{Name: "datacenter"}, Type: "Datacenter", Path: "vmFolder",
			SelectSet: sel("folder")},
		&types.TraversalSpec{SelectionSpec: types.SelectionSpec{Name: "vapp"}, Type: "VirtualApp", Path: "vm"},
	}
}

// Watch reports VM changes to fn until ctx ends (it then returns nil) or
// the connection or session fails (it then returns the error; call it again,
// and it starts with a fresh Synced). It uses a dedicated property collector
// with a filter that traverses the inventory from the root folder. The
// simulator re-sends "enter" for every VM when membership changes, so
// updates are compared with the known state and only real differences are
// reported, netted per batch of updates. A VM still being built may show
// disk changes right after VMCreated (the simulator resets and refills its
// device list); consumers are expected to read the current state rather
// than replay the feed.
//
// Not a container view: the simulator re-reads a filter's view after every
// VM creation holding the filter's lock while it locks each VM, and a
// creation holds the view's lock while it waits for the filter's; with a
// reconfigure holding a VM's lock while it waits for the view's (to
// register its task), the three deadlock. The root folder, the filter's
// only starting object, changes only when a datacenter is added.
func (c *Client) Watch(ctx context.Context, fn func(Change)) error {
	const op = "watch vCenter changes"
	pc, err := property.DefaultCollector(c.vc).Create(ctx)
	if err != nil {
		return wrap(op, err)
	}
	defer func() { _ = pc.Destroy(context.Background()) }()

	filter := new(property.WaitFilter)
	filter.Add(c.vc.ServiceContent.RootFolder, "VirtualMachine", watchProps, vmTraversal()...)
	filter.Spec.ObjectSet[0].Skip = types.NewBool(true)

	// The filter goes with the collector (the deferred Destroy), never on
	// its own: the simulator goes on with a wait whose request the client
	// gave up, and reads the collector's filter list unlocked meanwhile, so
	// a DestroyPropertyFilter then races with it. DestroyPropertyCollector
	// cancels the wait first and leaves the list alone.
	if _, err := pc.CreateFilter(ctx, filter.CreateFilter); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return wrap(op, err)
	}
	known := map[string]*vmState{}
	synced := false
	err = pc.WaitForUpdatesEx(ctx, &filter.WaitOptions, func(updates []types.ObjectUpdate) bool {
		c.applyBatch(known, updates, synced, fn)
		if !synced {
			synced = true
			fn(Change{Kind: Synced})
		}
		return ctx.Err() != nil
	})
	if ctx.Err() != nil && (err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		return nil
	}
	if err == nil {
		return nil
	}
	return wrap(op, err)
}

// applyBatch folds a batch of updates into the known state and reports the
// net difference per VM: the simulator shows a VM under construction (its
// device list reset, then filled) within one batch, which is no change.
func (c *Client) applyBatch(known map[string]*vmState, updates []types.ObjectUpdate, report bool, fn func(Change)) {
	before := map[string]*vmState{}
	var order []string
	for _, u := range updates {
		if u.Obj.Type != "VirtualMachine" {
			continue
		}
		id := u.Obj.Value
		if _, seen := before[id]; !seen {
			before[id] = known[id]
			order = append(order, id)
		}
		cur := known[id]
		if u.Kind == types.ObjectUpdateKindLeave {
			delete(known, id)
			continue
		}
		known[id] = applyUpdate(cur, u)
	}
	if !report {
		return
	}
	for _, id := range order {
		diff(id, before[id], known[id], fn)
	}
}

func applyUpdate(old *vmState, u types.ObjectUpdate) *vmState {
	next := &vmState{disks: map[int32]string{}}
	if old != nil {
		next.name, next.host, next.datastores = old.name, old.host, old.datastores
		for k, d := range old.disks {
			next.disks[k] = d
		}
	}
	for _, ch := range u.ChangeSet {
		switch ch.Name {
		case "name":
			if s, ok := ch.Val.(string); ok {
				next.name = s
			}
		case "runtime.host":
			if r, ok := ch.Val.(types.ManagedObjectReference); ok {
				next.host = r.Value
			} else if ch.Op == types.PropertyChangeOpRemove || ch.Val == nil {
				next.host = ""
			}
		case "datastore":
			next.datastores = nil
			if refs, ok := ch.Val.(types.ArrayOfManagedObjectReference); ok {
				next.datastores = values(refs.ManagedObjectReference)
				slices.Sort(next.datastores)
			}
		case "config.hardware.device":
			next.disks = map[int32]string{}
			if devs, ok := ch.Val.(types.ArrayOfVirtualDevice); ok {
				for _, d := range devs.VirtualDevice {
					if disk, ok := d.(*types.VirtualDisk); ok {
						ds := ""
						if b, ok := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo); ok {
							ds = refValue(b.GetVirtualDeviceFileBackingInfo().Datastore)
						}
						next.disks[disk.Key] = ds
					}
				}
			}
		}
	}
	return next
}

func diff(id string, old, next *vmState, fn func(Change)) {
	switch {
	case old == nil && next == nil:
		return
	case next == nil:
		fn(Change{Kind: VMRemoved, VM: id, Name: old.name, PrevHost: old.host})
		return
	case old == nil:
		fn(Change{Kind: VMCreated, VM: id, Name: next.name, Host: next.host})
		return
	}
	if old.host != next.host {
		fn(Change{Kind: HostChanged, VM: id, Name: next.name, Host: next.host, PrevHost: old.host})
	}
	var added, removed, moved []int32
	for k, ds := range next.disks {
		prev, ok := old.disks[k]
		switch {
		case !ok:
			added = append(added, k)
		case prev != ds:
			moved = append(moved, k)
		}
	}
	for k := range old.disks {
		if _, ok := next.disks[k]; !ok {
			removed = append(removed, k)
		}
	}
	for _, e := range []struct {
		kind ChangeKind
		keys []int32
	}{{DiskAdded, added}, {DiskRemoved, removed}} {
		if len(e.keys) > 0 {
			slices.Sort(e.keys)
			fn(Change{Kind: e.kind, VM: id, Name: next.name, Host: next.host, DiskKeys: e.keys})
		}
	}
	// A storage vMotion moves disk files (their backing's datastore) and
	// the VM's datastore list; the simulator changes only the latter.
	if len(moved) > 0 || !slices.Equal(old.datastores, next.datastores) {
		slices.Sort(moved)
		fn(Change{Kind: DatastoreChanged, VM: id, Name: next.name, Host: next.host, DiskKeys: moved, Datastores: next.datastores})
	}
}
