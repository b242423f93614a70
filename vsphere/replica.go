package vsphere

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// ReplicaSpec says where the replica of a source VM goes.
type ReplicaSpec struct {
	SourceVM  string // source VM MoRef
	PolicyID  string
	Name      string
	Host      string // target host MoRef
	Datastore string // target datastore MoRef, mounted by Host
	Pool      string // target resource pool MoRef, in Host's cluster
	Folder    string // target VM folder MoRef
}

func (s ReplicaSpec) validate() error {
	for _, f := range []struct{ name, v string }{
		{"source VM", s.SourceVM}, {"policy ID", s.PolicyID}, {"name", s.Name}, {"host", s.Host},
		{"datastore", s.Datastore}, {"resource pool", s.Pool}, {"folder", s.Folder},
	} {
		if f.v == "" {
			return fmt.Errorf("%s is required", f.name)
		}
	}
	return nil
}

// replicaNamespace derives replica instance UUIDs; fixed forever.
var replicaNamespace = uuid.MustParse("6b1f3c2e-9d4a-5e8b-a7c1-2f0d9e4b8a63")

// ReplicaInstanceUUID is the instance UUID given to the replica of a source
// VM under a policy: deterministic, so any coordinator finds the replica by
// it without scanning the inventory.
func ReplicaInstanceUUID(sourceInstanceUUID, policyID string) string {
	return uuid.NewSHA1(replicaNamespace, []byte(sourceInstanceUUID+"\x00"+policyID)).String()
}

// EnsureReplica returns the replica of spec.SourceVM, creating it if it does
// not exist: same hardware, NICs on the same networks, and empty disks of
// the same keys and capacities on spec.Datastore. A replica that exists but
// lacks disks (a create interrupted or a disk added since) is completed.
func (c *Client) EnsureReplica(ctx context.Context, spec ReplicaSpec) (*VM, error) {
	op := fmt.Sprintf("ensure replica of %s as %q", spec.SourceVM, spec.Name)
	if err := spec.validate(); err != nil {
		return nil, fail(op, ErrInvalid, err)
	}
	var src mo.VirtualMachine
	sr := ref("VirtualMachine", spec.SourceVM)
	// Only what the replica copies: the whole config is much larger.
	if err := c.props(ctx, sr, []string{"name", "config.instanceUuid", "config.guestId", "config.firmware", "config.hardware"}, &src); err != nil {
		return nil, wrap(op+": read source", err)
	}
	if src.Config == nil || src.Config.InstanceUuid == "" {
		return nil, fail(op, ErrInvalid, errors.New("source VM has no configuration"))
	}
	want := ReplicaInstanceUUID(src.Config.InstanceUuid, spec.PolicyID)

	if vm, err := c.findReplica(ctx, want, src.Config.InstanceUuid, spec.PolicyID); err != nil {
		return nil, wrap(op, err)
	} else if vm != nil {
		return c.completeReplica(ctx, op, vm, &src)
	}

	dsName, err := c.validatePlacement(ctx, spec)
	if err != nil {
		return nil, wrap(op, err)
	}
	cfg := replicaConfig(&src, spec, dsName, want)

	folder := object.NewFolder(c.vc, ref("Folder", spec.Folder))
	pool := object.NewResourcePool(c.vc, ref("ResourcePool", spec.Pool))
	host := object.NewHostSystem(c.vc, ref("HostSystem", spec.Host))
	task, err := folder.CreateVM(ctx, cfg, pool, host)
	var result types.AnyType
	if err == nil {
		result, err = c.waitTask(ctx, task)
	}
	if err != nil {
		c.forgetPlacement(spec)
		// The create may have failed after the VM was registered, or lost
		// a race with another coordinator: the marker tells.
		c.log.Warn("create replica failed; looking for it by its marker", "source", spec.SourceVM, "err", err)
		for attempt := 0; attempt < 5; attempt++ {
			vm, ferr := c.findReplica(ctx, want, src.Config.InstanceUuid, spec.PolicyID)
			if ferr != nil {
				return nil, wrap(op, ferr)
			}
			if vm != nil {
				return c.completeReplica(ctx, op, vm, &src)
			}
			if !fault.Is(err, &types.FileAlreadyExists{}) && !fault.Is(err, &types.DuplicateName{}) {
				break
			}
			// The winner's create may still be running.
			if serr := sleep(ctx, time.Duration(attempt+1)*50*time.Millisecond); serr != nil {
				return nil, wrap(op, serr)
			}
		}
		return nil, wrap(op+": create", err)
	}
	created, ok := result.(types.ManagedObjectReference)
	if !ok {
		return nil, fail(op, ErrTaskFailed, fmt.Errorf("create task returned %T", result))
	}
	// One read of the new VM; its cluster is the placement's, and a new
	// VM has no storage profile to ask SPBM about.
	var m mo.VirtualMachine
	if err := c.props(ctx, created, vmProps, &m); err != nil {
		return nil, wrap(op, err)
	}
	v := toVM(&m)
	v.Cluster = c.placementCluster(spec)
	vm := &v
	c.log.Info("replica created", "source", spec.SourceVM, "replica", vm.MoRef, "name", spec.Name)
	return vm, nil
}

