package controllers

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/raftstore"
	"github.com/continuum-cdp/continuum/vcsim"
	"github.com/continuum-cdp/continuum/vsphere"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/vmware/govmomi/vim25/types"
)

// checkConfigured asserts that every task of the policy has a replica with
// equal disk capacities, the CDP profile on its source disks, proxies and
// a pushed configuration.
func checkConfigured(t *testing.T, l *lab, st Store, comps *fakeComponents, p model.Policy) map[string]model.VMTask {
	t.Helper()
	profile, err := l.c.EnsureProfile(l.ctx)
	if err != nil {
		t.Fatal(err)
	}
	tasks := tasksOf(st, p.ID)
	if len(tasks) != len(p.VMs) {
		t.Fatalf("%d tasks for %d VMs", len(tasks), len(p.VMs))
	}
	for id, tk := range tasks {
		if tk.Status != model.StatusInitialSync || tk.Reason != "" {
			t.Fatalf("task %s: status %s %q", id, tk.Status, tk.Reason)
		}
		if tk.SourceProxy == "" || tk.TargetProxy == "" || tk.Generation != p.Generation {
			t.Fatalf("task %s: proxies %q %q generation %d", id, tk.SourceProxy, tk.TargetProxy, tk.Generation)
		}
		src, err := l.c.VM(l.ctx, tk.VMMoRef)
		if err != nil {
			t.Fatal(err)
		}
		var rep *model.Replica
		st.Read(func(s *model.State) {
			if r, ok := s.Replicas[tk.ReplicaID]; ok {
				c := *r
				rep = &c
			}
		})
		if rep == nil {
			t.Fatalf("task %s: replica %q not recorded", id, tk.ReplicaID)
		}
		rvm, err := l.c.VM(l.ctx, rep.MoRef)
		if err != nil {
			t.Fatalf("replica %s: %v", rep.MoRef, err)
		}
		if rvm.Replica == nil || rvm.Replica.PolicyID != p.ID || rvm.Replica.SourceInstanceUUID != src.InstanceUUID {
			t.Fatalf("replica marker %+v", rvm.Replica)
		}
		if len(rvm.Disks) != len(src.Disks) || len(tk.Disks) != len(src.Disks) {
			t.Fatalf("task %s: replica %d disks, task %d, source %d", id, len(rvm.Disks), len(tk.Disks), len(src.Disks))
		}
		for _, d := range src.Disks {
			if rd := rvm.Disk(d.Key); rd == nil || rd.CapacityBytes != d.CapacityBytes {
				t.Fatalf("replica disk %d: %+v, source %d bytes", d.Key, rd, d.CapacityBytes)
			}
			if d.ProfileID != profile {
				t.Fatalf("source disk %d of %s has profile %q, want %q", d.Key, src.Name, d.ProfileID, profile)
			}
		}
		dp, ok := comps.last(id)
		if !ok {
			t.Fatalf("task %s: no configuration pushed", id)
		}
		if dp.SourceProxy.ID != tk.SourceProxy || dp.TargetProxy.ID != tk.TargetProxy || dp.Policy.RPO != p.RPO || dp.SourceHost != src.Host {
			t.Fatalf("pushed %+v for task %+v", dp, tk)
		}
		// The target filter is the one on the replica's host.
		if rvm.Host == "" || tk.TargetHost != p.Target.VCenterID+"/"+rvm.Host || dp.TargetHost != rvm.Host {
			t.Fatalf("task %s: target host %q (pushed %q), replica on %q", id, tk.TargetHost, dp.TargetHost, rvm.Host)
		}
	}
	return tasks
}

