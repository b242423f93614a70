package controllers

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/raftstore"
	"github.com/continuum-cdp/continuum/vcsim"
	"github.com/continuum-cdp/continuum/vsphere"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"
)

// memStore is a Store over a plain model.State, for tests that do not need
// raft. It implements the commands the controllers and the tests use.
type memStore struct {
	mu       sync.RWMutex
	s        *model.State
	applies  int
	noQuorum bool
}

func newMemStore() *memStore { return &memStore{s: model.NewState()} }

func (m *memStore) Read(fn func(s *model.State)) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	fn(m.s)
}

func (m *memStore) ReadConsistent(ctx context.Context, fn func(s *model.State)) error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.noQuorum {
		return fmt.Errorf("confirm leadership: %w", model.ErrNoLeader)
	}
	fn(m.s)
	return nil
}

func (m *memStore) Apply(ctx context.Context, cmd raftstore.Command) (any, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.noQuorum {
		return nil, fmt.Errorf("apply: %w", model.ErrNoLeader)
	}
	m.applies++
	s := m.s
	switch c := cmd.(type) {
	case raftstore.PutVCenter:
		v := c.VCenter
		s.VCenters[v.ID] = &v
	case raftstore.PutPolicy:
		p := c.Policy
		if old, ok := s.Policies[p.ID]; ok {
			p.Generation = old.Generation + 1
		} else {
			p.Generation = 1
		}
		s.Policies[p.ID] = &p
	case raftstore.SetPolicyEnabled:
		old, ok := s.Policies[c.ID]
		if !ok {
			return nil, model.NotFound("id", "policy", c.ID)
		}
		p := *old
		p.Enabled = c.Enabled
		s.Policies[p.ID] = &p
	case raftstore.PutProxy:
		p := c.Proxy
		s.Proxies[p.ID] = &p
	case raftstore.PutTask:
		if _, ok := s.Policies[c.Task.PolicyID]; !ok {
			return nil, model.NotFound("policy_id", "policy", c.Task.PolicyID)
		}
		t := c.Task
		s.Tasks[t.ID] = &t
	case raftstore.PutTasks:
		for _, t := range c.Tasks {
			if _, ok := s.Policies[t.PolicyID]; !ok {
				return nil, model.NotFound("policy_id", "policy", t.PolicyID)
			}
		}
		for _, t := range c.Tasks {
			s.Tasks[t.ID] = &t
		}
	case raftstore.PutReplica:
		r := c.Replica
		s.Replicas[r.ID] = &r
	case raftstore.PutRestorePoint:
		r := c.RestorePoint
		s.RestorePoints[r.ID] = &r
	case raftstore.DeleteRestorePoint:
		if _, ok := s.RestorePoints[c.ID]; !ok {
			return nil, model.NotFound("id", "restore point", c.ID)
		}
		delete(s.RestorePoints, c.ID)
	case raftstore.PutHost:
		h := c.Host
		s.Hosts[h.ID] = &h
	case raftstore.PutTrafficRule:
		r := c.TrafficRule
		s.TrafficRules[r.ID] = &r
	default:
		return raftstore.ApplyTo(s, cmd)
	}
	return nil, nil
}

func (m *memStore) setQuorum(ok bool) {
	m.mu.Lock()
	m.noQuorum = !ok
	m.mu.Unlock()
}

// fakeComponents records what is pushed to the data path.
type fakeComponents struct {
	mu       sync.Mutex
	pushes   map[string][]DataPath
	longTerm []model.VMTask
	fail     error
	// purged lists "host vm" of each journal purge; purgeErr fails them
	purged   []string
	purgeErr error
	clock    Clock
}

func newFakeComponents() *fakeComponents {
	return &fakeComponents{pushes: map[string][]DataPath{}}
}

func (f *fakeComponents) Configure(ctx context.Context, dp DataPath) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	f.pushes[dp.Task.ID] = append(f.pushes[dp.Task.ID], dp)
	return nil
}

func (f *fakeComponents) CreateLongTerm(ctx context.Context, t model.VMTask) (time.Time, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return time.Time{}, f.fail
	}
	f.longTerm = append(f.longTerm, t)
	if f.clock != nil {
		return f.clock.Now(), nil
	}
	return time.Now(), nil
}

func (f *fakeComponents) PurgeJournal(ctx context.Context, targetHost, vm string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.purgeErr != nil {
		return f.purgeErr
	}
	f.purged = append(f.purged, targetHost+" "+vm)
	return nil
}

func (f *fakeComponents) pushCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, p := range f.pushes {
		n += len(p)
	}
	return n
}

