package controllers

import (
	"errors"
	"testing"

	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/raftstore"
	"github.com/continuum-cdp/continuum/vcsim"
)

// profiledDisks counts the disks of a VM that carry a storage profile now
// (read from vCenter, not from the lab's start-up inventory).
func profiledDisks(t *testing.T, l *lab, moref string) (profiled, disks int) {
	t.Helper()
	vm, err := l.c.VM(l.ctx, moref)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range vm.Disks {
		if d.ProfileID != "" {
			profiled++
		}
	}
	return profiled, len(vm.Disks)
}

// protectTwo configures a policy of two VMs in a lab.
func protectTwo(t *testing.T) (*lab, Store, model.Policy, *PolicyReconciler) {
	t.Helper()
	l := newLab(t, 2, true)
	st := newMemStore()
	p := l.setup(st, 2)
	r := newReconciler(t, st, l, newFakeComponents())
	if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	return l, st, p, r
}

func detachMarks(st Store) map[string]bool {
	out := map[string]bool{}
	st.Read(func(s *model.State) {
		for _, rp := range s.Replicas {
			out[rp.SourceVM] = rp.DetachSource
		}
	})
	return out
}

// TestPolicyDeleteDetachesStoragePolicy: deleting a policy (its replicas
// kept) takes the CDP storage policy off its source VMs' disks; while the
// source vCenter cannot be reached nothing changes and the reconcile is
// retried; the replicas stay.
func TestPolicyDeleteDetachesStoragePolicy(t *testing.T) {
	l, st, p, r := protectTwo(t)
	var vms []string
	for i := range 2 {
		vms = append(vms, l.vm(vcsim.ProtectedVMName(i)).MoRef)
	}
	for _, vm := range vms {
		if n, d := profiledDisks(t, l, vm); n != d || d == 0 {
			t.Fatalf("%s: %d of %d disks carry the CDP policy while protected", vm, n, d)
		}
	}
	mustApply(t, st, raftstore.DeletePolicy{ID: p.ID})

	l.setDown(errors.New("vCenter unreachable"))
	if _, err := r.Reconcile(l.ctx, p.ID); err == nil {
		t.Fatal("a detach that could not reach vCenter was not reported for a retry")
	}
	l.setDown(nil)
	for _, vm := range vms {
		if !detachMarks(st)[vm] {
			t.Fatalf("%s lost its detach mark on a failed attempt", vm)
		}
		if n, _ := profiledDisks(t, l, vm); n == 0 {
			t.Fatalf("%s changed while vCenter was down", vm)
		}
	}

	if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	for _, vm := range vms {
		if n, d := profiledDisks(t, l, vm); n != 0 {
			t.Fatalf("%s: %d of %d disks still carry the CDP policy after its policy was deleted", vm, n, d)
		}
		if detachMarks(st)[vm] {
			t.Fatalf("%s is still marked", vm)
		}
	}
	if len(l.replicas()) != 2 || replicaRecords(st) != 2 {
		t.Fatalf("replicas: %d VMs, %d records; a policy deleted without its replicas keeps them", len(l.replicas()), replicaRecords(st))
	}
	if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
}

// TestVMTakenOutOfPolicyLosesStoragePolicy: a VM taken out of a policy
// loses its task and the CDP storage policy on its disks, keeps its
// replica; the VM left in the policy keeps both.
func TestVMTakenOutOfPolicyLosesStoragePolicy(t *testing.T) {
	l, st, p, r := protectTwo(t)
	stay, leave := l.vm(vcsim.ProtectedVMName(0)).MoRef, l.vm(vcsim.ProtectedVMName(1)).MoRef
	p.VMs = []model.VMRef{{MoRef: stay}}
	mustApply(t, st, raftstore.PutPolicy{Policy: p})
	if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	if n, d := profiledDisks(t, l, leave); n != 0 {
		t.Fatalf("the VM taken out: %d of %d disks still carry the CDP policy", n, d)
	}
	if n, d := profiledDisks(t, l, stay); n != d {
		t.Fatalf("the VM left in: %d of %d disks carry the CDP policy", n, d)
	}
	if _, ok := tasksOf(st, p.ID)[TaskID(p.ID, leave)]; ok {
		t.Fatal("the VM taken out keeps its task")
	}
	if m := detachMarks(st); m[leave] || len(m) != 2 {
		t.Fatalf("replica records %v: the VM taken out keeps its replica, unmarked once detached", m)
	}
}

// TestDetachSkipsAVMProtectedAgain: a VM taken out of one policy and named
// by another keeps the CDP storage policy on its disks.
func TestDetachSkipsAVMProtectedAgain(t *testing.T) {
	l, st, p, r := protectTwo(t)
	moved := l.vm(vcsim.ProtectedVMName(1)).MoRef
	other := p
	other.ID, other.Name, other.Generation = "pol-2", "other", 0
	other.VMs = []model.VMRef{{MoRef: moved}}
	mustApply(t, st, raftstore.PutPolicy{Policy: other, Create: true})
	p.VMs = p.VMs[:1]
	mustApply(t, st, raftstore.PutPolicy{Policy: p})
	if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	if n, d := profiledDisks(t, l, moved); n != d {
		t.Fatalf("a VM another policy names: %d of %d disks carry the CDP policy", n, d)
	}
	if detachMarks(st)[moved] {
		t.Fatal("the mark stays on a VM that is protected again")
	}
}