func TestReconcileConfiguresPolicyOnce(t *testing.T) {
	l := newLab(t, 3, true)
	st := newMemStore()
	comps := newFakeComponents()
	p := l.setup(st, 3)
	r := newReconciler(t, st, l, comps)
	res, err := r.Reconcile(l.ctx, p.ID)
	if err != nil {
		t.Fatal(err)
	}
	if res.RequeueAfter <= 0 {
		t.Fatalf("a configured policy is polled again: %+v", res)
	}
	checkConfigured(t, l, st, comps, p)
	if got := counter(t, r.metrics.Reconciles.WithLabelValues("policy", ResultSuccess)); got != 1 {
		t.Fatalf("success counted %v times", got)
	}

	// Again: found as desired, nothing created, nothing pushed, nothing written.
	pushes, applies := comps.pushCount(), st.applies
	if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	if comps.pushCount() != pushes || st.applies != applies {
		t.Fatalf("second reconcile pushed %d and wrote %d", comps.pushCount()-pushes, st.applies-applies)
	}

	// A new leader (a fresh reconciler, even with the tasks' replica IDs
	// lost) finds the replicas by their marker.
	st.mu.Lock()
	for _, tk := range st.s.Tasks {
		c := *tk
		c.ReplicaID = ""
		st.s.Tasks[c.ID] = &c
	}
	st.mu.Unlock()
	r2 := newReconciler(t, st, l, comps)
	if _, err := r2.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	checkConfigured(t, l, st, comps, p)
	for src, n := range l.replicas() {
		if n != 1 {
			t.Fatalf("source %s has %d replicas", src, n)
		}
	}
	if len(l.replicas()) != 3 {
		t.Fatalf("replicas of %d VMs, want 3", len(l.replicas()))
	}
}

func TestReconcileVCenterFaults(t *testing.T) {
	l := newLab(t, 2, true)
	st := newMemStore()
	comps := newFakeComponents()
	p := l.setup(st, 2)
	r := newReconciler(t, st, l, comps)
	// The simulator's fault injector draws from an unsynchronised random
	// source: while a rule is active, calls must not run concurrently.
	r.cfg.Workers = 1

	l.setDown(vsphere.ErrUnreachable)
	if _, err := r.Reconcile(l.ctx, p.ID); err == nil {
		t.Fatal("reconcile with vCenter down succeeded")
	}
	for _, tk := range tasksOf(st, p.ID) {
		if tk.Status != model.StatusError || !strings.Contains(tk.Reason, "vCenter unreachable") {
			t.Fatalf("task with vCenter down: %s %q", tk.Status, tk.Reason)
		}
	}
	if st, _ := PolicyStatus(&p, ptrs(tasksOf(st, p.ID))); st != model.StatusError {
		t.Fatalf("policy status %s", st)
	}
	l.setDown(nil)

	// vCenter fails the create, then creates the VM but reports failure.
	l.srv.FailMethod("CreateVM_Task", 0, &types.HostCommunication{})
	if _, err := r.Reconcile(l.ctx, p.ID); err == nil {
		t.Fatal("reconcile with failing creates succeeded")
	}
	for _, tk := range tasksOf(st, p.ID) {
		if tk.Status != model.StatusError || !strings.Contains(tk.Reason, "create replica of") {
			t.Fatalf("task with failing create: %s %q", tk.Status, tk.Reason)
		}
	}
	l.srv.ClearFaults()
	l.srv.FailCreateVMAfterCreate(2)
	_, _ = r.Reconcile(l.ctx, p.ID)
	for i := 0; i < 3; i++ {
		if _, err := r.Reconcile(l.ctx, p.ID); err == nil {
			break
		}
	}
	checkConfigured(t, l, st, comps, p)
	if got := l.replicas(); len(got) != 2 {
		t.Fatalf("replicas %v", got)
	}
	for src, n := range l.replicas() {
		if n != 1 {
			t.Fatalf("source %s has %d replicas after faults", src, n)
		}
	}
	if counter(t, r.metrics.Reconciles.WithLabelValues("policy", ResultError)) < 2 {
		t.Fatal("errors not counted")
	}
}

func ptrs(m map[string]model.VMTask) []*model.VMTask {
	var out []*model.VMTask
	for _, t := range m {
		c := t
		out = append(out, &c)
	}
	return out
}

