package vsphere

import (
	"context"
	"errors"
	"fmt"

	"github.com/vmware/govmomi/object"
	pbmtypes "github.com/vmware/govmomi/pbm/types"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// ApplyPolicy attaches a storage profile (the CDP profile from
// InstallFilter) to disks of a VM; no keys means every disk. Disks that
// already have the profile are left alone, so a repeat is a no-op.
func (c *Client) ApplyPolicy(ctx context.Context, vm string, profileID string, diskKeys ...int32) error {
	op := "apply storage profile to " + vm
	if vm == "" || profileID == "" {
		return fail(op, ErrInvalid, errors.New("VM and profile ID are required"))
	}
	var m mo.VirtualMachine
	r := ref("VirtualMachine", vm)
	if err := c.props(ctx, r, []string{"config.hardware.device"}, &m); err != nil {
		return wrap(op, err)
	}
	disks := map[int32]*types.VirtualDisk{}
	for _, d := range m.Config.Hardware.Device {
		if vd, ok := d.(*types.VirtualDisk); ok {
			disks[vd.Key] = vd
		}
	}
	if len(diskKeys) == 0 {
		for k := range disks {
			diskKeys = append(diskKeys, k)
		}
	}
	var entities []pbmtypes.PbmServerObjectRef
	for _, k := range diskKeys {
		if disks[k] == nil {
			return fail(op, ErrNotFound, fmt.Errorf("no disk %d", k))
		}
		entities = append(entities, diskEntity(vm, k))
	}
	p, err := c.pbmClient(ctx)
	if err != nil {
		return wrap(op, err)
	}
	res, err := p.QueryAssociatedProfiles(ctx, entities)
	if err != nil {
		return wrap(op+": query profiles", err)
	}
	has := map[string]bool{}
	for _, r := range res {
		for _, id := range r.ProfileId {
			if id.UniqueId == profileID {
				has[r.Object.Key] = true
			}
		}
	}
	var changes []types.BaseVirtualDeviceConfigSpec
	for i, k := range diskKeys {
		if has[entities[i].Key] {
			continue
		}
		changes = append(changes, &types.VirtualDeviceConfigSpec{
			Operation: types.VirtualDeviceConfigSpecOperationEdit,
			Device:    disks[k],
			Profile:   []types.BaseVirtualMachineProfileSpec{&types.VirtualMachineDefinedProfileSpec{ProfileId: profileID}},
		})
	}
	if len(changes) == 0 {
		return nil
	}
	task, err := object.NewVirtualMachine(c.vc, r).Reconfigure(ctx, types.VirtualMachineConfigSpec{DeviceChange: changes})
	if err == nil {
		_, err = c.waitTask(ctx, task)
	}
	return wrap(op, err)
}

// PowerOn powers a VM on; already on is not an error.
func (c *Client) PowerOn(ctx context.Context, vm string) error {
	return c.power(ctx, vm, true)
}

// PowerOff powers a VM off; already off is not an error.
func (c *Client) PowerOff(ctx context.Context, vm string) error {
	return c.power(ctx, vm, false)
}

func (c *Client) power(ctx context.Context, vm string, on bool) error {
	op := "power off " + vm
	want := types.VirtualMachinePowerStatePoweredOff
	if on {
		op, want = "power on "+vm, types.VirtualMachinePowerStatePoweredOn
	}
	var m mo.VirtualMachine
	r := ref("VirtualMachine", vm)
	if err := c.props(ctx, r, []string{"runtime.powerState"}, &m); err != nil {
		return wrap(op, err)
	}
	if m.Runtime.PowerState == want {
		return nil
	}
	o := object.NewVirtualMachine(c.vc, r)
	var task *object.Task
	var err error
	if on {
		task, err = o.PowerOn(ctx)
	} else {
		task, err = o.PowerOff(ctx)
	}
	if err == nil {
		_, err = c.waitTask(ctx, task)
	}
	return wrap(op, err)
}

// RemapNetworks moves a VM's NICs from one network to another, by network
// name (failover puts a replica on the target site's networks). NICs on
// networks not in the map are left alone.
func (c *Client) RemapNetworks(ctx context.Context, vm string, mapping map[string]string) error {
	op := "remap networks of " + vm
	var m mo.VirtualMachine
	r := ref("VirtualMachine", vm)
	if err := c.props(ctx, r, []string{"config.hardware.device"}, &m); err != nil {
		return wrap(op, err)
	}
	var changes []types.BaseVirtualDeviceConfigSpec
	for _, d := range m.Config.Hardware.Device {
		card, ok := d.(types.BaseVirtualEthernetCard)
		if !ok {
			continue
		}
		b, ok := card.GetVirtualEthernetCard().Backing.(*types.VirtualEthernetCardNetworkBackingInfo)
		if !ok {
			continue
		}
		to, ok := mapping[b.DeviceName]
		if !ok || to == b.DeviceName {
			continue
		}
		netRef, err := c.networkByName(ctx, to)
		if err != nil {
			return wrap(op, err)
		}
		nb := *b
		nb.DeviceName = to
		nb.Network = &netRef
		card.GetVirtualEthernetCard().Backing = &nb
		changes = append(changes, &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationEdit, Device: d})
	}
	if len(changes) == 0 {
		return nil
	}
	task, err := object.NewVirtualMachine(c.vc, r).Reconfigure(ctx, types.VirtualMachineConfigSpec{DeviceChange: changes})
	if err == nil {
		_, err = c.waitTask(ctx, task)
	}
	return wrap(op, err)
}

func (c *Client) networkByName(ctx context.Context, name string) (types.ManagedObjectReference, error) {
	v, err := viewOf(ctx, c, []string{"Network"})
	if err != nil {
		return types.ManagedObjectReference{}, err
	}
	defer func() { _ = v.Destroy(context.Background()) }()
	// Raw contents: the view also lists distributed port groups, which do
	// not decode as mo.Network.
	var nets []types.ObjectContent
	if err := v.Retrieve(ctx, []string{"Network"}, []string{"name"}, &nets); err != nil {
		return types.ManagedObjectReference{}, err
	}
	for _, n := range nets {
		for _, p := range n.PropSet {
			if p.Name == "name" && p.Val == name && n.Obj.Type == "Network" {
				return n.Obj, nil
			}
		}
	}
	return types.ManagedObjectReference{}, fail("find network", ErrNotFound, fmt.Errorf("no network named %q", name))
}
