package controllers

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/raftstore"
	"github.com/continuum-cdp/continuum/vcsim"
)

func replicaRecords(st Store) int {
	n := 0
	st.Read(func(s *model.State) { n = len(s.Replicas) })
	return n
}

// TestDeletePolicyDeletesReplicas: a policy deleted with its replicas
// gets each replica's journal purged on its target filter first (a filter
// that still replicates the VM refuses, and nothing is deleted), then the
// replica VM in vCenter and its record; doing it again finds nothing to do.
func TestDeletePolicyDeletesReplicas(t *testing.T) {
	l := newLab(t, 2, true)
	st := newMemStore()
	comps := newFakeComponents()
	p := l.setup(st, 2)
	r := newReconciler(t, st, l, comps)
	if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	if len(l.replicas()) != 2 || replicaRecords(st) != 2 {
		t.Fatalf("before: %d replica VMs, %d records", len(l.replicas()), replicaRecords(st))
	}
	var want []string
	for _, tk := range tasksOf(st, p.ID) {
		want = append(want, tk.TargetHost+" "+tk.VMName)
	}
	slices.Sort(want)
	mustApply(t, st, raftstore.DeletePolicy{ID: p.ID, DeleteReplicas: true})

	comps.mu.Lock()
	comps.purgeErr = errors.New("409: it is still in this filter's configuration")
	comps.mu.Unlock()
	if _, err := r.Reconcile(l.ctx, p.ID); err == nil {
		t.Fatal("a refused purge was not reported for a retry")
	}
	if len(l.replicas()) != 2 || replicaRecords(st) != 2 {
		t.Fatalf("a replica went before its journal: %d VMs, %d records", len(l.replicas()), replicaRecords(st))
	}

	comps.mu.Lock()
	comps.purgeErr = nil
	comps.mu.Unlock()
	if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	if len(l.replicas()) != 0 || replicaRecords(st) != 0 {
		t.Fatalf("after: %d replica VMs, %d records", len(l.replicas()), replicaRecords(st))
	}
	comps.mu.Lock()
	got := slices.Clone(comps.purged)
	comps.mu.Unlock()
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("journals purged: %q, want %q", got, want)
	}
	if _, err := r.Reconcile(l.ctx, p.ID); err != nil || len(comps.purged) != len(want) {
		t.Fatalf("again: %v, %d purges", err, len(comps.purged))
	}
}

// TestDeletedPolicyReapedByANewLeader: the replicas of a policy deleted
// with them are deleted by the running loop of a reconciler that never saw
// the policy (a new leader), and a policy deleted without them keeps them;
// the CDP storage policy comes off both policies' source VMs.
func TestDeletedPolicyReapedByANewLeader(t *testing.T) {
	l := newLab(t, 2, true)
	st := newMemStore()
	comps := newFakeComponents()
	p := l.setup(st, 1)
	if _, err := newReconciler(t, st, l, comps).Reconcile(l.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	keep := p
	keep.ID, keep.Name, keep.Generation = "pol-keep", "keep", 0
	keep.VMs = []model.VMRef{{MoRef: l.vm(vcsim.ProtectedVMName(1)).MoRef}}
	mustApply(t, st, raftstore.PutPolicy{Policy: keep, Create: true})
	if _, err := newReconciler(t, st, l, comps).Reconcile(l.ctx, keep.ID); err != nil {
		t.Fatal(err)
	}
	if len(l.replicas()) != 2 {
		t.Fatalf("replica VMs: %d", len(l.replicas()))
	}
	mustApply(t, st, raftstore.DeletePolicy{ID: keep.ID})
	mustApply(t, st, raftstore.DeletePolicy{ID: p.ID, DeleteReplicas: true})

	ctx, cancel := context.WithCancel(l.ctx)
	done := make(chan error, 1)
	r := newReconciler(t, st, l, comps)
	go func() { done <- r.Run(ctx) }()
	deadline := time.Now().Add(20 * time.Second)
	marked := func() bool {
		for _, m := range detachMarks(st) {
			if m {
				return true
			}
		}
		return false
	}
	for replicaRecords(st) != 1 || marked() {
		if time.Now().After(deadline) {
			t.Fatalf("after 20 s: %d replica records, detach marks %v", replicaRecords(st), detachMarks(st))
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	<-done
	// both policies' source VMs left protection: the loop took the CDP
	// storage policy off their disks
	for i := range 2 {
		if n, d := profiledDisks(t, l, l.vm(vcsim.ProtectedVMName(i)).MoRef); n != 0 {
			t.Fatalf("VM %d: %d of %d disks still carry the CDP policy", i, n, d)
		}
	}
	if len(l.replicas()) != 1 {
		t.Fatalf("replica VMs: %d, want the kept policy's", len(l.replicas()))
	}
	st.Read(func(s *model.State) {
		for _, rp := range s.Replicas {
			if rp.PolicyID != keep.ID || rp.Deleting {
				t.Fatalf("left: %+v", rp)
			}
		}
	})
}
