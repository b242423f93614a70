package vcsim

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/pbm"
	pbmtypes "github.com/vmware/govmomi/pbm/types"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

func startLab(t *testing.T, o Options) (*Server, context.Context) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	s, err := Start(ctx, o, nil)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(s.Close)
	return s, ctx
}

func TestLabInventory(t *testing.T) {
	s, ctx := startLab(t, Options{})
	c, err := s.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f := find.NewFinder(c.Client, true)
	dc, err := f.Datacenter(ctx, DatacenterName)
	if err != nil {
		t.Fatal(err)
	}
	f.SetDatacenter(dc)

	for _, tc := range []struct {
		cluster string
		hosts   int
		ds      []string
	}{
		{SourceClusterName, 3, []string{"src-ds-01", "src-ds-02"}},
		{TargetClusterName, 2, []string{"dst-ds-01", "dst-ds-02"}},
	} {
		hosts, err := f.HostSystemList(ctx, tc.cluster+"/*")
		if err != nil {
			t.Fatalf("%s hosts: %v", tc.cluster, err)
		}
		if len(hosts) != tc.hosts {
			t.Fatalf("%s: %d hosts, want %d", tc.cluster, len(hosts), tc.hosts)
		}
		for _, h := range hosts {
			var mh mo.HostSystem
			if err := h.Properties(ctx, h.Reference(), []string{"datastore"}, &mh); err != nil {
				t.Fatal(err)
			}
			if len(mh.Datastore) != len(tc.ds) {
				t.Fatalf("%s mounts %d datastores, want %d", h.Name(), len(mh.Datastore), len(tc.ds))
			}
		}
		for _, ds := range tc.ds {
			if st, err := os.Stat(filepath.Join(s.DatastoreRoot, ds)); err != nil || !st.IsDir() {
				t.Fatalf("datastore dir %s: %v", ds, err)
			}
		}
	}

	vms, err := f.VirtualMachineList(ctx, "*")
	if err != nil {
		t.Fatal(err)
	}
	// 4 protected VMs + a VM proxy per cluster.
	if len(vms) != 6 {
		t.Fatalf("%d VMs, want 6", len(vms))
	}
	vm, err := f.VirtualMachine(ctx, ProtectedVMName(2))
	if err != nil {
		t.Fatal(err)
	}
	devices, err := vm.Device(ctx)
	if err != nil {
		t.Fatal(err)
	}
	disks := devices.SelectByType((*types.VirtualDisk)(nil))
	if len(disks) != 3 {
		t.Fatalf("%s has %d disks, want 3", ProtectedVMName(2), len(disks))
	}
	if _, err := os.Stat(filepath.Join(s.DatastoreRoot, "src-ds-01", ProtectedVMName(2), ProtectedVMName(2)+"_0.vmdk")); err != nil {
		t.Fatalf("disk descriptor not in the datastore directory: %v", err)
	}
}

