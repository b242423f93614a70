package vsphere

import (
	"context"
	"fmt"
	"slices"

	pbmtypes "github.com/vmware/govmomi/pbm/types"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// Extra config keys of the replica marker.
const (
	markerSource = "continuum.replica.source"
	markerPolicy = "continuum.replica.policy"
)

var vmProps = []string{
	"name", "config.instanceUuid", "config.hardware.device", "config.extraConfig",
	"runtime.host", "runtime.powerState", "resourcePool", "parent",
}

func ref(kind, value string) types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: kind, Value: value}
}

func values(refs []types.ManagedObjectReference) []string {
	out := make([]string, 0, len(refs))
	for _, r := range refs {
		out = append(out, r.Value)
	}
	return out
}

func refValue(r *types.ManagedObjectReference) string {
	if r == nil {
		return ""
	}
	return r.Value
}

// Inventory reads datacenters, clusters, hosts, datastores, resource pools,
// folders and VMs (with their disks and storage profiles) in one pass.
func (c *Client) Inventory(ctx context.Context) (*Inventory, error) {
	const op = "read vCenter inventory"
	m := view.NewManager(c.vc)
	v, err := m.CreateContainerView(ctx, c.vc.ServiceContent.RootFolder, nil, true)
	if err != nil {
		return nil, wrap(op, err)
	}
	defer func() { _ = v.Destroy(context.Background()) }()

	var (
		dcs   []mo.Datacenter
		ccrs  []mo.ClusterComputeResource
		hosts []mo.HostSystem
		dss   []mo.Datastore
		pools []mo.ResourcePool
		fs    []mo.Folder
		vms   []mo.VirtualMachine
	)
	reads := []struct {
		kind  string
		props []string
		dst   any
	}{
		{"Datacenter", []string{"name", "vmFolder", "hostFolder"}, &dcs},
		{"ClusterComputeResource", []string{"name", "host", "resourcePool"}, &ccrs},
		{"HostSystem", []string{"name", "parent", "datastore", "runtime.connectionState"}, &hosts},
		{"Datastore", []string{"name", "summary", "host"}, &dss},
		{"ResourcePool", []string{"name", "owner"}, &pools},
		{"Folder", []string{"name", "parent"}, &fs},
		{"VirtualMachine", vmProps, &vms},
	}
	for _, r := range reads {
		if err := v.Retrieve(ctx, []string{r.kind}, r.props, r.dst); err != nil {
			return nil, wrap(op+": "+r.kind, err)
		}
	}

	inv := &Inventory{}
	hostCluster := make(map[string]string)
	for _, d := range dcs {
		inv.Datacenters = append(inv.Datacenters, Datacenter{MoRef: d.Self.Value, Name: d.Name, VMFolder: d.VmFolder.Value, HostFolder: d.HostFolder.Value})
	}
	for _, cl := range ccrs {
		inv.Clusters = append(inv.Clusters, Cluster{MoRef: cl.Self.Value, Name: cl.Name, Hosts: values(cl.Host), ResourcePool: refValue(cl.ResourcePool)})
		for _, h := range cl.Host {
			hostCluster[h.Value] = cl.Self.Value
		}
	}
	for _, h := range hosts {
		inv.Hosts = append(inv.Hosts, Host{MoRef: h.Self.Value, Name: h.Name, Cluster: hostCluster[h.Self.Value], Datastores: values(h.Datastore), ConnectionState: string(h.Runtime.ConnectionState)})
	}
	for _, d := range dss {
		ds := Datastore{MoRef: d.Self.Value, Name: d.Name, URL: d.Summary.Url, CapacityBytes: d.Summary.Capacity, FreeBytes: d.Summary.FreeSpace}
		for _, m := range d.Host {
			ds.Hosts = append(ds.Hosts, m.Key.Value)
		}
		inv.Datastores = append(inv.Datastores, ds)
	}
	for _, p := range pools {
		inv.ResourcePools = append(inv.ResourcePools, ResourcePool{MoRef: p.Self.Value, Name: p.Name, Owner: p.Owner.Value})
	}
	for _, f := range fs {
		inv.Folders = append(inv.Folders, Folder{MoRef: f.Self.Value, Name: f.Name, Parent: refValue(f.Parent)})
	}
	for i := range vms {
		vm := toVM(&vms[i])
		vm.Cluster = hostCluster[vm.Host]
		inv.VMs = append(inv.VMs, vm)
	}
	if err := c.fillProfiles(ctx, inv.VMs); err != nil {
		return nil, wrap(op, err)
	}
	return inv, nil
}

// Hosts reads the hosts and the cluster of each, without the rest of the
// inventory (VMs and their disks are most of it).
func (c *Client) Hosts(ctx context.Context) ([]Host, error) {
	const op = "read vCenter hosts"
	v, err := view.NewManager(c.vc).CreateContainerView(ctx, c.vc.ServiceContent.RootFolder, []string{"HostSystem", "ClusterComputeResource"}, true)
	if err != nil {
		return nil, wrap(op, err)
	}
	defer func() { _ = v.Destroy(context.Background()) }()
	var ccrs []mo.ClusterComputeResource
	var hosts []mo.HostSystem
	if err := v.Retrieve(ctx, []string{"ClusterComputeResource"}, []string{"host"}, &ccrs); err != nil {
		return nil, wrap(op+": ClusterComputeResource", err)
	}
	if err := v.Retrieve(ctx, []string{"HostSystem"}, []string{"name", "datastore", "runtime.connectionState"}, &hosts); err != nil {
		return nil, wrap(op+": HostSystem", err)
	}
	hostCluster := make(map[string]string)
	for _, cl := range ccrs {
		for _, h := range cl.Host {
			hostCluster[h.Value] = cl.Self.Value
		}
	}
	out := make([]Host, 0, len(hosts))
	for _, h := range hosts {
		out = append(out, Host{MoRef: h.Self.Value, Name: h.Name, Cluster: hostCluster[h.Self.Value], Datastores: values(h.Datastore), ConnectionState: string(h.Runtime.ConnectionState)})
	}
	return out, nil
}