// FindReplica returns the replica of a source VM under a policy, or nil.
func (c *Client) FindReplica(ctx context.Context, sourceVM, policyID string) (*VM, error) {
	op := "find replica of " + sourceVM
	src, err := c.VM(ctx, sourceVM)
	if err != nil {
		return nil, wrap(op, err)
	}
	vm, err := c.findReplica(ctx, ReplicaInstanceUUID(src.InstanceUUID, policyID), src.InstanceUUID, policyID)
	return vm, wrap(op, err)
}

func (c *Client) findReplica(ctx context.Context, instanceUUID, sourceUUID, policyID string) (*VM, error) {
	// A VM with the replica's UUID but no marker yet is most likely being
	// created by another coordinator right now: look again briefly before
	// calling it a conflict.
	var last *VM
	for attempt := 0; attempt < 6; attempt++ {
		if attempt > 0 {
			if err := sleep(ctx, time.Duration(attempt)*50*time.Millisecond); err != nil {
				return nil, err
			}
		}
		vm, err := c.findByInstanceUUID(ctx, instanceUUID)
		if err != nil || vm == nil {
			return nil, err
		}
		if vm.Replica != nil && vm.Replica.SourceInstanceUUID == sourceUUID && vm.Replica.PolicyID == policyID {
			return vm, nil
		}
		last = vm
	}
	return nil, fail("check replica marker of "+last.MoRef, ErrConflict, fmt.Errorf("VM %s has the replica's instance UUID but not its marker", last.Name))
}

func (c *Client) findByInstanceUUID(ctx context.Context, instanceUUID string) (*VM, error) {
	yes := true
	res, err := methods.FindByUuid(ctx, c.vc, &types.FindByUuid{
		This: *c.vc.ServiceContent.SearchIndex, Uuid: instanceUUID, VmSearch: true, InstanceUuid: &yes,
	})
	if err != nil {
		return nil, fmt.Errorf("search by instance UUID: %w", err)
	}
	if res.Returnval == nil {
		return nil, nil
	}
	vm, err := c.VM(ctx, res.Returnval.Value)
	if errors.Is(err, ErrNotFound) {
		return nil, nil // destroyed meanwhile
	}
	return vm, err
}

// completeReplica adds the disks the replica lacks.
func (c *Client) completeReplica(ctx context.Context, op string, vm *VM, src *mo.VirtualMachine) (*VM, error) {
	var missing []*types.VirtualDisk
	for _, d := range src.Config.Hardware.Device {
		if disk, ok := d.(*types.VirtualDisk); ok && !hasDisk(vm, disk) {
			missing = append(missing, disk)
		}
	}
	if len(missing) == 0 {
		return vm, nil
	}
	if err := c.addReplicaDisks(ctx, vm, missing); err != nil {
		return nil, wrap(op, err)
	}
	out, err := c.VM(ctx, vm.MoRef)
	return out, wrap(op, err)
}

func hasDisk(vm *VM, d *types.VirtualDisk) bool {
	for _, r := range vm.Disks {
		if r.Key == d.Key || (d.UnitNumber != nil && r.ControllerKey == d.ControllerKey && r.UnitNumber == *d.UnitNumber) {
			return true
		}
	}
	return false
}