func TestIoFilterManager(t *testing.T) {
	s, ctx := startLab(t, Options{ProtectedVMs: 1, ProxyVMs: -1})
	c, err := s.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f := find.NewFinder(c.Client, true)
	cluster, err := f.ClusterComputeResource(ctx, "/DC0/host/"+SourceClusterName)
	if err != nil {
		t.Fatal(err)
	}
	fm := *c.ServiceContent.IoFilterManager
	res, err := methods.InstallIoFilter_Task(ctx, c.Client, &types.InstallIoFilter_Task{This: fm, VibUrl: "https://127.0.0.1/continuum-cdp-1.0.vib", CompRes: cluster.Reference()})
	if err != nil {
		t.Fatal(err)
	}
	info, err := object.NewTask(c.Client, res.Returnval).WaitForResult(ctx, nil)
	if err != nil {
		t.Fatalf("install: %v", err)
	}
	if info.Result != FilterID("continuum-cdp-1.0.vib") {
		t.Fatalf("install result %v", info.Result)
	}
	q, err := methods.QueryIoFilterInfo(ctx, c.Client, &types.QueryIoFilterInfo{This: fm, CompRes: cluster.Reference()})
	if err != nil || len(q.Returnval) != 1 {
		t.Fatalf("query: %v %+v", err, q)
	}
	// A second install of the same VIB fails with AlreadyExists.
	res, err = methods.InstallIoFilter_Task(ctx, c.Client, &types.InstallIoFilter_Task{This: fm, VibUrl: "https://127.0.0.1/continuum-cdp-1.0.vib", CompRes: cluster.Reference()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := object.NewTask(c.Client, res.Returnval).WaitForResult(ctx, nil); !fault.Is(err, &types.AlreadyExists{}) {
		t.Fatalf("second install: %v", err)
	}
	// A host object is not a cluster.
	host, err := f.HostSystem(ctx, "/DC0/host/"+SourceClusterName+"/"+SourceHostName(0))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := methods.QueryIoFilterInfo(ctx, c.Client, &types.QueryIoFilterInfo{This: fm, CompRes: host.Reference()}); err == nil {
		t.Fatal("query on a host: want an error")
	}
	if got := s.Filters().Installed(cluster.Reference().Value); len(got) != 1 {
		t.Fatalf("installed %v", got)
	}
	un, err := methods.UninstallIoFilter_Task(ctx, c.Client, &types.UninstallIoFilter_Task{This: fm, FilterId: FilterID("x/continuum-cdp-1.0.vib"), CompRes: cluster.Reference()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := object.NewTask(c.Client, un.Returnval).WaitForResult(ctx, nil); err != nil {
		t.Fatalf("uninstall: %v", err)
	}
	if got := s.Filters().Installed(cluster.Reference().Value); len(got) != 0 {
		t.Fatalf("installed after uninstall %v", got)
	}
}

func TestProfileAssociations(t *testing.T) {
	s, ctx := startLab(t, Options{ProtectedVMs: 1, ProxyVMs: -1})
	c, err := s.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := pbm.NewClient(ctx, c.Client)
	if err != nil {
		t.Fatal(err)
	}
	id, err := pc.CreateProfile(ctx, pbmtypes.PbmCapabilityProfileCreateSpec{
		Name:         "p1",
		ResourceType: pbmtypes.PbmProfileResourceType{ResourceType: string(pbmtypes.PbmProfileResourceTypeEnumSTORAGE)},
		Constraints:  &pbmtypes.PbmCapabilitySubProfileConstraints{},
	})
	if err != nil {
		t.Fatal(err)
	}
	vm, err := find.NewFinder(c.Client, true).VirtualMachine(ctx, "/DC0/vm/"+ProtectedVMName(0))
	if err != nil {
		t.Fatal(err)
	}
	devices, _ := vm.Device(ctx)
	disk := devices.SelectByType((*types.VirtualDisk)(nil))[0]
	entity := pbmtypes.PbmServerObjectRef{ObjectType: "virtualDiskId", Key: vm.Reference().Value + ":2000"}
	if got, _ := pc.QueryAssociatedProfile(ctx, entity); len(got) != 0 {
		t.Fatalf("associated before apply: %v", got)
	}
	task, err := vm.Reconfigure(ctx, types.VirtualMachineConfigSpec{DeviceChange: []types.BaseVirtualDeviceConfigSpec{
		&types.VirtualDeviceConfigSpec{
			Operation: types.VirtualDeviceConfigSpecOperationEdit,
			Device:    disk,
			Profile:   []types.BaseVirtualMachineProfileSpec{&types.VirtualMachineDefinedProfileSpec{ProfileId: id.UniqueId}},
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := pc.QueryAssociatedProfile(ctx, entity)
	if err != nil || len(got) != 1 || got[0].UniqueId != id.UniqueId {
		t.Fatalf("associated after apply: %v %v", got, err)
	}
	cr, err := pc.FetchComplianceResult(ctx, []pbmtypes.PbmServerObjectRef{entity})
	if err != nil || len(cr) != 1 || cr[0].ComplianceStatus != "compliant" {
		t.Fatalf("compliance: %v %+v", err, cr)
	}
}

func TestFailCreateVMAfterCreate(t *testing.T) {
	s, ctx := startLab(t, Options{ProtectedVMs: 1, ProxyVMs: -1})
	c, err := s.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f := find.NewFinder(c.Client, true)
	dc, _ := f.Datacenter(ctx, DatacenterName)
	f.SetDatacenter(dc)
	folders, _ := dc.Folders(ctx)
	pool, err := f.ResourcePool(ctx, TargetClusterName+"/Resources")
	if err != nil {
		t.Fatal(err)
	}
	s.FailCreateVMAfterCreate(1)
	err = createVM(ctx, c.Client, folders.VmFolder, VMSpec("doomed", "dst-ds-01", []int64{64}), pool, nil)
	if err == nil {
		t.Fatal("create: want the injected failure")
	}
	if _, err := f.VirtualMachine(ctx, "doomed"); err != nil {
		t.Fatalf("the VM must exist despite the failed task: %v", err)
	}
	if s.CreatedThenFailed() != 1 {
		t.Fatalf("CreatedThenFailed = %d", s.CreatedThenFailed())
	}
	// Only the next call was armed.
	if err := createVM(ctx, c.Client, folders.VmFolder, VMSpec("fine", "dst-ds-01", []int64{64}), pool, nil); err != nil {
		t.Fatalf("second create: %v", err)
	}
}

func TestDropSessions(t *testing.T) {
	s, ctx := startLab(t, Options{ProtectedVMs: -1, ProxyVMs: -1})
	c, err := s.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n, err := s.DropSessions(ctx)
	if err != nil || n < 1 {
		t.Fatalf("drop: %d %v", n, err)
	}
	if _, err := find.NewFinder(c.Client).DatacenterList(ctx, "*"); err == nil {
		t.Fatal("a dropped session must be refused")
	}
}

func TestStartRejectsNonLoopback(t *testing.T) {
	if _, err := Start(context.Background(), Options{Listen: "0.0.0.0:0"}, nil); err == nil {
		t.Fatal("want an error for a non-loopback address")
	}
}

func TestTwoSites(t *testing.T) {
	src, ctx := startLab(t, Options{Site: SiteSource, ProtectedVMs: 2})
	dst, _ := startLab(t, Options{Site: SiteTarget})
	if src.URL.Host == dst.URL.Host {
		t.Fatal("both sites on one address")
	}
	for _, tc := range []struct {
		s             *Server
		want, notWant string
		vms           int
	}{
		{src, SourceClusterName, TargetClusterName, 3},
		{dst, TargetClusterName, SourceClusterName, 1},
	} {
		c, err := tc.s.Client(ctx)
		if err != nil {
			t.Fatal(err)
		}
		f := find.NewFinder(c.Client, true)
		if _, err := f.ClusterComputeResource(ctx, "/DC0/host/"+tc.want); err != nil {
			t.Fatalf("%s: %v", tc.want, err)
		}
		if _, err := f.ClusterComputeResource(ctx, "/DC0/host/"+tc.notWant); err == nil {
			t.Fatalf("%s must not be on this site", tc.notWant)
		}
		vms, err := f.VirtualMachineList(ctx, "/DC0/vm/*")
		if err != nil || len(vms) != tc.vms {
			t.Fatalf("%d VMs (%v), want %d", len(vms), err, tc.vms)
		}
	}
	if _, err := Start(ctx, Options{Site: "moon"}, nil); err == nil {
		t.Fatal("unknown site accepted")
	}
}

func TestSlowCalls(t *testing.T) {
	s, ctx := startLab(t, Options{ProtectedVMs: -1, ProxyVMs: -1})
	c, err := s.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.SlowCalls("CurrentTime", 2*time.Second)
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if _, err := methods.GetCurrentTime(short, c.Client); err == nil {
		t.Fatal("a slowed call must outlast a short deadline")
	}
	s.SlowCalls("CurrentTime", 0)
	if _, err := methods.GetCurrentTime(ctx, c.Client); err != nil {
		t.Fatalf("after removing the delay: %v", err)
	}
}
