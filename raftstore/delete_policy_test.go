package raftstore

import (
	"bytes"
	"errors"
	"testing"

	"github.com/continuum-cdp/continuum/internal/model"
)

// fsmWithVCenter returns an FSM holding vCenter vc1, and an apply that
// fails the test on a refused command.
func fsmWithVCenter(t *testing.T) (*FSM, func(Command)) {
	f := NewFSM(nil)
	must := func(c Command) {
		t.Helper()
		if res := applyLog(t, f, c); res.Err != nil {
			t.Fatalf("apply %T: %v", c, res.Err)
		}
	}
	must(PutVCenter{VCenter: testVCenter("vc1", "one"), Create: true})
	return f, must
}

// TestDeletePolicyWithReplicas: deleting a policy with its replicas marks
// them for the controllers (with the journal to purge, from their tasks)
// and drops the policy's restore-point catalog; a failed-over replica
// refuses it and nothing changes; without the flag the replicas stay as
// they were.
func TestDeletePolicyWithReplicas(t *testing.T) {
	f, must := fsmWithVCenter(t)
	for _, id := range []string{"p1", "p2"} {
		must(PutPolicy{Policy: testPolicy(id, "pol-"+id, "vc1"), Create: true})
	}
	must(PutTask{Task: model.VMTask{ID: "p1/vm-1", PolicyID: "p1", VMMoRef: "vm-1", VMName: "app-1", ReplicaID: "vc1/vm-91", TargetHost: "vc1/host-9"}})
	must(PutTask{Task: model.VMTask{ID: "p2/vm-2", PolicyID: "p2", VMMoRef: "vm-2", VMName: "app-2", ReplicaID: "vc1/vm-92", TargetHost: "vc1/host-9"}})
	must(PutReplica{Replica: model.Replica{ID: "vc1/vm-91", PolicyID: "p1", SourceVM: "vm-1", VCenterID: "vc1", MoRef: "vm-91", Name: "app-1_replica"}})
	must(PutReplica{Replica: model.Replica{ID: "vc1/vm-92", PolicyID: "p2", SourceVM: "vm-2", VCenterID: "vc1", MoRef: "vm-92", Name: "app-2_replica", FailedOver: true}})
	must(PutRestorePoint{RestorePoint: model.RestorePoint{ID: "rp-1", PolicyID: "p1", VMMoRef: "vm-1", Kind: model.PointLongTerm, Time: t0}})
	must(PutRestorePoint{RestorePoint: model.RestorePoint{ID: "rp-2", PolicyID: "p2", VMMoRef: "vm-2", Kind: model.PointLongTerm, Time: t0}})

	// a failed-over replica is the production VM now: refused, unchanged
	before := fsmBytes(t, f)
	res := applyLog(t, f, DeletePolicy{ID: "p2", DeleteReplicas: true})
	if !errors.Is(res.Err, model.ErrConflict) || model.ErrorField(res.Err) != "delete_replicas" {
		t.Fatalf("deleting the replicas of a failed-over VM: %v", res.Err)
	}
	if !bytes.Equal(before, fsmBytes(t, f)) {
		t.Fatal("a refused delete changed the state")
	}

	must(DeletePolicy{ID: "p1", DeleteReplicas: true})
	f.Read(func(s *model.State) {
		if _, ok := s.Policies["p1"]; ok || s.Tasks["p1/vm-1"] != nil {
			t.Fatal("policy or task left")
		}
		r := s.Replicas["vc1/vm-91"]
		if r == nil || !r.Deleting || r.JournalVM != "app-1" || r.TargetHost != "vc1/host-9" || !r.DetachSource || r.SourceVCenterID != "vc1" {
			t.Fatalf("replica after delete with replicas: %+v", r)
		}
		if _, ok := s.RestorePoints["rp-1"]; ok {
			t.Fatal("the deleted policy's catalog entry is left")
		}
		if _, ok := s.RestorePoints["rp-2"]; !ok {
			t.Fatal("another policy's catalog entry went too")
		}
	})

	// without the flag the replica and its catalog are kept as they were
	must(DeletePolicy{ID: "p2"})
	f.Read(func(s *model.State) {
		// its source VM left protection all the same
		if r := s.Replicas["vc1/vm-92"]; r == nil || r.Deleting || !r.DetachSource || r.SourceVCenterID != "vc1" {
			t.Fatalf("kept replica: %+v", r)
		}
		if _, ok := s.RestorePoints["rp-2"]; !ok {
			t.Fatal("catalog entry of a kept replica went")
		}
	})
}

// TestSourceLeavesProtection: a task deleted because its VM left the
// policy marks the VM's replica DetachSource (a plain task delete does
// not), and SourceDetached clears the mark once the storage policy is off.
func TestSourceLeavesProtection(t *testing.T) {
	f, must := fsmWithVCenter(t)
	must(PutPolicy{Policy: testPolicy("p1", "pol-p1", "vc1"), Create: true})
	for _, vm := range []string{"vm-1", "vm-2"} {
		must(PutTask{Task: model.VMTask{ID: "p1/" + vm, PolicyID: "p1", VMMoRef: vm, ReplicaID: "vc2/r-" + vm}})
		must(PutReplica{Replica: model.Replica{ID: "vc2/r-" + vm, PolicyID: "p1", SourceVM: vm, VCenterID: "vc2", MoRef: "r-" + vm}})
	}
	must(DeleteTask{ID: "p1/vm-1", DetachSource: true})
	must(DeleteTask{ID: "p1/vm-2"})
	f.Read(func(s *model.State) {
		if r := s.Replicas["vc2/r-vm-1"]; r == nil || !r.DetachSource || r.SourceVCenterID != "vc1" || s.Tasks["p1/vm-1"] != nil {
			t.Fatalf("replica of a VM that left: %+v", r)
		}
		if r := s.Replicas["vc2/r-vm-2"]; r == nil || r.DetachSource {
			t.Fatalf("a plain task delete marked the replica: %+v", r)
		}
	})
	must(SourceDetached{ReplicaID: "vc2/r-vm-1"})
	f.Read(func(s *model.State) {
		if r := s.Replicas["vc2/r-vm-1"]; r == nil || r.DetachSource {
			t.Fatalf("after SourceDetached: %+v", r)
		}
	})
	if res := applyLog(t, f, SourceDetached{ReplicaID: "vc2/nope"}); !errors.Is(res.Err, model.ErrNotFound) {
		t.Fatalf("SourceDetached of an unknown replica: %v", res.Err)
	}
	if res := applyLog(t, f, DeleteTask{ID: "p1/vm-9", DetachSource: true}); !errors.Is(res.Err, model.ErrNotFound) {
		t.Fatalf("delete of an unknown task: %v", res.Err)
	}
}