func TestReconcileBadReferences(t *testing.T) {
	l := newLab(t, 2, false) // no filter on the target cluster
	st := newMemStore()
	comps := newFakeComponents()
	p := l.setup(st, 1)
	r := newReconciler(t, st, l, comps)
	reason := func() string {
		for _, tk := range tasksOf(st, p.ID) {
			if tk.Status != model.StatusError {
				t.Fatalf("task %s: %s", tk.ID, tk.Status)
			}
			return tk.Reason
		}
		t.Fatal("no task")
		return ""
	}
	if _, err := r.Reconcile(l.ctx, p.ID); err == nil || !strings.Contains(reason(), "not installed on target cluster") {
		t.Fatalf("no filter on target: %v, %q", err, reason())
	}
	if _, err := l.c.InstallFilter(l.ctx, l.cluster(vcsim.TargetClusterName)); err != nil {
		t.Fatal(err)
	}

	p.Target.Cluster = "no-such-cluster"
	mustApply(t, st, raftstore.PutPolicy{Policy: p})
	if _, err := r.Reconcile(l.ctx, p.ID); err == nil || !strings.Contains(reason(), `target cluster "no-such-cluster" not found`) {
		t.Fatalf("missing cluster: %v, %q", err, reason())
	}
	p.Target.Cluster = vcsim.TargetClusterName
	p.VMs = []model.VMRef{{Name: "no-such-vm"}}
	mustApply(t, st, raftstore.PutPolicy{Policy: p})
	p = policyOf(t, st, p.ID)
	if _, err := r.Reconcile(l.ctx, p.ID); err == nil || !strings.Contains(reason(), `VM "no-such-vm" not found`) {
		t.Fatalf("missing VM: %v, %q", err, reason())
	}
	if n := len(tasksOf(st, p.ID)); n != 1 {
		t.Fatalf("the task of the VM removed from the policy stays: %d tasks", n)
	}
	if len(l.replicas()) != 0 || comps.pushCount() != 0 {
		t.Fatal("bad references created replicas or pushed configuration")
	}

	// No proxy alive: configuration waits, with a reason.
	p.VMs = []model.VMRef{{Name: vcsim.ProtectedVMName(0)}}
	mustApply(t, st, raftstore.PutPolicy{Policy: p})
	for _, id := range []string{"src-phys", "dst-phys"} {
		px := proxy(id, model.RoleSource, model.KindPhysical, "", 0)
		if id == "dst-phys" {
			px.Role = model.RoleTarget
		}
		px.LastHeartbeat = time.Now().Add(-time.Hour)
		mustApply(t, st, raftstore.PutProxy{Proxy: px})
	}
	if _, err := r.Reconcile(l.ctx, p.ID); !errors.Is(err, ErrNoProxy) || !strings.Contains(reason(), "no source proxy is alive") {
		t.Fatalf("no proxy: %v, %q", err, reason())
	}
}

func TestReconfigureWhileProtected(t *testing.T) {
	l := newLab(t, 3, true)
	st := newMemStore()
	comps := newFakeComponents()
	p := l.setup(st, 2)
	r := newReconciler(t, st, l, comps)
	if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	vm0 := l.vm(vcsim.ProtectedVMName(0))
	tid := TaskID(p.ID, vm0.MoRef)

	// A disk added to a source VM gets its replica disk and the profile.
	l.addDisk(vm0.MoRef, 2010, 10, 6)
	if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	tasks := checkConfigured(t, l, st, comps, p)
	if n := len(tasks[tid].Disks); n != len(vm0.Disks)+1 {
		t.Fatalf("task has %d disks after add", n)
	}

	// vMotion within the source cluster: the source host changes and the
	// configuration is pushed again.
	cur, _ := l.c.VM(l.ctx, vm0.MoRef)
	var other string
	for _, h := range l.inv.ClusterByName(vcsim.SourceClusterName).Hosts {
		if h != cur.Host {
			other = h
			break
		}
	}
	l.relocate(vm0.MoRef, other)
	if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	if got := tasksOf(st, p.ID)[tid].SourceHost; got != vcID+"/"+other {
		t.Fatalf("source host %s after vMotion to %s", got, other)
	}
	if dp, _ := comps.last(tid); dp.SourceHost != other {
		t.Fatalf("pushed source host %s", dp.SourceHost)
	}

	// A VM added to the policy gets a replica.
	p.VMs = append(p.VMs, model.VMRef{Name: vcsim.ProtectedVMName(2)})
	mustApply(t, st, raftstore.PutPolicy{Policy: p})
	p = policyOf(t, st, p.ID)
	if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	checkConfigured(t, l, st, comps, p)
	if len(l.replicas()) != 3 {
		t.Fatalf("replicas %v", l.replicas())
	}

	// A VM removed from vCenter makes its task fail with the reason.
	vm1 := l.vm(vcsim.ProtectedVMName(1))
	l.destroy(vm1.MoRef)
	if _, err := r.Reconcile(l.ctx, p.ID); err == nil {
		t.Fatal("a missing VM is an error")
	}
	if tk := tasksOf(st, p.ID)[TaskID(p.ID, vm1.MoRef)]; tk.Status != model.StatusError || !strings.Contains(tk.Reason, "not found") {
		t.Fatalf("removed VM: %s %q", tk.Status, tk.Reason)
	}
}