// EnsureReplicaDisk creates on the replica the empty counterpart of a disk
// added to the source VM after the replica was made.
func (c *Client) EnsureReplicaDisk(ctx context.Context, replica, sourceVM string, diskKey int32) (*Disk, error) {
	op := fmt.Sprintf("ensure replica disk %d of %s on %s", diskKey, sourceVM, replica)
	var src mo.VirtualMachine
	sr := ref("VirtualMachine", sourceVM)
	if err := c.props(ctx, sr, []string{"config.hardware.device"}, &src); err != nil {
		return nil, wrap(op, err)
	}
	var disk *types.VirtualDisk
	for _, d := range src.Config.Hardware.Device {
		if vd, ok := d.(*types.VirtualDisk); ok && vd.Key == diskKey {
			disk = vd
		}
	}
	if disk == nil {
		return nil, fail(op, ErrNotFound, fmt.Errorf("source has no disk %d", diskKey))
	}
	vm, err := c.VM(ctx, replica)
	if err != nil {
		return nil, wrap(op, err)
	}
	if vm.Replica == nil {
		return nil, fail(op, ErrConflict, fmt.Errorf("%s is not a replica", vm.Name))
	}
	if !hasDisk(vm, disk) {
		if err := c.addReplicaDisks(ctx, vm, []*types.VirtualDisk{disk}); err != nil {
			return nil, wrap(op, err)
		}
		if vm, err = c.VM(ctx, replica); err != nil {
			return nil, wrap(op, err)
		}
	}
	for _, d := range vm.Disks {
		if d.Key == disk.Key || (disk.UnitNumber != nil && d.ControllerKey == disk.ControllerKey && d.UnitNumber == *disk.UnitNumber) {
			return &d, nil
		}
	}
	return nil, fail(op, ErrTaskFailed, errors.New("disk not present after reconfigure"))
}

func (c *Client) addReplicaDisks(ctx context.Context, vm *VM, disks []*types.VirtualDisk) error {
	var home mo.VirtualMachine
	r := ref("VirtualMachine", vm.MoRef)
	if err := c.props(ctx, r, []string{"config.files", "config.hardware.device"}, &home); err != nil {
		return err
	}
	var dp object.DatastorePath
	if !dp.FromString(home.Config.Files.VmPathName) {
		return fail("add disks", ErrInvalid, fmt.Errorf("bad VM path %q", home.Config.Files.VmPathName))
	}
	var changes []types.BaseVirtualDeviceConfigSpec
	for _, d := range disks {
		changes = append(changes, &types.VirtualDeviceConfigSpec{
			Operation:     types.VirtualDeviceConfigSpecOperationAdd,
			FileOperation: types.VirtualDeviceConfigSpecFileOperationCreate,
			Device:        emptyDisk(d, dp.Datastore, vm.Name),
		})
	}
	task, err := object.NewVirtualMachine(c.vc, r).Reconfigure(ctx, types.VirtualMachineConfigSpec{DeviceChange: changes})
	if err != nil {
		return err
	}
	_, err = c.waitTask(ctx, task)
	return err
}

// emptyDisk is a new thin disk with the source disk's key, slot and
// capacity, its file named by key so names never collide.
func emptyDisk(src *types.VirtualDisk, datastore, vmName string) *types.VirtualDisk {
	capacity := src.CapacityInBytes
	if capacity == 0 {
		capacity = src.CapacityInKB * 1024
	}
	d := &types.VirtualDisk{
		CapacityInBytes: capacity,
		CapacityInKB:    capacity / 1024,
		VirtualDevice: types.VirtualDevice{
			Key:           src.Key,
			ControllerKey: src.ControllerKey,
			UnitNumber:    src.UnitNumber,
			Backing: &types.VirtualDiskFlatVer2BackingInfo{
				DiskMode:        string(types.VirtualDiskModePersistent),
				ThinProvisioned: types.NewBool(true),
				VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{
					FileName: fmt.Sprintf("[%s] %s/%s_%d.vmdk", datastore, vmName, vmName, src.Key),
				},
			},
		},
	}
	return d
}

