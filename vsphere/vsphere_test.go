package vsphere_test

import (
	"context"
	"errors"
	"net"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/vcsim"
	"github.com/continuum-cdp/continuum/vsphere"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/types"
)

type env struct {
	srv *vcsim.Server
	c   *vsphere.Client
	inv *vsphere.Inventory
	ctx context.Context
}

func connectCfg(srv *vcsim.Server) vsphere.Config {
	return vsphere.Config{URL: srv.SDKURL(), Username: vcsim.Username, Password: vcsim.Password, Insecure: true, KeepAlive: -1}
}

func newEnv(t *testing.T, o vcsim.Options) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	srv, err := vcsim.Start(ctx, o, nil)
	if err != nil {
		t.Fatalf("start vcsim: %v", err)
	}
	t.Cleanup(srv.Close)
	c, err := vsphere.Connect(ctx, connectCfg(srv))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	inv, err := c.Inventory(ctx)
	if err != nil {
		t.Fatalf("inventory: %v", err)
	}
	return &env{srv: srv, c: c, inv: inv, ctx: ctx}
}

// replicaSpec places the replica of a source VM on the first target host and
// datastore.
func (e *env) replicaSpec(t *testing.T, source string) vsphere.ReplicaSpec {
	t.Helper()
	src := e.inv.VMByName(source)
	if src == nil {
		t.Fatalf("no VM %s", source)
	}
	cl := e.inv.ClusterByName(vcsim.TargetClusterName)
	host := e.inv.HostByName(vcsim.TargetHostName(0))
	ds := e.inv.DatastoreByName(vcsim.TargetDatastoreName(0))
	return vsphere.ReplicaSpec{
		SourceVM:  src.MoRef,
		PolicyID:  "pol-1",
		Name:      source + "-replica",
		Host:      host.MoRef,
		Datastore: ds.MoRef,
		Pool:      cl.ResourcePool,
		Folder:    e.inv.Datacenters[0].VMFolder,
	}
}

