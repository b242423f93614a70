package controllers

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/raftstore"
	"github.com/continuum-cdp/continuum/vcsim"
)

// TestNewProxyOnlyAfterDisableEnable: an existing policy keeps its proxies
// when a better one appears, and takes it after being disabled and enabled.
// Disabling turns statuses into Success, Warning or Error and touches
// neither vCenter nor the components.
func TestNewProxyOnlyAfterDisableEnable(t *testing.T) {
	l := newLab(t, 2, true)
	st := newMemStore()
	comps := newFakeComponents()
	srcCluster := vcID + "/" + l.cluster(vcsim.SourceClusterName)
	dstCluster := vcID + "/" + l.cluster(vcsim.TargetClusterName)
	p := l.setup(st, 2,
		proxy("src-other", model.RoleSource, model.KindVM, dstCluster, 0),
		proxy("dst-vm", model.RoleTarget, model.KindVM, dstCluster, 0),
	)
	r := newReconciler(t, st, l, comps)
	if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	for _, tk := range tasksOf(st, p.ID) {
		if tk.SourceProxy != "src-other" || tk.TargetProxy != "dst-vm" {
			t.Fatalf("only candidates: %+v", tk)
		}
	}
	mustApply(t, st, raftstore.PutProxy{Proxy: proxy("src-here", model.RoleSource, model.KindVM, srcCluster, 0)})
	if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	for _, tk := range tasksOf(st, p.ID) {
		if tk.SourceProxy != "src-other" {
			t.Fatalf("a new proxy was used without disable/enable: %+v", tk)
		}
	}

	// Disable: statuses become outcomes, nothing is called.
	vms := tasksOf(st, p.ID)
	var synced, cbt string
	for id := range vms {
		if synced == "" {
			synced = id
		} else {
			cbt = id
		}
	}
	if err := r.ReportStatus(l.ctx, synced, model.StatusSyncing, 0, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := r.ReportStatus(l.ctx, cbt, model.StatusCBT, 0, 0); err != nil {
		t.Fatal(err)
	}
	mustApply(t, st, raftstore.SetPolicyEnabled{ID: p.ID, Enabled: false})
	pushes := comps.pushCount()
	l.setDown(errors.New("vCenter must not be called for a disabled policy"))
	if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	tasks := tasksOf(st, p.ID)
	if tasks[synced].Status != model.StatusSuccess || tasks[cbt].Status != model.StatusWarning || !strings.Contains(tasks[cbt].Reason, "CBT") {
		t.Fatalf("disabled statuses: %+v / %+v", tasks[synced], tasks[cbt])
	}
	p = policyOf(t, st, p.ID)
	if s, reason := PolicyStatus(&p, ptrs(tasks)); s != model.StatusWarning || reason == "" {
		t.Fatalf("disabled policy status %s %q", s, reason)
	}
	if comps.pushCount() != pushes {
		t.Fatal("a disabled policy was reconfigured")
	}
	l.setDown(nil)

	mustApply(t, st, raftstore.SetPolicyEnabled{ID: p.ID, Enabled: true})
	if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	for _, tk := range tasksOf(st, p.ID) {
		if tk.SourceProxy != "src-here" {
			t.Fatalf("after disable/enable the same-cluster proxy ranks first: %+v", tk)
		}
		if tk.ID == synced && tk.Status != model.StatusSyncing {
			t.Fatalf("re-enabled synced VM: %s", tk.Status)
		}
	}
}

// TestManualSelectionEdited: a manual policy uses only its listed proxies,
// and a new listing is used once the policy is edited.
func TestManualSelectionEdited(t *testing.T) {
	l := newLab(t, 1, true)
	st := newMemStore()
	comps := newFakeComponents()
	p := l.setup(st, 1,
		proxy("phys-a", model.RoleSource, model.KindPhysical, "", 0),
		proxy("vm-b", model.RoleSource, model.KindVM, "elsewhere", 0),
		proxy("dst", model.RoleTarget, model.KindPhysical, "", 0),
	)
	p.ProxySelection, p.SourceProxies, p.TargetProxies = model.SelectManual, []string{"vm-b"}, []string{"dst"}
	mustApply(t, st, raftstore.PutPolicy{Policy: p})
	r := newReconciler(t, st, l, comps)
	if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	tid := TaskID(p.ID, l.vm(vcsim.ProtectedVMName(0)).MoRef)
	if got := tasksOf(st, p.ID)[tid].SourceProxy; got != "vm-b" {
		t.Fatalf("manual selection chose %s", got)
	}
	p = policyOf(t, st, p.ID)
	p.SourceProxies = []string{"phys-a", "vm-b"}
	mustApply(t, st, raftstore.PutPolicy{Policy: p})
	if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	if got := tasksOf(st, p.ID)[tid].SourceProxy; got != "phys-a" {
		t.Fatalf("after the edit: %s", got)
	}
}

func TestReportStatus(t *testing.T) {
	st := newMemStore()
	mustApply(t, st, raftstore.PutPolicy{Policy: model.Policy{ID: "p", Name: "p", Enabled: true,
		RPOWarning: model.Duration(10 * time.Second), RPOError: model.Duration(20 * time.Second)}})
	mustApply(t, st, raftstore.PutTask{Task: model.VMTask{ID: "p/vm-1", PolicyID: "p", Status: model.StatusInitialSync, SyncTotalBytes: 100}})
	r, err := NewPolicyReconciler(Config{Store: st, Inventories: StaticInventories(nil), Components: newFakeComponents()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	get := func() model.VMTask { return tasksOf(st, "p")["p/vm-1"] }
	if err := r.ReportStatus(ctx, "p/vm-1", model.StatusInitialSync, 40, 0); err != nil || get().SyncDoneBytes != 40 {
		t.Fatalf("progress: %v %+v", err, get())
	}
	if err := r.ReportStatus(ctx, "p/vm-1", model.StatusSyncing, 0, 3*time.Second); err != nil || get().Status != model.StatusSyncing || get().SyncDoneBytes != 100 {
		t.Fatalf("syncing: %v %+v", err, get())
	}
	_ = r.ReportStatus(ctx, "p/vm-1", model.StatusSyncing, 0, 15*time.Second)
	if g := get(); g.Status != model.StatusWarning || !strings.Contains(g.Reason, "warning threshold") || g.LagSeconds != 15 {
		t.Fatalf("lag over warning: %+v", g)
	}
	if configOwned(&model.VMTask{Status: model.StatusWarning, Reason: get().Reason}) {
		t.Fatal("a lag warning must stay the data path's")
	}
	_ = r.ReportStatus(ctx, "p/vm-1", model.StatusSyncing, 0, 25*time.Second)
	if g := get(); g.Status != model.StatusError || !strings.Contains(g.Reason, "error threshold") {
		t.Fatalf("lag over error: %+v", g)
	}
	before := get()
	if err := r.ReportStatus(ctx, "p/vm-1", model.StatusSuccess, 0, 0); !errors.Is(err, model.ErrInvalid) {
		t.Fatalf("bad status: %v", err)
	}
	if err := r.ReportStatus(ctx, "p/nope", model.StatusSyncing, 0, 0); !errors.Is(err, model.ErrNotFound) {
		t.Fatalf("unknown task: %v", err)
	}
	if !equalTask(get(), before) {
		t.Fatal("a rejected report changed the task")
	}
}

func equalTask(a, b model.VMTask) bool {
	return a.Status == b.Status && a.Reason == b.Reason && a.LagSeconds == b.LagSeconds && a.SyncDoneBytes == b.SyncDoneBytes
}

func TestOverlappingPoliciesRefused(t *testing.T) {
	l := newLab(t, 1, true)
	st := newMemStore()
	comps := newFakeComponents()
	p := l.setup(st, 1)
	r := newReconciler(t, st, l, comps)
	if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	q := p
	q.ID, q.Name, q.CreatedAt = "pol-2", "second", p.CreatedAt.Add(time.Second)
	q.Target.ReplicaSuffix = "_second"
	mustApply(t, st, raftstore.PutPolicy{Policy: q, Create: true})
	if _, err := r.Reconcile(l.ctx, q.ID); !errors.Is(err, ErrTerminal) {
		t.Fatalf("overlap: %v", err)
	}
	for _, tk := range tasksOf(st, q.ID) {
		if tk.Status != model.StatusError || !strings.Contains(tk.Reason, "already protected by policy demo") {
			t.Fatalf("overlapping task: %s %q", tk.Status, tk.Reason)
		}
	}
	if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatalf("the first policy is unaffected: %v", err)
	}
	if len(l.replicas()) != 1 {
		t.Fatalf("replicas %v", l.replicas())
	}
}

// TestVMotionToAnotherClusterReplans: a VM moved to another cluster gets
// the source proxy of its new cluster although the policy is unchanged.
func TestVMotionToAnotherClusterReplans(t *testing.T) {
	l := newLab(t, 1, true)
	st := newMemStore()
	comps := newFakeComponents()
	srcCluster := vcID + "/" + l.cluster(vcsim.SourceClusterName)
	dstCluster := vcID + "/" + l.cluster(vcsim.TargetClusterName)
	p := l.setup(st, 1,
		proxy("src-a", model.RoleSource, model.KindVM, srcCluster, 0),
		proxy("src-b", model.RoleSource, model.KindVM, dstCluster, 0),
		proxy("dst", model.RoleTarget, model.KindPhysical, "", 0),
	)
	r := newReconciler(t, st, l, comps)
	if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	vm := l.vm(vcsim.ProtectedVMName(0))
	tid := TaskID(p.ID, vm.MoRef)
	if got := tasksOf(st, p.ID)[tid].SourceProxy; got != "src-a" {
		t.Fatalf("before: %s", got)
	}
	host := l.inv.ClusterByName(vcsim.TargetClusterName).Hosts[0]
	l.relocate(vm.MoRef, host)
	if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	tk := tasksOf(st, p.ID)[tid]
	if tk.SourceProxy != "src-b" || tk.SourceHost != vcID+"/"+host {
		t.Fatalf("after vMotion to %s: proxy %s host %s", host, tk.SourceProxy, tk.SourceHost)
	}
	if dp, _ := comps.last(tid); dp.SourceProxy.ID != "src-b" {
		t.Fatalf("pushed %s", dp.SourceProxy.ID)
	}
}

// TestNoQuorumReconfiguresNothing: without quorum the reconciler touches
// neither vCenter nor the components and retries later.
func TestNoQuorumReconfiguresNothing(t *testing.T) {
	l := newLab(t, 1, true)
	st := newMemStore()
	comps := newFakeComponents()
	p := l.setup(st, 1)
	r := newReconciler(t, st, l, comps)
	st.setQuorum(false)
	if _, err := r.Reconcile(l.ctx, p.ID); !errors.Is(err, model.ErrNoLeader) {
		t.Fatalf("no quorum: %v", err)
	}
	if comps.pushCount() != 0 || len(l.replicas()) != 0 || len(tasksOf(st, p.ID)) != 0 {
		t.Fatal("something was configured without quorum")
	}
	st.setQuorum(true)
	if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	checkConfigured(t, l, st, comps, p)
}