func TestRunFollowsChangeFeed(t *testing.T) {
	l := newLab(t, 1, true)
	st := newMemStore()
	comps := newFakeComponents()
	p := l.setup(st, 1)
	r := newReconciler(t, st, l, comps)
	r.cfg.Resync = time.Hour // only the feed and the poll may wake it
	ctx, cancel := context.WithCancel(l.ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	vm := l.vm(vcsim.ProtectedVMName(0))
	tid := TaskID(p.ID, vm.MoRef)
	waitFor(t, "initial configuration", func() bool { return tasksOf(st, p.ID)[tid].Status == model.StatusInitialSync })
	n := len(tasksOf(st, p.ID)[tid].Disks)
	l.addDisk(vm.MoRef, 2011, 11, 5)
	l.feed <- vsphere.Change{Kind: vsphere.DiskAdded, VM: vm.MoRef, Name: vm.Name, DiskKeys: []int32{2011}}
	waitFor(t, "the added disk configured", func() bool { return len(tasksOf(st, p.ID)[tid].Disks) == n+1 })

	// A dead proxy is replaced for every task that used it.
	mustApply(t, st, raftstore.PutProxy{Proxy: proxy("src-vm", model.RoleSource, model.KindVM, "x", 0)})
	old := proxy("src-phys", model.RoleSource, model.KindPhysical, "", 0)
	old.LastHeartbeat = time.Now().Add(-time.Hour)
	mustApply(t, st, raftstore.PutProxy{Proxy: old})
	waitFor(t, "the dead proxy replaced", func() bool { return tasksOf(st, p.ID)[tid].SourceProxy == "src-vm" })

	// The source host's filter goes silent, then reports again: the poll
	// notices both.
	src := tasksOf(st, p.ID)[tid].SourceHost
	host := model.Host{ID: src, VCenterID: vcID, MoRef: trimVC(src), Name: "src-host", LastHeartbeat: time.Now()}
	mustApply(t, st, raftstore.PutHost{Host: host})
	host.LastHeartbeat = time.Now().Add(-time.Hour)
	mustApply(t, st, raftstore.PutHost{Host: host})
	waitFor(t, "the silent filter noticed", func() bool {
		tk := tasksOf(st, p.ID)[tid]
		return tk.Status == model.StatusError && strings.Contains(tk.Reason, "src-host")
	})
	host.LastHeartbeat = time.Now()
	mustApply(t, st, raftstore.PutHost{Host: host})
	waitFor(t, "the filter back", func() bool { return tasksOf(st, p.ID)[tid].Status == model.StatusInitialSync })
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func counter(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// A policy naming its VMs by name shows why it waits even before vCenter
// resolved them: the reason goes on a task under the VM's name, which
// moves to the VM's MoRef once configuration proceeds.
func TestNamedVMsShowWhyThePolicyWaits(t *testing.T) {
	l := newLab(t, 1, true)
	st := newMemStore()
	comps := newFakeComponents()
	dead := []model.Proxy{
		proxy("src-phys", model.RoleSource, model.KindPhysical, "", 0),
		proxy("dst-phys", model.RoleTarget, model.KindPhysical, "", 0),
	}
	for i := range dead {
		dead[i].LastHeartbeat = time.Now().Add(-time.Hour)
	}
	p := l.setup(st, 0, dead...)
	name := vcsim.ProtectedVMName(0)
	p.VMs = []model.VMRef{{Name: name}}
	mustApply(t, st, raftstore.PutPolicy{Policy: p})
	r := newReconciler(t, st, l, comps)
	if _, err := r.Reconcile(l.ctx, p.ID); !errors.Is(err, ErrNoProxy) {
		t.Fatalf("dead proxies: %v", err)
	}
	tasks := tasksOf(st, p.ID)
	tk, ok := tasks[TaskID(p.ID, name)]
	if len(tasks) != 1 || !ok || tk.Status != model.StatusError || !strings.Contains(tk.Reason, "no source proxy is alive") {
		t.Fatalf("tasks %+v", tasks)
	}
	if _, err := r.Reconcile(l.ctx, p.ID); !errors.Is(err, ErrNoProxy) || len(tasksOf(st, p.ID)) != 1 {
		t.Fatalf("again: %v, %d tasks", err, len(tasksOf(st, p.ID)))
	}

	for _, px := range dead {
		px.LastHeartbeat = time.Now()
		mustApply(t, st, raftstore.PutProxy{Proxy: px})
	}
	if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	tasks = tasksOf(st, p.ID)
	moref := l.vm(name).MoRef
	if tk, ok := tasks[TaskID(p.ID, moref)]; len(tasks) != 1 || !ok || tk.Status != model.StatusInitialSync {
		t.Fatalf("after the proxies came back: %+v", tasks)
	}
}

// A filter that stops reporting fails its VMs, even though nothing new is
// pushed; once it reports again they go back to the data path.
func TestSilentFilterFailsItsVMs(t *testing.T) {
	l := newLab(t, 1, true)
	st := newMemStore()
	comps := newFakeComponents()
	p := l.setup(st, 1)
	r := newReconciler(t, st, l, comps)
	if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	var tk model.VMTask
	for _, v := range tasksOf(st, p.ID) {
		tk = v
	}
	pushes := comps.pushCount()
	host := model.Host{ID: tk.TargetHost, VCenterID: vcID, MoRef: trimVC(tk.TargetHost), Name: "dst-host", LastHeartbeat: time.Now().Add(-time.Hour)}
	mustApply(t, st, raftstore.PutHost{Host: host})
	if _, err := r.Reconcile(l.ctx, p.ID); err == nil {
		t.Fatal("a silent target filter went unnoticed")
	}
	got := tasksOf(st, p.ID)[tk.ID]
	if got.Status != model.StatusError || !strings.Contains(got.Reason, "filter of target host dst-host has not reported") {
		t.Fatalf("task %s %q", got.Status, got.Reason)
	}
	host.LastHeartbeat = time.Now()
	mustApply(t, st, raftstore.PutHost{Host: host})
	if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	if got := tasksOf(st, p.ID)[tk.ID]; got.Status != model.StatusInitialSync || got.Reason != "" || comps.pushCount() != pushes {
		t.Fatalf("after the filter is back: %s %q, %d pushes (was %d)", got.Status, got.Reason, comps.pushCount(), pushes)
	}
}

// slowInventory makes every inventory read take "long": during it the
// clock moves past a heartbeat timeout while the filters keep reporting.
type slowInventory struct {
	labInventory
	during func()
}

func (s slowInventory) Inventory(ctx context.Context) (*vsphere.Inventory, error) {
	s.during()
	return s.labInventory.Inventory(ctx)
}

// A reconcile that runs for longer than a heartbeat timeout (a large
// policy, a busy vCenter) judges the filters by their heartbeats when it
// pushes, not by those it read when it began.
func TestLongReconcileSeesFreshHeartbeats(t *testing.T) {
	l := newLab(t, 2, true)
	st := newMemStore()
	comps := newFakeComponents()
	p := l.setup(st, 2)
	clock := &fakeClock{now: time.Now()}
	beat := func() {
		for _, tk := range tasksOf(st, p.ID) {
			for _, id := range []string{tk.SourceHost, tk.TargetHost} {
				if id != "" {
					mustApply(t, st, raftstore.PutHost{Host: model.Host{ID: id, VCenterID: vcID, MoRef: trimVC(id), Name: trimVC(id), LastHeartbeat: clock.Now()}})
				}
			}
		}
	}
	slow := false
	inventories := func(ctx context.Context, id string) (Inventory, error) {
		inv, err := l.inventories(ctx, id)
		if err != nil {
			return nil, err
		}
		return slowInventory{labInventory: inv.(labInventory), during: func() {
			if slow {
				clock.Advance(2 * time.Minute)
				beat()
			}
		}}, nil
	}
	r, err := NewPolicyReconciler(Config{Store: st, Inventories: inventories, Components: comps, Clock: clock,
		HeartbeatTimeout: time.Minute, Settle: -1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	beat()
	slow = true
	if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatalf("filters that kept reporting judged silent: %v", err)
	}
	for id, tk := range tasksOf(st, p.ID) {
		if tk.Status != model.StatusInitialSync {
			t.Fatalf("task %s: %s %q", id, tk.Status, tk.Reason)
		}
	}
	// A filter that really stops is still noticed.
	slow = false
	clock.Advance(2 * time.Minute)
	for _, id := range []string{"src-phys", "dst-phys"} {
		var px model.Proxy
		st.Read(func(s *model.State) { px = *s.Proxies[id] })
		px.LastHeartbeat = clock.Now()
		mustApply(t, st, raftstore.PutProxy{Proxy: px})
	}
	if _, err := r.Reconcile(l.ctx, p.ID); err == nil || !strings.Contains(err.Error(), "has not reported") {
		t.Fatalf("silent filters went unnoticed: %v", err)
	}
}

// barrierComponents holds every push until two have arrived (or a second
// has passed), so that two policies' reconciles have both chosen their
// proxies before either stores a task.
type barrierComponents struct {
	*fakeComponents
	mu      sync.Mutex
	arrived int
	both    chan struct{}
}

func (b *barrierComponents) Configure(ctx context.Context, dp DataPath) error {
	b.mu.Lock()
	if b.arrived++; b.arrived == 2 {
		close(b.both)
	}
	b.mu.Unlock()
	select {
	case <-b.both:
	case <-time.After(time.Second):
	}
	return b.fakeComponents.Configure(ctx, dp)
}

// TestConcurrentPoliciesShareTheLastSlot: two policies reconciled at the
// same time, one VM each, and a source proxy with room for one task. Only
// one policy may take it; the other waits for a proxy instead of
// overbooking this one.
func TestConcurrentPoliciesShareTheLastSlot(t *testing.T) {
	l := newLab(t, 2, true)
	st := newMemStore()
	comps := &barrierComponents{fakeComponents: newFakeComponents(), both: make(chan struct{})}
	p1 := l.setup(st, 1,
		proxy("src-1", model.RoleSource, model.KindPhysical, "", 1),
		proxy("dst-1", model.RoleTarget, model.KindPhysical, "", 0))
	p2 := p1
	p2.ID, p2.Name, p2.Generation = "pol-2", "second", 0
	p2.VMs = []model.VMRef{{MoRef: l.vm(vcsim.ProtectedVMName(1)).MoRef}}
	mustApply(t, st, raftstore.PutPolicy{Policy: p2, Create: true})
	r := newReconciler(t, st, l, comps)

	errs := make(chan error, 2)
	for _, id := range []string{p1.ID, p2.ID} {
		go func() {
			_, err := r.Reconcile(l.ctx, id)
			errs <- err
		}()
	}
	var failed []error
	for range 2 {
		if err := <-errs; err != nil {
			failed = append(failed, err)
		}
	}
	on := 0
	for _, pid := range []string{p1.ID, p2.ID} {
		for _, tk := range tasksOf(st, pid) {
			if tk.SourceProxy == "src-1" {
				on++
			}
		}
	}
	if on != 1 {
		t.Fatalf("%d tasks on a source proxy with room for 1 (errors: %v)", on, failed)
	}
	if len(failed) != 1 || !errors.Is(failed[0], ErrNoProxy) {
		t.Fatalf("want one policy waiting for a proxy, got errors %v", failed)
	}
	r.slotMu.Lock()
	left := len(r.claims)
	r.slotMu.Unlock()
	if left != 0 {
		t.Fatalf("%d claims left after both reconciles ended", left)
	}

	// once the slot is free again (the winner's task gone, as when its
	// policy is deleted), the other policy takes it
	winner, loser := p1.ID, p2.ID
	if tasksOf(st, p2.ID)[firstTaskID(st, p2.ID)].SourceProxy == "src-1" {
		winner, loser = p2.ID, p1.ID
	}
	mustApply(t, st, raftstore.DeleteTask{ID: firstTaskID(st, winner)})
	if _, err := r.Reconcile(l.ctx, loser); err != nil {
		t.Fatalf("slot freed, second policy: %v", err)
	}
	if tk := tasksOf(st, loser)[firstTaskID(st, loser)]; tk.SourceProxy != "src-1" {
		t.Fatalf("second policy's task on %q, want src-1", tk.SourceProxy)
	}
}

func firstTaskID(st Store, policyID string) string {
	for id := range tasksOf(st, policyID) {
		return id
	}
	return ""
}

// heartbeatDuringPush applies a data-path status report to the stored
// task while a configuration is being pushed, as a heartbeat arriving in
// the middle of a reconcile does.
type heartbeatDuringPush struct {
	*fakeComponents
	st     *memStore
	report func(t *model.VMTask)
}

func (h *heartbeatDuringPush) Configure(ctx context.Context, dp DataPath) error {
	if h.report != nil {
		h.st.mu.Lock()
		if cur, ok := h.st.s.Tasks[dp.Task.ID]; ok {
			c := *cur
			h.report(&c)
			h.st.s.Tasks[c.ID] = &c
		}
		h.st.mu.Unlock()
	}
	return h.fakeComponents.Configure(ctx, dp)
}

// TestReplanKeepsANewerReport: a reconcile that re-plans a syncing VM (its
// source proxy died) writes the new plan with the status the data path
// reported meanwhile, not the older one of its snapshot.
func TestReplanKeepsANewerReport(t *testing.T) {
	l := newLab(t, 1, true)
	st := newMemStore()
	comps := &heartbeatDuringPush{fakeComponents: newFakeComponents(), st: st}
	p := l.setup(st, 1,
		proxy("src-a", model.RoleSource, model.KindPhysical, "", 0),
		proxy("src-b", model.RoleSource, model.KindPhysical, "", 0),
		proxy("dst", model.RoleTarget, model.KindPhysical, "", 0))
	r := newReconciler(t, st, l, comps)
	if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	id := firstTaskID(st, p.ID)
	if tk := tasksOf(st, p.ID)[id]; tk.SourceProxy != "src-a" || tk.Status != model.StatusInitialSync {
		t.Fatalf("configured task: %+v", tk)
	}
	dead := proxy("src-a", model.RoleSource, model.KindPhysical, "", 0)
	dead.LastHeartbeat = time.Now().Add(-time.Hour)
	mustApply(t, st, raftstore.PutProxy{Proxy: dead})
	comps.report = func(tk *model.VMTask) {
		tk.Status, tk.SyncDoneBytes, tk.LagSeconds = model.StatusSyncing, tk.SyncTotalBytes, 1.5
	}
	if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	tk := tasksOf(st, p.ID)[id]
	if tk.SourceProxy != "src-b" {
		t.Fatalf("not re-planned: %+v", tk)
	}
	if tk.Status != model.StatusSyncing || tk.SyncDoneBytes != tk.SyncTotalBytes || tk.LagSeconds != 1.5 {
		t.Fatalf("the re-plan wrote back an older status: %s, %d of %d bytes, lag %v", tk.Status, tk.SyncDoneBytes, tk.SyncTotalBytes, tk.LagSeconds)
	}
	// and a reconcile with nothing to change writes nothing
	applies := st.applies
	comps.report = nil
	if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	if st.applies != applies {
		t.Fatalf("an unchanged task was written %d times", st.applies-applies)
	}
}
