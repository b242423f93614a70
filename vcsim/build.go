package vcsim

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// build creates the lab inventory through the vSphere API, the same way an
// administrator would, so that every object carries what vCenter would give
// it (events, datastore mounts, resource pools).
func (s *Server) build(ctx context.Context) error {
	c, err := s.Client(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = c.Logout(context.Background()) }()
	vc := c.Client

	finder := find.NewFinder(vc)
	dc, err := finder.Datacenter(ctx, DatacenterName)
	if err != nil {
		return fmt.Errorf("find datacenter: %w", err)
	}
	finder.SetDatacenter(dc)
	folders, err := dc.Folders(ctx)
	if err != nil {
		return fmt.Errorf("datacenter folders: %w", err)
	}

	o := s.Options
	var srcDS, dstDS []string
	for i := 0; i < o.SourceDatastores; i++ {
		srcDS = append(srcDS, SourceDatastoreName(i))
	}
	for i := 0; i < o.TargetDatastores; i++ {
		dstDS = append(dstDS, TargetDatastoreName(i))
	}
	type job struct {
		name  string
		ds    string
		host  *object.HostSystem
		pool  *object.ResourcePool
		disks []int64
	}
	var jobs []job
	if o.Site != SiteTarget {
		hosts, err := s.buildCluster(ctx, vc, folders.HostFolder, SourceClusterName, o.SourceHosts, SourceHostName, srcDS)
		if err != nil {
			return err
		}
		pool, err := finder.ResourcePool(ctx, SourceClusterName+"/Resources")
		if err != nil {
			return fmt.Errorf("source resource pool: %w", err)
		}
		for i := 0; i < o.ProxyVMs; i++ {
			jobs = append(jobs, job{SourceProxyName(i), srcDS[0], hosts[i%len(hosts)], pool, []int64{1024}})
		}
		for i := 0; i < o.ProtectedVMs; i++ {
			disks := make([]int64, 1+i%3)
			for d := range disks {
				disks[d] = o.DiskSizesMB[(i+d)%len(o.DiskSizesMB)]
			}
			jobs = append(jobs, job{ProtectedVMName(i), srcDS[i%len(srcDS)], hosts[i%len(hosts)], pool, disks})
		}
	}
	if o.Site != SiteSource {
		hosts, err := s.buildCluster(ctx, vc, folders.HostFolder, TargetClusterName, o.TargetHosts, TargetHostName, dstDS)
		if err != nil {
			return err
		}
		// A second standard network, for failover's NIC remapping.
		ns, err := hosts[0].ConfigManager().NetworkSystem(ctx)
		if err != nil {
			return fmt.Errorf("network system: %w", err)
		}
		if err := ns.AddPortGroup(ctx, types.HostPortGroupSpec{Name: TargetNetworkName, VswitchName: "vSwitch0"}); err != nil {
			return fmt.Errorf("add network %s: %w", TargetNetworkName, err)
		}
		pool, err := finder.ResourcePool(ctx, TargetClusterName+"/Resources")
		if err != nil {
			return fmt.Errorf("target resource pool: %w", err)
		}
		for i := 0; i < o.ProxyVMs; i++ {
			jobs = append(jobs, job{TargetProxyName(i), dstDS[0], hosts[i%len(hosts)], pool, []int64{1024}})
		}
	}

	// The simulator numbers objects in creation order, so parallel
	// creation gives a VM another MoRef each time. A lab of a few VMs is
	// built one VM at a time: restarted on the same directory, its VMs
	// keep the MoRefs the coordinators' tasks and replicas were keyed by.
	workers := o.Workers
	if len(jobs) <= sequentialJobs {
		workers = 1
	}
	work := make(chan job)
	errs := make(chan error, len(jobs))
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range work {
				spec := VMSpec(j.name, j.ds, j.disks)
				if err := createVM(ctx, vc, folders.VmFolder, spec, j.pool, j.host); err != nil {
					errs <- fmt.Errorf("create vm %s: %w", j.name, err)
				}
			}
		}()
	}
	for _, j := range jobs {
		work <- j
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		return err
	}
	return nil
}

// sequentialJobs is the most VMs a lab builds one at a time.
const sequentialJobs = 32

// buildCluster creates a cluster with hosts that all mount the same local
// datastores (same name, same directory), which the simulator treats as one
// shared datastore.
func (s *Server) buildCluster(ctx context.Context, c *vim25.Client, hostFolder *object.Folder, name string, nhosts int, hostName func(int) string, datastores []string) ([]*object.HostSystem, error) {
	cluster, err := hostFolder.CreateCluster(ctx, name, types.ClusterConfigSpecEx{})
	if err != nil {
		return nil, fmt.Errorf("create cluster %s: %w", name, err)
	}
	var hosts []*object.HostSystem
	for i := 0; i < nhosts; i++ {
		h, err := AddHost(ctx, c, cluster, hostName(i))
		if err != nil {
			return nil, err
		}
		hosts = append(hosts, h)
	}
	for _, ds := range datastores {
		for _, h := range hosts {
			if err := s.MountDatastore(ctx, h, ds); err != nil {
				return nil, err
			}
		}
	}
	return hosts, nil
}

