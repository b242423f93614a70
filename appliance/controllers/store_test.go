package controllers

import (
	"context"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/raftstore"
	"github.com/continuum-cdp/continuum/vsphere"
)

// The real pieces satisfy the interfaces without adapters.
var (
	_ Store     = (*raftstore.Node)(nil)
	_ Inventory = (*vsphere.Client)(nil)
)

// TestRaftStoreLeaderChange runs the reconciler loop on a real one-node
// raft store, stops it as a lost leadership would, and starts another
// reconciler as the next leader: the state is reached once, nothing is
// created twice, and a report still lands.
func TestRaftStoreLeaderChange(t *testing.T) {
	l := newLab(t, 3, true)
	node, err := raftstore.Open(raftstore.Config{NodeID: "n1", DataDir: t.TempDir(), RaftAddr: freeAddr(t), Bootstrap: true,
		HeartbeatTimeout: 200 * time.Millisecond, ElectionTimeout: 200 * time.Millisecond, LeaderLeaseTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = node.Close() })
	waitFor(t, "leadership", node.IsLeader)
	comps := newFakeComponents()
	p := l.setup(node, 3)

	run := func(r *PolicyReconciler) (stop func()) {
		ctx, cancel := context.WithCancel(l.ctx)
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()
		return func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("run: %v", err)
			}
		}
	}
	configured := func() bool {
		ts := tasksOf(node, p.ID)
		if len(ts) != 3 {
			return false
		}
		for _, tk := range ts {
			if tk.Status != model.StatusInitialSync {
				return false
			}
		}
		return true
	}
	// The first leader loses leadership in the middle of configuration:
	// after its first replica exists and before the others do.
	l.srv.SlowCalls("CreateVM_Task", 300*time.Millisecond)
	r1 := newReconciler(t, node, l, comps)
	r1.cfg.Workers = 1
	stop := run(r1)
	waitFor(t, "a first replica", func() bool { return len(l.replicas()) >= 1 })
	stop()
	l.srv.SlowCalls("CreateVM_Task", 0)
	if n := len(l.replicas()); n == 3 {
		t.Fatal("configuration finished before the leader change")
	}
	stop = run(newReconciler(t, node, l, comps))
	waitFor(t, "policy configured by the second leader", configured)
	stop()
	checkConfigured(t, l, node, comps, p)

	pushes := comps.pushCount()
	r2 := newReconciler(t, node, l, comps)
	stop = run(r2)
	waitFor(t, "the next leader re-pushed each configuration once", func() bool { return comps.pushCount() == pushes+3 })
	stop()
	checkConfigured(t, l, node, comps, p)
	for src, n := range l.replicas() {
		if n != 1 {
			t.Fatalf("source %s has %d replicas after a leader change", src, n)
		}
	}
	if len(l.replicas()) != 3 {
		t.Fatalf("replicas %v", l.replicas())
	}
	for id := range tasksOf(node, p.ID) {
		if err := r2.ReportStatus(l.ctx, id, model.StatusSyncing, 0, time.Second); err != nil {
			t.Fatal(err)
		}
		if got := tasksOf(node, p.ID)[id].Status; got != model.StatusSyncing {
			t.Fatalf("report through raft: %s", got)
		}
	}
}