func (e *env) countReplicas(t *testing.T) int {
	t.Helper()
	inv, err := e.c.Inventory(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, vm := range inv.VMs {
		if vm.Replica != nil {
			n++
		}
	}
	return n
}

func TestConnectErrors(t *testing.T) {
	e := newEnv(t, vcsim.Options{ProtectedVMs: -1, ProxyVMs: -1})
	ctx := e.ctx

	bad := connectCfg(e.srv)
	bad.Password = "wrong"
	if _, err := vsphere.Connect(ctx, bad); !errors.Is(err, vsphere.ErrAuth) {
		t.Fatalf("wrong password: %v, want ErrAuth", err)
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	down := connectCfg(e.srv)
	down.URL = "https://" + addr + "/sdk"
	down.RetryBackoff = time.Millisecond
	if _, err := vsphere.Connect(ctx, down); !errors.Is(err, vsphere.ErrUnreachable) {
		t.Fatalf("closed port: %v, want ErrUnreachable", err)
	}

	if _, err := vsphere.Connect(ctx, vsphere.Config{}); !errors.Is(err, vsphere.ErrInvalid) {
		t.Fatalf("empty config: %v, want ErrInvalid", err)
	}

	tp := connectCfg(e.srv)
	tp.Insecure = false
	tp.Thumbprint = e.srv.Thumbprint()
	c, err := vsphere.Connect(ctx, tp)
	if err != nil {
		t.Fatalf("connect with thumbprint: %v", err)
	}
	_ = c.Close(ctx)

	ca := connectCfg(e.srv)
	ca.Insecure = false
	if ca.CAFile, err = e.srv.CertificateFile(); err != nil {
		t.Fatal(err)
	}
	c, err = vsphere.Connect(ctx, ca)
	if err != nil {
		t.Fatalf("connect with CA file: %v", err)
	}
	_ = c.Close(ctx)

	strict := connectCfg(e.srv)
	strict.Insecure = false
	strict.RetryBackoff = time.Millisecond
	if _, err := vsphere.Connect(ctx, strict); !errors.Is(err, vsphere.ErrCertificate) {
		t.Fatalf("an unknown self-signed certificate: %v, want ErrCertificate", err)
	}
}

func TestInventory(t *testing.T) {
	e := newEnv(t, vcsim.Options{})
	inv := e.inv
	if len(inv.Datacenters) != 1 || len(inv.Clusters) != 2 || len(inv.Hosts) != 5 {
		t.Fatalf("dc=%d clusters=%d hosts=%d", len(inv.Datacenters), len(inv.Clusters), len(inv.Hosts))
	}
	src := inv.ClusterByName(vcsim.SourceClusterName)
	if len(src.Hosts) != 3 || src.ResourcePool == "" {
		t.Fatalf("source cluster %+v", src)
	}
	h := inv.HostByName(vcsim.SourceHostName(1))
	if h.Cluster != src.MoRef || len(h.Datastores) != 2 {
		t.Fatalf("host %+v", h)
	}
	ds := inv.DatastoreByName(vcsim.TargetDatastoreName(1))
	if len(ds.Hosts) != 2 || ds.URL == "" {
		t.Fatalf("datastore %+v", ds)
	}
	if len(inv.VMs) != 6 {
		t.Fatalf("%d VMs", len(inv.VMs))
	}
	vm := inv.VMByName(vcsim.ProtectedVMName(1))
	if vm == nil || vm.InstanceUUID == "" || vm.Cluster != src.MoRef || vm.Host == "" || vm.PowerState != "poweredOff" || vm.Replica != nil {
		t.Fatalf("vm %+v", vm)
	}
	if len(vm.Disks) != 2 || vm.Disks[0].CapacityBytes != 512<<20 || vm.Disks[1].CapacityBytes != 1024<<20 || vm.Disks[0].Datastore == "" {
		t.Fatalf("disks %+v", vm.Disks)
	}
	if len(vm.Networks) != 1 || vm.Networks[0] != vcsim.NetworkName {
		t.Fatalf("networks %v", vm.Networks)
	}
	one, err := e.c.VM(e.ctx, vm.MoRef)
	if err != nil || one.Cluster != vm.Cluster || len(one.Disks) != 2 {
		t.Fatalf("VM(): %+v %v", one, err)
	}
	if _, err := e.c.VM(e.ctx, "vm-does-not-exist"); !errors.Is(err, vsphere.ErrNotFound) {
		t.Fatalf("missing VM: %v", err)
	}
	// The hosts alone are the inventory's hosts.
	hosts, err := e.c.Hosts(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	byRef := func(hs []vsphere.Host) map[string]vsphere.Host {
		m := map[string]vsphere.Host{}
		for _, h := range hs {
			m[h.MoRef] = h
		}
		return m
	}
	if got, want := byRef(hosts), byRef(inv.Hosts); !reflect.DeepEqual(got, want) {
		t.Fatalf("Hosts() = %+v, inventory hosts %+v", got, want)
	}
}

func TestInstallFilter(t *testing.T) {
	e := newEnv(t, vcsim.Options{ProtectedVMs: 1, ProxyVMs: -1})
	cl := e.inv.ClusterByName(vcsim.SourceClusterName)
	st, err := e.c.InstallFilter(e.ctx, cl.MoRef)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Installed || st.FilterID == "" || st.ProfileID == "" {
		t.Fatalf("first install %+v", st)
	}
	again, err := e.c.InstallFilter(e.ctx, cl.MoRef)
	if err != nil {
		t.Fatal(err)
	}
	if again.Installed || again.FilterID != st.FilterID || again.ProfileID != st.ProfileID {
		t.Fatalf("second install %+v, first %+v", again, st)
	}
	if got := e.srv.Filters().Installed(cl.MoRef); len(got) != 1 {
		t.Fatalf("filters on cluster: %v", got)
	}
	ok, err := e.c.FilterInstalled(e.ctx, e.inv.ClusterByName(vcsim.TargetClusterName).MoRef)
	if err != nil || ok {
		t.Fatalf("target cluster has no filter yet: %v %v", ok, err)
	}
	if _, err := e.c.InstallFilter(e.ctx, "domain-c999"); !errors.Is(err, vsphere.ErrNotFound) {
		t.Fatalf("missing cluster: %v", err)
	}
}

func TestInstallFilterRace(t *testing.T) {
	e := newEnv(t, vcsim.Options{ProtectedVMs: -1, ProxyVMs: -1})
	cl := e.inv.ClusterByName(vcsim.TargetClusterName)
	other, err := vsphere.Connect(e.ctx, connectCfg(e.srv))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(e.ctx)
	var wg sync.WaitGroup
	res := make([]*vsphere.FilterState, 2)
	errs := make([]error, 2)
	for i, c := range []*vsphere.Client{e.c, other} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i], errs[i] = c.InstallFilter(e.ctx, cl.MoRef)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if res[0].FilterID != res[1].FilterID {
		t.Fatalf("filters differ: %+v %+v", res[0], res[1])
	}
	p1, _ := e.c.EnsureProfile(e.ctx)
	p2, _ := other.EnsureProfile(e.ctx)
	if p1 != p2 {
		t.Fatalf("profiles differ after the race: %s %s", p1, p2)
	}
	if got := e.srv.Filters().Installed(cl.MoRef); len(got) != 1 {
		t.Fatalf("filters on cluster: %v", got)
	}
}

func TestEnsureReplica(t *testing.T) {
	e := newEnv(t, vcsim.Options{ProtectedVMs: 3, ProxyVMs: -1})
	name := vcsim.ProtectedVMName(2) // three disks
	spec := e.replicaSpec(t, name)
	r, err := e.c.EnsureReplica(e.ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	src := e.inv.VMByName(name)
	if r.Replica == nil || r.Replica.SourceInstanceUUID != src.InstanceUUID || r.Replica.PolicyID != "pol-1" {
		t.Fatalf("marker %+v", r.Replica)
	}
	if r.Host != spec.Host || r.Name != spec.Name || r.Cluster != e.inv.ClusterByName(vcsim.TargetClusterName).MoRef {
		t.Fatalf("placement %+v", r)
	}
	if len(r.Disks) != len(src.Disks) {
		t.Fatalf("replica disks %+v, source %+v", r.Disks, src.Disks)
	}
	for _, d := range src.Disks {
		rd := r.Disk(d.Key)
		if rd == nil || rd.CapacityBytes != d.CapacityBytes || rd.Datastore != spec.Datastore {
			t.Fatalf("replica disk for %+v: %+v", d, rd)
		}
	}
	if len(r.Networks) != 1 || r.Networks[0] != vcsim.NetworkName {
		t.Fatalf("replica networks %v", r.Networks)
	}
	again, err := e.c.EnsureReplica(e.ctx, spec)
	if err != nil || again.MoRef != r.MoRef {
		t.Fatalf("second ensure: %+v %v", again, err)
	}
	found, err := e.c.FindReplica(e.ctx, src.MoRef, "pol-1")
	if err != nil || found == nil || found.MoRef != r.MoRef {
		t.Fatalf("find: %+v %v", found, err)
	}
	if none, err := e.c.FindReplica(e.ctx, src.MoRef, "pol-2"); err != nil || none != nil {
		t.Fatalf("other policy: %+v %v", none, err)
	}
	if n := e.countReplicas(t); n != 1 {
		t.Fatalf("%d replicas", n)
	}
}

func TestEnsureReplicaRace(t *testing.T) {
	e := newEnv(t, vcsim.Options{ProtectedVMs: 1, ProxyVMs: -1})
	spec := e.replicaSpec(t, vcsim.ProtectedVMName(0))
	other, err := vsphere.Connect(e.ctx, connectCfg(e.srv))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(e.ctx)
	var wg sync.WaitGroup
	got := make([]*vsphere.VM, 2)
	errs := make([]error, 2)
	for i, c := range []*vsphere.Client{e.c, other} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = c.EnsureReplica(e.ctx, spec)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got[0].MoRef != got[1].MoRef {
		t.Fatalf("two replicas: %s %s", got[0].MoRef, got[1].MoRef)
	}
	if n := e.countReplicas(t); n != 1 {
		t.Fatalf("%d replicas", n)
	}
}

func TestEnsureReplicaFailedCreate(t *testing.T) {
	e := newEnv(t, vcsim.Options{ProtectedVMs: 1, ProxyVMs: -1})
	spec := e.replicaSpec(t, vcsim.ProtectedVMName(0))
	e.srv.FailCreateVMAfterCreate(1)
	r, err := e.c.EnsureReplica(e.ctx, spec)
	if err != nil {
		t.Fatalf("ensure after a create that failed late: %v", err)
	}
	if e.srv.CreatedThenFailed() != 1 {
		t.Fatalf("the fault did not fire: %d", e.srv.CreatedThenFailed())
	}
	if r.Replica == nil || len(r.Disks) != 1 {
		t.Fatalf("replica %+v", r)
	}
	if n := e.countReplicas(t); n != 1 {
		t.Fatalf("%d replicas", n)
	}
}

func TestEnsureReplicaBadPlacement(t *testing.T) {
	e := newEnv(t, vcsim.Options{ProtectedVMs: 1, ProxyVMs: -1})
	good := e.replicaSpec(t, vcsim.ProtectedVMName(0))
	srcDS := e.inv.DatastoreByName(vcsim.SourceDatastoreName(0)).MoRef
	srcPool := e.inv.ClusterByName(vcsim.SourceClusterName).ResourcePool
	cases := []struct {
		name string
		mod  func(*vsphere.ReplicaSpec)
		want error
	}{
		{"datastore not mounted", func(s *vsphere.ReplicaSpec) { s.Datastore = srcDS }, vsphere.ErrDatastoreNotMounted},
		{"missing host", func(s *vsphere.ReplicaSpec) { s.Host = "host-9999" }, vsphere.ErrNotFound},
		{"missing datastore", func(s *vsphere.ReplicaSpec) { s.Datastore = "datastore-9999" }, vsphere.ErrNotFound},
		{"missing source", func(s *vsphere.ReplicaSpec) { s.SourceVM = "vm-9999" }, vsphere.ErrNotFound},
		{"pool of another cluster", func(s *vsphere.ReplicaSpec) { s.Pool = srcPool }, vsphere.ErrInvalid},
		{"missing folder", func(s *vsphere.ReplicaSpec) { s.Folder = "group-v9999" }, vsphere.ErrNotFound},
		{"no name", func(s *vsphere.ReplicaSpec) { s.Name = "" }, vsphere.ErrInvalid},
		{"no policy", func(s *vsphere.ReplicaSpec) { s.PolicyID = "" }, vsphere.ErrInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := good
			tc.mod(&s)
			if _, err := e.c.EnsureReplica(e.ctx, s); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	inv, err := e.c.Inventory(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.VMs) != len(e.inv.VMs) {
		t.Fatalf("bad input created VMs: %d -> %d", len(e.inv.VMs), len(inv.VMs))
	}
}

func TestApplyPolicy(t *testing.T) {
	e := newEnv(t, vcsim.Options{ProtectedVMs: 3, ProxyVMs: -1})
	st, err := e.c.InstallFilter(e.ctx, e.inv.ClusterByName(vcsim.SourceClusterName).MoRef)
	if err != nil {
		t.Fatal(err)
	}
	vm := e.inv.VMByName(vcsim.ProtectedVMName(2))
	if err := e.c.ApplyPolicy(e.ctx, vm.MoRef, st.ProfileID, vm.Disks[0].Key); err != nil {
		t.Fatal(err)
	}
	got, err := e.c.VM(e.ctx, vm.MoRef)
	if err != nil {
		t.Fatal(err)
	}
	if got.Disk(vm.Disks[0].Key).ProfileID != st.ProfileID || got.Disk(vm.Disks[1].Key).ProfileID != "" {
		t.Fatalf("after one disk: %+v", got.Disks)
	}
	if err := e.c.ApplyPolicy(e.ctx, vm.MoRef, st.ProfileID); err != nil {
		t.Fatal(err)
	}
	if err := e.c.ApplyPolicy(e.ctx, vm.MoRef, st.ProfileID); err != nil {
		t.Fatalf("repeat: %v", err)
	}
	got, _ = e.c.VM(e.ctx, vm.MoRef)
	for _, d := range got.Disks {
		if d.ProfileID != st.ProfileID {
			t.Fatalf("disk %d profile %q", d.Key, d.ProfileID)
		}
		if ids := e.srv.AssociatedProfiles(vm.MoRef + ":" + itoa(d.Key)); len(ids) != 1 {
			t.Fatalf("lab records %v for disk %d", ids, d.Key)
		}
	}
	if err := e.c.ApplyPolicy(e.ctx, vm.MoRef, st.ProfileID, 4242); !errors.Is(err, vsphere.ErrNotFound) {
		t.Fatalf("unknown disk: %v", err)
	}
	if err := e.c.ApplyPolicy(e.ctx, vm.MoRef, ""); !errors.Is(err, vsphere.ErrInvalid) {
		t.Fatalf("no profile: %v", err)
	}
}

func TestRemoveCDPPolicy(t *testing.T) {
	e := newEnv(t, vcsim.Options{ProtectedVMs: 6, ProxyVMs: -1})
	st, err := e.c.InstallFilter(e.ctx, e.inv.ClusterByName(vcsim.SourceClusterName).MoRef)
	if err != nil {
		t.Fatal(err)
	}
	// A second profile, made by a client configured with another name.
	otherCfg := connectCfg(e.srv)
	otherCfg.ProfileName = "Gold"
	other, err := vsphere.Connect(e.ctx, otherCfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = other.Close(context.Background()) })
	goldID, err := other.EnsureProfile(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if goldID == "" || goldID == st.ProfileID {
		t.Fatalf("second profile %q, CDP profile %q", goldID, st.ProfileID)
	}

	assoc := func(vm string, key int32) []string {
		return e.srv.AssociatedProfiles(vm + ":" + itoa(key))
	}
	check := func(what, vm string, want map[int32]string) {
		t.Helper()
		got, err := e.c.VM(e.ctx, vm)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if len(got.Disks) != len(want) {
			t.Fatalf("%s: disks %+v, want keys of %v", what, got.Disks, want)
		}
		for _, d := range got.Disks {
			w, ok := want[d.Key]
			if !ok {
				t.Fatalf("%s: unexpected disk %d", what, d.Key)
			}
			if d.ProfileID != w {
				t.Fatalf("%s: disk %d ProfileID %q, want %q", what, d.Key, d.ProfileID, w)
			}
			ids := assoc(vm, d.Key)
			if w == "" && len(ids) != 0 || w != "" && (len(ids) != 1 || ids[0] != w) {
				t.Fatalf("%s: lab records %v for disk %d, want %q", what, ids, d.Key, w)
			}
		}
	}

	// Every disk carries the CDP profile, then none does.
	vm := e.inv.VMByName(vcsim.ProtectedVMName(2))
	if len(vm.Disks) < 2 {
		t.Fatalf("want a VM with two disks: %+v", vm.Disks)
	}
	if err := e.c.ApplyPolicy(e.ctx, vm.MoRef, st.ProfileID); err != nil {
		t.Fatal(err)
	}
	all, none := map[int32]string{}, map[int32]string{}
	for _, d := range vm.Disks {
		all[d.Key], none[d.Key] = st.ProfileID, ""
	}
	check("applied", vm.MoRef, all)

	// A client whose profile does not exist has nothing to take off.
	absentCfg := connectCfg(e.srv)
	absentCfg.ProfileName = "Never Created"
	absent, err := vsphere.Connect(e.ctx, absentCfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = absent.Close(context.Background()) })
	if err := absent.RemoveCDPPolicy(e.ctx, vm.MoRef); err != nil {
		t.Fatalf("no such profile: %v", err)
	}
	check("remove of an absent profile", vm.MoRef, all)

	if err := e.c.RemoveCDPPolicy(e.ctx, vm.MoRef); err != nil {
		t.Fatal(err)
	}
	check("removed", vm.MoRef, none)
	if err := e.c.RemoveCDPPolicy(e.ctx, vm.MoRef); err != nil {
		t.Fatalf("repeat: %v", err)
	}
	check("removed twice", vm.MoRef, none)

	// Attaching works again afterwards.
	if err := e.c.ApplyPolicy(e.ctx, vm.MoRef, st.ProfileID); err != nil {
		t.Fatalf("apply after remove: %v", err)
	}
	check("applied again", vm.MoRef, all)

	// A disk with another profile keeps it, a disk with none stays bare.
	vm2 := e.inv.VMByName(vcsim.ProtectedVMName(5))
	if len(vm2.Disks) < 3 {
		t.Fatalf("want a VM with three disks: %+v", vm2.Disks)
	}
	k0, k1 := vm2.Disks[0].Key, vm2.Disks[1].Key
	if err := e.c.ApplyPolicy(e.ctx, vm2.MoRef, st.ProfileID, k0); err != nil {
		t.Fatal(err)
	}
	if err := e.c.ApplyPolicy(e.ctx, vm2.MoRef, goldID, k1); err != nil {
		t.Fatal(err)
	}
	mixed := map[int32]string{k0: st.ProfileID, k1: goldID}
	for _, d := range vm2.Disks[2:] {
		mixed[d.Key] = ""
	}
	check("mixed", vm2.MoRef, mixed)
	if err := e.c.RemoveCDPPolicy(e.ctx, vm2.MoRef); err != nil {
		t.Fatal(err)
	}
	mixed[k0] = ""
	check("mixed, removed", vm2.MoRef, mixed)
	// The first VM was not touched by the second's removal.
	check("other VM", vm.MoRef, all)

	if err := e.c.RemoveCDPPolicy(e.ctx, "vm-99999"); err != nil {
		t.Fatalf("missing VM: %v", err)
	}
	if err := e.c.RemoveCDPPolicy(e.ctx, ""); !errors.Is(err, vsphere.ErrInvalid) {
		t.Fatalf("empty VM: %v, want ErrInvalid", err)
	}
}

func itoa(k int32) string { return strconv.Itoa(int(k)) }

func vcsimClient(t *testing.T, e *env) *vim25.Client {
	t.Helper()
	c, err := e.srv.Client(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Logout(context.Background()) })
	return c.Client
}

// addDisk adds a disk to a VM with plain govmomi, as an administrator would.
func addDisk(t *testing.T, e *env, vm string, key int32, unit int32, mb int64) {
	t.Helper()
	var c = vcsimClient(t, e)
	o := object.NewVirtualMachine(c, types.ManagedObjectReference{Type: "VirtualMachine", Value: vm})
	cur, err := e.c.VM(e.ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	ds := cur.Disks[0].FileName[1:]
	ds = ds[:strings.IndexByte(ds, ']')]
	disk := &types.VirtualDisk{
		CapacityInBytes: mb << 20,
		CapacityInKB:    mb << 10,
		VirtualDevice: types.VirtualDevice{
			Key: key, ControllerKey: 1000, UnitNumber: &unit,
			Backing: &types.VirtualDiskFlatVer2BackingInfo{
				DiskMode:                     "persistent",
				ThinProvisioned:              types.NewBool(true),
				VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: "[" + ds + "] " + cur.Name + "/added_" + itoa(key) + ".vmdk"},
			},
		},
	}
	task, err := o.Reconfigure(e.ctx, types.VirtualMachineConfigSpec{DeviceChange: []types.BaseVirtualDeviceConfigSpec{
		&types.VirtualDeviceConfigSpec{Operation: "add", FileOperation: "create", Device: disk},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Wait(e.ctx); err != nil {
		t.Fatal(err)
	}
}

func TestEnsureReplicaDisk(t *testing.T) {
	e := newEnv(t, vcsim.Options{ProtectedVMs: 1, ProxyVMs: -1})
	spec := e.replicaSpec(t, vcsim.ProtectedVMName(0))
	r, err := e.c.EnsureReplica(e.ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	addDisk(t, e, spec.SourceVM, 2005, 5, 300)
	d, err := e.c.EnsureReplicaDisk(e.ctx, r.MoRef, spec.SourceVM, 2005)
	if err != nil {
		t.Fatal(err)
	}
	if d.CapacityBytes != 300<<20 || d.Datastore != spec.Datastore {
		t.Fatalf("replica disk %+v", d)
	}
	again, err := e.c.EnsureReplicaDisk(e.ctx, r.MoRef, spec.SourceVM, 2005)
	if err != nil || again.Key != d.Key {
		t.Fatalf("repeat: %+v %v", again, err)
	}
	got, _ := e.c.VM(e.ctx, r.MoRef)
	if len(got.Disks) != 2 {
		t.Fatalf("replica has %d disks, want 2", len(got.Disks))
	}
	if _, err := e.c.EnsureReplicaDisk(e.ctx, r.MoRef, spec.SourceVM, 2999); !errors.Is(err, vsphere.ErrNotFound) {
		t.Fatalf("unknown source disk: %v", err)
	}
	if _, err := e.c.EnsureReplicaDisk(e.ctx, spec.SourceVM, spec.SourceVM, 2000); !errors.Is(err, vsphere.ErrConflict) {
		t.Fatalf("a source is not a replica: %v", err)
	}
	// EnsureReplica also completes a replica that lacks a disk.
	addDisk(t, e, spec.SourceVM, 2006, 6, 100)
	full, err := e.c.EnsureReplica(e.ctx, spec)
	if err != nil || len(full.Disks) != 3 || full.Disk(2006) == nil {
		t.Fatalf("completed replica %+v %v", full, err)
	}
}

func TestDeleteReplicaAndPower(t *testing.T) {
	e := newEnv(t, vcsim.Options{ProtectedVMs: 1, ProxyVMs: -1})
	spec := e.replicaSpec(t, vcsim.ProtectedVMName(0))
	r, err := e.c.EnsureReplica(e.ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.c.PowerOn(e.ctx, r.MoRef); err != nil {
		t.Fatal(err)
	}
	if err := e.c.PowerOn(e.ctx, r.MoRef); err != nil {
		t.Fatalf("power on twice: %v", err)
	}
	got, _ := e.c.VM(e.ctx, r.MoRef)
	if got.PowerState != "poweredOn" {
		t.Fatalf("power state %s", got.PowerState)
	}
	if err := e.c.DeleteReplica(e.ctx, spec.SourceVM); !errors.Is(err, vsphere.ErrConflict) {
		t.Fatalf("deleting a source VM must be refused: %v", err)
	}
	if err := e.c.DeleteReplica(e.ctx, r.MoRef); err != nil {
		t.Fatal(err)
	}
	if err := e.c.DeleteReplica(e.ctx, r.MoRef); err != nil {
		t.Fatalf("delete twice: %v", err)
	}
	if n := e.countReplicas(t); n != 0 {
		t.Fatalf("%d replicas left", n)
	}
	if _, err := e.c.VM(e.ctx, spec.SourceVM); err != nil {
		t.Fatalf("source gone: %v", err)
	}
}

func TestRelogin(t *testing.T) {
	e := newEnv(t, vcsim.Options{ProtectedVMs: 1, ProxyVMs: -1})
	vm := e.inv.VMByName(vcsim.ProtectedVMName(0))
	if _, err := e.c.VM(e.ctx, vm.MoRef); err != nil {
		t.Fatal(err)
	}
	n, err := e.srv.DropSessions(e.ctx)
	if err != nil || n == 0 {
		t.Fatalf("drop sessions: %d %v", n, err)
	}
	// The pooled property collector went with the session.
	if _, err := e.c.VM(e.ctx, vm.MoRef); err != nil {
		t.Fatalf("read after the session was dropped: %v", err)
	}
	if _, err := e.c.Inventory(e.ctx); err != nil {
		t.Fatalf("inventory after the session was dropped: %v", err)
	}
	if e.c.Relogins() != 1 {
		t.Fatalf("relogins = %d", e.c.Relogins())
	}
}

func TestTransientFaultRetried(t *testing.T) {
	e := newEnv(t, vcsim.Options{ProtectedVMs: 1, ProxyVMs: -1})
	vm := e.inv.VMByName(vcsim.ProtectedVMName(0))
	e.srv.FailMethod("PowerOnVM_Task", 2, &types.HostCommunication{})
	if err := e.c.PowerOn(e.ctx, vm.MoRef); err != nil {
		t.Fatalf("two transient faults then success: %v", err)
	}
	e.srv.FailMethod("PowerOffVM_Task", 0, &types.HostCommunication{})
	if err := e.c.PowerOff(e.ctx, vm.MoRef); err == nil {
		t.Fatal("a fault that persists must surface after bounded retries")
	}
	e.srv.ClearFaults()
	e.srv.FailMethod("PowerOffVM_Task", 1, &types.InvalidState{})
	if err := e.c.PowerOff(e.ctx, vm.MoRef); err == nil {
		t.Fatal("a non-transient fault must not be retried away")
	}
}

func TestRemapNetworks(t *testing.T) {
	e := newEnv(t, vcsim.Options{ProtectedVMs: 1, ProxyVMs: -1})
	spec := e.replicaSpec(t, vcsim.ProtectedVMName(0))
	r, err := e.c.EnsureReplica(e.ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.c.RemapNetworks(e.ctx, r.MoRef, map[string]string{vcsim.NetworkName: vcsim.TargetNetworkName}); err != nil {
		t.Fatal(err)
	}
	got, _ := e.c.VM(e.ctx, r.MoRef)
	if len(got.Networks) != 1 || got.Networks[0] != vcsim.TargetNetworkName {
		t.Fatalf("networks after remap %v", got.Networks)
	}
	// Again: nothing left to change.
	if err := e.c.RemapNetworks(e.ctx, r.MoRef, map[string]string{vcsim.NetworkName: vcsim.TargetNetworkName}); err != nil {
		t.Fatal(err)
	}
	src, _ := e.c.VM(e.ctx, spec.SourceVM)
	if src.Networks[0] != vcsim.NetworkName {
		t.Fatalf("source networks changed: %v", src.Networks)
	}
	if err := e.c.RemapNetworks(e.ctx, r.MoRef, map[string]string{vcsim.TargetNetworkName: "no such network"}); !errors.Is(err, vsphere.ErrNotFound) {
		t.Fatalf("unknown network: %v", err)
	}
}

func TestKeepAliveAndSessionTimeout(t *testing.T) {
	e := newEnv(t, vcsim.Options{ProtectedVMs: 1, ProxyVMs: -1, SessionTimeout: 300 * time.Millisecond})
	vm := e.inv.VMByName(vcsim.ProtectedVMName(0))
	kept := connectCfg(e.srv)
	kept.KeepAlive = 50 * time.Millisecond
	c, err := vsphere.Connect(e.ctx, kept)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(e.ctx)
	time.Sleep(time.Second) // idle for longer than the session timeout
	if _, err := c.VM(e.ctx, vm.MoRef); err != nil {
		t.Fatal(err)
	}
	if c.Relogins() != 0 {
		t.Fatalf("keep-alive did not keep the session: %d relogins", c.Relogins())
	}
	// e.c has no keep-alive: its session expired and it logs in again.
	if _, err := e.c.VM(e.ctx, vm.MoRef); err != nil {
		t.Fatalf("after the session expired: %v", err)
	}
	if e.c.Relogins() != 1 {
		t.Fatalf("relogins without keep-alive = %d, want 1", e.c.Relogins())
	}
}

func TestEnsureReplicaConflict(t *testing.T) {
	e := newEnv(t, vcsim.Options{ProtectedVMs: 1, ProxyVMs: -1})
	spec := e.replicaSpec(t, vcsim.ProtectedVMName(0))
	src := e.inv.VMByName(vcsim.ProtectedVMName(0))
	// Someone else's VM holds the replica's instance UUID but not the marker.
	cfg := vcsim.VMSpec("impostor", vcsim.TargetDatastoreName(0), []int64{64})
	cfg.InstanceUuid = vsphere.ReplicaInstanceUUID(src.InstanceUUID, spec.PolicyID)
	vc := vcsimClient(t, e)
	folder := object.NewFolder(vc, types.ManagedObjectReference{Type: "Folder", Value: spec.Folder})
	pool := object.NewResourcePool(vc, types.ManagedObjectReference{Type: "ResourcePool", Value: spec.Pool})
	host := object.NewHostSystem(vc, types.ManagedObjectReference{Type: "HostSystem", Value: spec.Host})
	task, err := folder.CreateVM(e.ctx, cfg, pool, host)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Wait(e.ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.EnsureReplica(e.ctx, spec); !errors.Is(err, vsphere.ErrConflict) {
		t.Fatalf("got %v, want ErrConflict", err)
	}
	if n := e.countReplicas(t); n != 0 {
		t.Fatalf("%d replicas", n)
	}
}

func TestReloginOncePerLostSession(t *testing.T) {
	e := newEnv(t, vcsim.Options{ProtectedVMs: 1, ProxyVMs: -1})
	vm := e.inv.VMByName(vcsim.ProtectedVMName(0))
	if _, err := e.srv.DropSessions(e.ctx); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := e.c.VM(e.ctx, vm.MoRef); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := e.c.Relogins(); n != 1 {
		t.Fatalf("%d re-logins for one lost session", n)
	}
}