// AddHost adds a host to a cluster and returns it.
func AddHost(ctx context.Context, c *vim25.Client, cluster *object.ClusterComputeResource, name string) (*object.HostSystem, error) {
	task, err := cluster.AddHost(ctx, types.HostConnectSpec{HostName: name}, true, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("add host %s: %w", name, err)
	}
	info, err := task.WaitForResult(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("add host %s: %w", name, err)
	}
	return object.NewHostSystem(c, info.Result.(types.ManagedObjectReference)), nil
}

// MountDatastore mounts the lab datastore of that name on a host, creating
// its directory under DatastoreRoot if needed.
func (s *Server) MountDatastore(ctx context.Context, h *object.HostSystem, name string) error {
	dir := filepath.Join(s.DatastoreRoot, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("mount datastore %s: %w", name, err)
	}
	dss, err := h.ConfigManager().DatastoreSystem(ctx)
	if err != nil {
		return fmt.Errorf("mount datastore %s on %s: %w", name, h.Reference().Value, err)
	}
	if _, err := dss.CreateLocalDatastore(ctx, name, dir); err != nil {
		return fmt.Errorf("mount datastore %s on %s: %w", name, h.Reference().Value, err)
	}
	return nil
}

// VMSpec is the configuration of a lab VM: one SCSI controller, one NIC on
// the VM network and a disk per size, each in the VM's directory.
func VMSpec(name, datastore string, diskSizesMB []int64) types.VirtualMachineConfigSpec {
	spec := types.VirtualMachineConfigSpec{
		Name:     name,
		GuestId:  string(types.VirtualMachineGuestOsIdentifierOtherLinux64Guest),
		NumCPUs:  2,
		MemoryMB: 2048,
		Files:    &types.VirtualMachineFileInfo{VmPathName: fmt.Sprintf("[%s] %s/%s.vmx", datastore, name, name)},
	}
	scsi := &types.ParaVirtualSCSIController{VirtualSCSIController: types.VirtualSCSIController{
		SharedBus: types.VirtualSCSISharingNoSharing,
		VirtualController: types.VirtualController{
			BusNumber:     0,
			VirtualDevice: types.VirtualDevice{Key: 1000},
		},
	}}
	nic := &types.VirtualVmxnet3{VirtualVmxnet: types.VirtualVmxnet{VirtualEthernetCard: types.VirtualEthernetCard{
		VirtualDevice: types.VirtualDevice{
			Key: 4000,
			Backing: &types.VirtualEthernetCardNetworkBackingInfo{
				VirtualDeviceDeviceBackingInfo: types.VirtualDeviceDeviceBackingInfo{DeviceName: NetworkName},
			},
		},
		AddressType: string(types.VirtualEthernetCardMacTypeGenerated),
	}}}
	spec.DeviceChange = append(spec.DeviceChange,
		&types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd, Device: scsi},
		&types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd, Device: nic})
	for i, mb := range diskSizesMB {
		unit := int32(i)
		if unit >= 7 {
			unit++ // unit 7 is the controller's own
		}
		disk := &types.VirtualDisk{
			CapacityInBytes: mb << 20,
			CapacityInKB:    mb << 10,
			VirtualDevice: types.VirtualDevice{
				Key:           int32(2000 + i),
				ControllerKey: 1000,
				UnitNumber:    &unit,
				Backing: &types.VirtualDiskFlatVer2BackingInfo{
					DiskMode:        string(types.VirtualDiskModePersistent),
					ThinProvisioned: types.NewBool(true),
					VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{
						FileName: fmt.Sprintf("[%s] %s/%s_%d.vmdk", datastore, name, name, i),
					},
				},
			},
		}
		spec.DeviceChange = append(spec.DeviceChange, &types.VirtualDeviceConfigSpec{
			Operation:     types.VirtualDeviceConfigSpecOperationAdd,
			FileOperation: types.VirtualDeviceConfigSpecFileOperationCreate,
			Device:        disk,
		})
	}
	return spec
}

func createVM(ctx context.Context, c *vim25.Client, folder *object.Folder, spec types.VirtualMachineConfigSpec, pool *object.ResourcePool, host *object.HostSystem) error {
	task, err := folder.CreateVM(ctx, spec, pool, host)
	if err != nil {
		return err
	}
	return pollTask(ctx, c, task.Reference())
}

// pollTask reads the task's state instead of waiting on property updates,
// which the simulator batches every 20 ms.
func pollTask(ctx context.Context, c *vim25.Client, ref types.ManagedObjectReference) error {
	var t mo.Task
	for delay := 1; ; delay = min(delay*2, 50) {
		if err := object.NewCommon(c, ref).Properties(ctx, ref, []string{"info.state", "info.error"}, &t); err != nil {
			return err
		}
		switch t.Info.State {
		case types.TaskInfoStateSuccess:
			return nil
		case types.TaskInfoStateError:
			if t.Info.Error != nil {
				return fmt.Errorf("task %s: %s", ref.Value, t.Info.Error.LocalizedMessage)
			}
			return fmt.Errorf("task %s failed", ref.Value)
		}
		if err := sleepCtx(ctx, delay); err != nil {
			return err
		}
	}
}