// replicaConfig copies the source's hardware: CPU, memory, guest OS,
// storage controllers, NICs (new MAC addresses) and empty disks.
func replicaConfig(src *mo.VirtualMachine, spec ReplicaSpec, dsName, instanceUUID string) types.VirtualMachineConfigSpec {
	hw := src.Config.Hardware
	cfg := types.VirtualMachineConfigSpec{
		Name:              spec.Name,
		GuestId:           src.Config.GuestId,
		NumCPUs:           hw.NumCPU,
		NumCoresPerSocket: hw.NumCoresPerSocket,
		MemoryMB:          int64(hw.MemoryMB),
		Firmware:          src.Config.Firmware,
		InstanceUuid:      instanceUUID,
		Annotation:        "Replica of " + src.Name + " (Continuum CDP)",
		Files:             &types.VirtualMachineFileInfo{VmPathName: fmt.Sprintf("[%s] %s/%s.vmx", dsName, spec.Name, spec.Name)},
		ExtraConfig: []types.BaseOptionValue{
			&types.OptionValue{Key: markerSource, Value: src.Config.InstanceUuid},
			&types.OptionValue{Key: markerPolicy, Value: spec.PolicyID},
		},
	}
	add := func(d types.BaseVirtualDevice, create bool) {
		s := &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd, Device: d}
		if create {
			s.FileOperation = types.VirtualDeviceConfigSpecFileOperationCreate
		}
		cfg.DeviceChange = append(cfg.DeviceChange, s)
	}
	for _, d := range hw.Device {
		switch dev := d.(type) {
		case types.BaseVirtualSCSIController, *types.VirtualAHCIController, *types.VirtualNVMEController:
			cp := copyDevice(d)
			cp.GetVirtualDevice().DeviceInfo = nil
			if sc, ok := cp.(types.BaseVirtualSCSIController); ok {
				sc.GetVirtualSCSIController().Device = nil
			}
			if vc, ok := cp.(types.BaseVirtualController); ok {
				vc.GetVirtualController().Device = nil
			}
			add(cp, false)
		case types.BaseVirtualEthernetCard:
			cp := copyDevice(d)
			card := cp.(types.BaseVirtualEthernetCard).GetVirtualEthernetCard()
			card.MacAddress = ""
			card.AddressType = string(types.VirtualEthernetCardMacTypeGenerated)
			card.DeviceInfo = nil
			add(cp, false)
		case *types.VirtualDisk:
			add(emptyDisk(dev, dsName, spec.Name), true)
		}
	}
	// Controllers must precede the disks that reference them.
	slices.SortStableFunc(cfg.DeviceChange, func(a, b types.BaseVirtualDeviceConfigSpec) int {
		return rank(a) - rank(b)
	})
	return cfg
}

func rank(s types.BaseVirtualDeviceConfigSpec) int {
	if _, ok := s.GetVirtualDeviceConfigSpec().Device.(*types.VirtualDisk); ok {
		return 1
	}
	return 0
}

// copyDevice returns a shallow copy of a device of any concrete type.
func copyDevice(d types.BaseVirtualDevice) types.BaseVirtualDevice {
	switch v := d.(type) {
	case *types.ParaVirtualSCSIController:
		c := *v
		return &c
	case *types.VirtualLsiLogicController:
		c := *v
		return &c
	case *types.VirtualLsiLogicSASController:
		c := *v
		return &c
	case *types.VirtualBusLogicController:
		c := *v
		return &c
	case *types.VirtualAHCIController:
		c := *v
		return &c
	case *types.VirtualNVMEController:
		c := *v
		return &c
	case *types.VirtualVmxnet3:
		c := *v
		return &c
	case *types.VirtualE1000:
		c := *v
		return &c
	case *types.VirtualE1000e:
		c := *v
		return &c
	case *types.VirtualVmxnet2:
		c := *v
		return &c
	case *types.VirtualPCNet32:
		c := *v
		return &c
	}
	return d
}

// DeleteReplica powers off and destroys a replica. It refuses a VM without
// the replica marker, and a replica already gone is not an error.
func (c *Client) DeleteReplica(ctx context.Context, replica string) error {
	op := "delete replica " + replica
	vm, err := c.VM(ctx, replica)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return wrap(op, err)
	}
	if vm.Replica == nil {
		return fail(op, ErrConflict, fmt.Errorf("%s is not a replica", vm.Name))
	}
	if vm.PowerState == string(types.VirtualMachinePowerStatePoweredOn) {
		if err := c.PowerOff(ctx, replica); err != nil {
			return wrap(op, err)
		}
	}
	task, err := object.NewVirtualMachine(c.vc, ref("VirtualMachine", replica)).Destroy(ctx)
	if err == nil {
		_, err = c.waitTask(ctx, task)
	}
	if err != nil && !fault.Is(err, &types.ManagedObjectNotFound{}) {
		return wrap(op, err)
	}
	c.log.Info("replica deleted", "replica", replica, "name", vm.Name)
	return nil
}