func (f *fakeComponents) last(taskID string) (DataPath, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.pushes[taskID]
	if len(p) == 0 {
		return DataPath{}, false
	}
	return p[len(p)-1], true
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

const vcID = "vc-1"

// lab is an in-process lab vCenter with the filter installed on both
// clusters, connected through the vsphere adapter.
type lab struct {
	t   testing.TB
	ctx context.Context
	srv *vcsim.Server
	c   *vsphere.Client
	inv *vsphere.Inventory
	// down, when set, makes the Inventories lookup fail as if vCenter did
	// not answer.
	mu   sync.Mutex
	down error
	// feed is the change feed the reconciler's Watch reads: the
	// simulator's own WaitForUpdates races with concurrent creates inside
	// govmomi's simulator under -race, and the vsphere package tests Watch
	// against it already; here the tests say what vCenter reports.
	feed chan vsphere.Change
}

// labInventory is the lab's client with a test-driven change feed.
type labInventory struct {
	*vsphere.Client
	feed chan vsphere.Change
}

func (li labInventory) Watch(ctx context.Context, fn func(vsphere.Change)) error {
	fn(vsphere.Change{Kind: vsphere.Synced})
	for {
		select {
		case <-ctx.Done():
			return nil
		case c := <-li.feed:
			fn(c)
		}
	}
}

func newLab(t testing.TB, vms int, installTarget bool) *lab {
	t.Helper()
	return startLab(t, vcsim.Options{ProtectedVMs: vms, ProxyVMs: -1, DiskSizesMB: []int64{4, 8}}, installTarget, 80*time.Second)
}

func startLab(t testing.TB, opts vcsim.Options, installTarget bool, timeout time.Duration) *lab {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	srv, err := vcsim.Start(ctx, opts, nil)
	if err != nil {
		t.Fatalf("start lab vCenter: %v", err)
	}
	t.Cleanup(srv.Close)
	c, err := vsphere.Connect(ctx, vsphere.Config{URL: srv.SDKURL(), Username: vcsim.Username, Password: vcsim.Password, Insecure: true, KeepAlive: -1, RetryBackoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	inv, err := c.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	l := &lab{t: t, ctx: ctx, srv: srv, c: c, inv: inv, feed: make(chan vsphere.Change, 16)}
	if _, err := c.InstallFilter(ctx, l.cluster(vcsim.SourceClusterName)); err != nil {
		t.Fatal(err)
	}
	if installTarget {
		if _, err := c.InstallFilter(ctx, l.cluster(vcsim.TargetClusterName)); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

func (l *lab) cluster(name string) string {
	cl := l.inv.ClusterByName(name)
	if cl == nil {
		l.t.Fatalf("no cluster %s", name)
	}
	return cl.MoRef
}

func (l *lab) inventories(ctx context.Context, id string) (Inventory, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.down != nil {
		return nil, l.down
	}
	if id != vcID {
		return nil, fmt.Errorf("vCenter %s is not connected", id)
	}
	return labInventory{Client: l.c, feed: l.feed}, nil
}

func (l *lab) setDown(err error) {
	l.mu.Lock()
	l.down = err
	l.mu.Unlock()
}

func (l *lab) vm(name string) *vsphere.VM {
	l.t.Helper()
	v := l.inv.VMByName(name)
	if v == nil {
		l.t.Fatalf("no VM %s", name)
	}
	return v
}

// replicas counts the VMs carrying the replica marker, by source VM.
func (l *lab) replicas() map[string]int {
	l.t.Helper()
	inv, err := l.c.Inventory(l.ctx)
	if err != nil {
		l.t.Fatal(err)
	}
	n := map[string]int{}
	for _, v := range inv.VMs {
		if v.Replica != nil {
			n[v.Replica.SourceInstanceUUID]++
		}
	}
	return n
}

func (l *lab) addDisk(vm string, key, unit int32, mb int64) {
	l.t.Helper()
	cur, err := l.c.VM(l.ctx, vm)
	if err != nil {
		l.t.Fatal(err)
	}
	gc, err := l.srv.Client(l.ctx)
	if err != nil {
		l.t.Fatal(err)
	}
	defer gc.Logout(l.ctx)
	ds := cur.Disks[0].FileName[1:strings.IndexByte(cur.Disks[0].FileName, ']')]
	disk := &types.VirtualDisk{
		CapacityInBytes: mb << 20, CapacityInKB: mb << 10,
		VirtualDevice: types.VirtualDevice{
			Key: key, ControllerKey: 1000, UnitNumber: &unit,
			Backing: &types.VirtualDiskFlatVer2BackingInfo{
				DiskMode: "persistent", ThinProvisioned: types.NewBool(true),
				VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: fmt.Sprintf("[%s] %s/added_%d.vmdk", ds, cur.Name, key)},
			},
		},
	}
	o := object.NewVirtualMachine(gc.Client, types.ManagedObjectReference{Type: "VirtualMachine", Value: vm})
	task, err := o.Reconfigure(l.ctx, types.VirtualMachineConfigSpec{DeviceChange: []types.BaseVirtualDeviceConfigSpec{
		&types.VirtualDeviceConfigSpec{Operation: "add", FileOperation: "create", Device: disk},
	}})
	if err == nil {
		err = task.Wait(l.ctx)
	}
	if err != nil {
		l.t.Fatalf("add disk to %s: %v", vm, err)
	}
}

func (l *lab) relocate(vm, host string) {
	l.t.Helper()
	gc, err := l.srv.Client(l.ctx)
	if err != nil {
		l.t.Fatal(err)
	}
	defer gc.Logout(l.ctx)
	o := object.NewVirtualMachine(gc.Client, types.ManagedObjectReference{Type: "VirtualMachine", Value: vm})
	hr := types.ManagedObjectReference{Type: "HostSystem", Value: host}
	task, err := o.Relocate(l.ctx, types.VirtualMachineRelocateSpec{Host: &hr}, types.VirtualMachineMovePriorityDefaultPriority)
	if err == nil {
		err = task.Wait(l.ctx)
	}
	if err != nil {
		l.t.Fatalf("relocate %s to %s: %v", vm, host, err)
	}
}

func (l *lab) destroy(vm string) {
	l.t.Helper()
	gc, err := l.srv.Client(l.ctx)
	if err != nil {
		l.t.Fatal(err)
	}
	defer gc.Logout(l.ctx)
	o := object.NewVirtualMachine(gc.Client, types.ManagedObjectReference{Type: "VirtualMachine", Value: vm})
	if task, err := o.PowerOff(l.ctx); err == nil {
		_ = task.Wait(l.ctx)
	}
	task, err := o.Destroy(l.ctx)
	if err == nil {
		err = task.Wait(l.ctx)
	}
	if err != nil {
		l.t.Fatalf("destroy %s: %v", vm, err)
	}
}

// proxy returns a live proxy record.
func proxy(id string, role model.ProxyRole, kind model.ProxyKind, cluster string, max int) model.Proxy {
	return model.Proxy{ID: id, Name: id, Role: role, Kind: kind, ClusterID: cluster, Address: "127.0.0.1:1", MaxTasks: max, LastHeartbeat: time.Now()}
}

// setup puts a vCenter, proxies and a policy over the lab's first n VMs
// into st and returns the policy.
func (l *lab) setup(st Store, n int, proxies ...model.Proxy) model.Policy {
	l.t.Helper()
	ctx := l.ctx
	mustApply(l.t, st, raftstore.PutVCenter{VCenter: model.VCenter{ID: vcID, Name: "lab", URL: l.srv.SDKURL(), Username: vcsim.Username}, Create: true})
	if len(proxies) == 0 {
		proxies = []model.Proxy{
			proxy("src-phys", model.RoleSource, model.KindPhysical, "", 0),
			proxy("dst-phys", model.RoleTarget, model.KindPhysical, "", 0),
		}
	}
	for _, p := range proxies {
		mustApply(l.t, st, raftstore.PutProxy{Proxy: p, Create: true})
	}
	p := model.Policy{
		ID: "pol-1", Name: "demo", Enabled: true, VCenterID: vcID,
		Target: model.Target{VCenterID: vcID, Cluster: vcsim.TargetClusterName, Datastore: vcsim.TargetDatastoreName(0)},
		RPO:    model.Duration(15 * time.Second), ProxySelection: model.SelectAuto,
		RPOWarning: model.Duration(30 * time.Second), RPOError: model.Duration(60 * time.Second),
	}
	for i := 0; i < n; i++ {
		p.VMs = append(p.VMs, model.VMRef{MoRef: l.vm(vcsim.ProtectedVMName(i)).MoRef})
	}
	p.Defaults()
	mustApply(l.t, st, raftstore.PutPolicy{Policy: p, Create: true})
	_ = ctx
	return policyOf(l.t, st, p.ID)
}

func mustApply(t testing.TB, st Store, cmd raftstore.Command) {
	t.Helper()
	if _, err := st.Apply(context.Background(), cmd); err != nil {
		t.Fatalf("apply %T: %v", cmd, err)
	}
}

func policyOf(t testing.TB, st Store, id string) model.Policy {
	t.Helper()
	var p model.Policy
	st.Read(func(s *model.State) { p = *s.Policies[id] })
	return p
}

func tasksOf(st Store, policyID string) map[string]model.VMTask {
	out := map[string]model.VMTask{}
	st.Read(func(s *model.State) {
		for id, t := range s.Tasks {
			if t.PolicyID == policyID {
				out[id] = *t
			}
		}
	})
	return out
}

func newReconciler(t testing.TB, st Store, l *lab, comps Components) *PolicyReconciler {
	t.Helper()
	r, err := NewPolicyReconciler(Config{Store: st, Inventories: l.inventories, Components: comps, HeartbeatTimeout: 10 * time.Minute, Settle: -1, BackoffBase: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond, PollEvery: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// freeAddr reserves a loopback port for a raft node.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