// VM reads one VM by MoRef.
func (c *Client) VM(ctx context.Context, moref string) (*VM, error) {
	op := "read vm " + moref
	if moref == "" {
		return nil, fail(op, ErrInvalid, fmt.Errorf("empty VM reference"))
	}
	var m mo.VirtualMachine
	r := ref("VirtualMachine", moref)
	if err := c.props(ctx, r, vmProps, &m); err != nil {
		return nil, wrap(op, err)
	}
	vm := toVM(&m)
	if vm.Host != "" {
		var h mo.HostSystem
		hr := ref("HostSystem", vm.Host)
		if err := c.props(ctx, hr, []string{"parent"}, &h); err != nil {
			return nil, wrap(op, err)
		}
		if h.Parent != nil && h.Parent.Type == "ClusterComputeResource" {
			vm.Cluster = h.Parent.Value
		}
	}
	vms := []VM{vm}
	if err := c.fillProfiles(ctx, vms); err != nil {
		return nil, wrap(op, err)
	}
	return &vms[0], nil
}

func toVM(m *mo.VirtualMachine) VM {
	vm := VM{
		MoRef:        m.Self.Value,
		Name:         m.Name,
		Host:         refValue(m.Runtime.Host),
		ResourcePool: refValue(m.ResourcePool),
		Folder:       refValue(m.Parent),
		PowerState:   string(m.Runtime.PowerState),
	}
	if m.Config == nil {
		return vm
	}
	vm.InstanceUUID = m.Config.InstanceUuid
	for _, d := range m.Config.Hardware.Device {
		switch dev := d.(type) {
		case *types.VirtualDisk:
			disk := Disk{Key: dev.Key, ControllerKey: dev.ControllerKey, CapacityBytes: dev.CapacityInBytes}
			if disk.CapacityBytes == 0 {
				disk.CapacityBytes = dev.CapacityInKB * 1024
			}
			if dev.UnitNumber != nil {
				disk.UnitNumber = *dev.UnitNumber
			}
			if b, ok := dev.Backing.(types.BaseVirtualDeviceFileBackingInfo); ok {
				info := b.GetVirtualDeviceFileBackingInfo()
				disk.FileName = info.FileName
				disk.Datastore = refValue(info.Datastore)
			}
			vm.Disks = append(vm.Disks, disk)
		case types.BaseVirtualEthernetCard:
			switch b := dev.GetVirtualEthernetCard().Backing.(type) {
			case *types.VirtualEthernetCardNetworkBackingInfo:
				vm.Networks = append(vm.Networks, b.DeviceName)
			case *types.VirtualEthernetCardDistributedVirtualPortBackingInfo:
				vm.Networks = append(vm.Networks, b.Port.PortgroupKey)
			default:
				vm.Networks = append(vm.Networks, "")
			}
		}
	}
	slices.SortFunc(vm.Disks, func(a, b Disk) int { return int(a.Key) - int(b.Key) })
	var mk ReplicaMarker
	for _, o := range m.Config.ExtraConfig {
		ov := o.GetOptionValue()
		s, _ := ov.Value.(string)
		switch ov.Key {
		case markerSource:
			mk.SourceInstanceUUID = s
		case markerPolicy:
			mk.PolicyID = s
		}
	}
	if mk.SourceInstanceUUID != "" {
		vm.Replica = &mk
	}
	return vm
}

// fillProfiles asks SPBM which profile each disk has, in batches.
func (c *Client) fillProfiles(ctx context.Context, vms []VM) error {
	type slot struct{ vm, disk int }
	var entities []pbmtypes.PbmServerObjectRef
	var slots []slot
	for i := range vms {
		for j := range vms[i].Disks {
			entities = append(entities, diskEntity(vms[i].MoRef, vms[i].Disks[j].Key))
			slots = append(slots, slot{i, j})
		}
	}
	if len(entities) == 0 {
		return nil
	}
	p, err := c.pbmClient(ctx)
	if err != nil {
		return err
	}
	index := make(map[string]slot, len(slots))
	for i, e := range entities {
		index[e.Key] = slots[i]
	}
	const batch = 1000 // SPBM's documented maximum per call
	for start := 0; start < len(entities); start += batch {
		end := min(start+batch, len(entities))
		res, err := p.QueryAssociatedProfiles(ctx, entities[start:end])
		if err != nil {
			return fmt.Errorf("query storage profiles: %w", err)
		}
		for _, r := range res {
			s, ok := index[r.Object.Key]
			if ok && len(r.ProfileId) > 0 {
				vms[s.vm].Disks[s.disk].ProfileID = r.ProfileId[0].UniqueId
			}
		}
	}
	return nil
}

func diskEntity(vm string, key int32) pbmtypes.PbmServerObjectRef {
	return pbmtypes.PbmServerObjectRef{
		ObjectType: string(pbmtypes.PbmObjectTypeVirtualDiskId),
		Key:        fmt.Sprintf("%s:%d", vm, key),
	}
}