type placement struct {
	datastoreName string
	cluster       string // the host's compute resource
	until         time.Time
}

// placementTTL bounds how long a validated placement is trusted. Controllers
// place many replicas on the same host and datastore in a burst; re-reading
// the target objects for each one would also queue behind the creates that
// hold the folder.
const placementTTL = 10 * time.Second

func placementKey(spec ReplicaSpec) ReplicaSpec {
	return ReplicaSpec{Host: spec.Host, Datastore: spec.Datastore, Pool: spec.Pool, Folder: spec.Folder}
}

func (c *Client) forgetPlacement(spec ReplicaSpec) {
	c.placeMu.Lock()
	defer c.placeMu.Unlock()
	delete(c.placed, placementKey(spec))
}

// validatePlacement checks what vCenter would check, before calling it: the
// simulator's create task kills the process when the host does not mount
// the datastore, and a real vCenter fails the task halfway. It returns the
// datastore's name.
func (c *Client) validatePlacement(ctx context.Context, spec ReplicaSpec) (string, error) {
	key := placementKey(spec)
	c.placeMu.Lock()
	p, ok := c.placed[key]
	c.placeMu.Unlock()
	if ok && time.Now().Before(p.until) {
		return p.datastoreName, nil
	}
	name, cluster, err := c.readPlacement(ctx, spec)
	if err != nil {
		return "", err
	}
	c.placeMu.Lock()
	if c.placed == nil {
		c.placed = map[ReplicaSpec]placement{}
	}
	c.placed[key] = placement{datastoreName: name, cluster: cluster, until: time.Now().Add(placementTTL)}
	c.placeMu.Unlock()
	return name, nil
}

func (c *Client) placementCluster(spec ReplicaSpec) string {
	c.placeMu.Lock()
	defer c.placeMu.Unlock()
	return c.placed[placementKey(spec)].cluster
}

func (c *Client) readPlacement(ctx context.Context, spec ReplicaSpec) (string, string, error) {
	var host mo.HostSystem
	hr := ref("HostSystem", spec.Host)
	if err := c.props(ctx, hr, []string{"name", "parent", "datastore"}, &host); err != nil {
		return "", "", wrap("target host "+spec.Host, err)
	}
	var ds mo.Datastore
	dr := ref("Datastore", spec.Datastore)
	if err := c.props(ctx, dr, []string{"name"}, &ds); err != nil {
		return "", "", wrap("target datastore "+spec.Datastore, err)
	}
	if !slices.Contains(values(host.Datastore), spec.Datastore) {
		return "", "", fail("target placement", ErrDatastoreNotMounted, fmt.Errorf("host %s does not mount datastore %s", host.Name, ds.Name))
	}
	var pool mo.ResourcePool
	pr := ref("ResourcePool", spec.Pool)
	if err := c.props(ctx, pr, []string{"owner"}, &pool); err != nil {
		return "", "", wrap("target resource pool "+spec.Pool, err)
	}
	if host.Parent == nil || pool.Owner.Value != host.Parent.Value {
		return "", "", fail("target placement", ErrInvalid, fmt.Errorf("resource pool %s does not belong to the compute resource of host %s", spec.Pool, host.Name))
	}
	var folder mo.Folder
	fr := ref("Folder", spec.Folder)
	if err := c.props(ctx, fr, []string{"childType"}, &folder); err != nil {
		return "", "", wrap("target folder "+spec.Folder, err)
	}
	if !slices.Contains(folder.ChildType, "VirtualMachine") {
		return "", "", fail("target placement", ErrInvalid, fmt.Errorf("folder %s does not hold VMs", spec.Folder))
	}
	cluster := ""
	if host.Parent.Type == "ClusterComputeResource" {
		cluster = host.Parent.Value
	}
	return ds.Name, cluster, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
