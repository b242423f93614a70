package vsphere

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/vmware/govmomi/fault"
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
	r := ref("VirtualMachine", vm)
	disks, profiles, err := c.diskProfiles(ctx, r, vm)
	if err != nil {
		return wrap(op, err)
	}
	byKey := map[int32]*types.VirtualDisk{}
	for _, d := range disks {
		byKey[d.Key] = d
	}
	if len(diskKeys) == 0 {
		for _, d := range disks {
			diskKeys = append(diskKeys, d.Key)
		}
	}
	var change []*types.VirtualDisk
	for _, k := range diskKeys {
		if byKey[k] == nil {
			return fail(op, ErrNotFound, fmt.Errorf("no disk %d", k))
		}
		if !slices.Contains(profiles[k], profileID) {
			change = append(change, byKey[k])
		}
	}
	return wrap(op, c.setDiskProfiles(ctx, r, change, &types.VirtualMachineDefinedProfileSpec{ProfileId: profileID}))
}

// RemoveCDPPolicy takes the CDP storage profile (the profile named as the
// client's configured ProfileName, which EnsureProfile creates) off every
// disk of vm that has it; those disks get the datastore's default policy.
// Disks without it are left alone, so a repeat is a no-op. A VM that is
// gone is not an error.
func (c *Client) RemoveCDPPolicy(ctx context.Context, vm string) error {
	op := "remove storage profile " + c.cfg.ProfileName + " from " + vm
	if vm == "" {
		return fail(op, ErrInvalid, errors.New("empty VM reference"))
	}
	ids, err := c.profileIDs(ctx)
	if err != nil {
		return wrap(op, err)
	}
	if len(ids) == 0 {
		return nil // no CDP profile, so no disk can carry it
	}
	r := ref("VirtualMachine", vm)
	disks, profiles, err := c.diskProfiles(ctx, r, vm)
	if err != nil {
		if err = wrap(op, err); errors.Is(err, ErrNotFound) {
			return nil
		}
		return err
	}
	var change []*types.VirtualDisk
	for _, d := range disks {
		if slices.ContainsFunc(profiles[d.Key], func(id string) bool { return slices.Contains(ids, id) }) {
			change = append(change, d)
		}
	}
	err = c.setDiskProfiles(ctx, r, change, &types.VirtualMachineDefaultProfileSpec{})
	var nf *types.ManagedObjectNotFound
	if _, ok := fault.As(err, &nf); ok && nf != nil && nf.Obj == r {
		return nil // destroyed meanwhile
	}
	return wrap(op, err)
}

// diskProfiles reads a VM's disks and the storage profile IDs each has.
func (c *Client) diskProfiles(ctx context.Context, r types.ManagedObjectReference, vm string) ([]*types.VirtualDisk, map[int32][]string, error) {
	var m mo.VirtualMachine
	if err := c.props(ctx, r, []string{"config.hardware.device"}, &m); err != nil {
		return nil, nil, err
	}
	var disks []*types.VirtualDisk
	var entities []pbmtypes.PbmServerObjectRef
	keyOf := map[string]int32{}
	for _, d := range m.Config.Hardware.Device {
		if vd, ok := d.(*types.VirtualDisk); ok {
			e := diskEntity(vm, vd.Key)
			disks = append(disks, vd)
			entities = append(entities, e)
			keyOf[e.Key] = vd.Key
		}
	}
	profiles := map[int32][]string{}
	if len(disks) == 0 {
		return disks, profiles, nil
	}
	p, err := c.pbmClient(ctx)
	if err != nil {
		return nil, nil, err
	}
	res, err := p.QueryAssociatedProfiles(ctx, entities)
	if err != nil {
		return nil, nil, fmt.Errorf("query profiles: %w", err)
	}
	for _, a := range res {
		for _, id := range a.ProfileId {
			k := keyOf[a.Object.Key]
			profiles[k] = append(profiles[k], id.UniqueId)
		}
	}
	return disks, profiles, nil
}

// setDiskProfiles gives disks of a VM one profile spec, in one reconfigure.
func (c *Client) setDiskProfiles(ctx context.Context, r types.ManagedObjectReference, disks []*types.VirtualDisk, spec types.BaseVirtualMachineProfileSpec) error {
	if len(disks) == 0 {
		return nil
	}
	changes := make([]types.BaseVirtualDeviceConfigSpec, 0, len(disks))
	for _, d := range disks {
		changes = append(changes, &types.VirtualDeviceConfigSpec{
			Operation: types.VirtualDeviceConfigSpecOperationEdit,
			Device:    d,
			Profile:   []types.BaseVirtualMachineProfileSpec{spec},
		})
	}
	task, err := object.NewVirtualMachine(c.vc, r).Reconfigure(ctx, types.VirtualMachineConfigSpec{DeviceChange: changes})
	if err == nil {
		_, err = c.waitTask(ctx, task)
	}
	return err
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
