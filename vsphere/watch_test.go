package vsphere_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/vcsim"
	"github.com/continuum-cdp/continuum/vsphere"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"
)

// feed runs Watch in the background and returns its changes.
func feed(t *testing.T, e *env) <-chan vsphere.Change {
	t.Helper()
	ctx, cancel := context.WithCancel(e.ctx)
	ch := make(chan vsphere.Change, 100)
	done := make(chan error, 1)
	go func() { done <- e.c.Watch(ctx, func(c vsphere.Change) { ch <- c }) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("watch: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("watch did not stop")
		}
	})
	if c := next(t, ch); c.Kind != vsphere.Synced {
		t.Fatalf("first change %+v, want synced", c)
	}
	return ch
}

func next(t *testing.T, ch <-chan vsphere.Change) vsphere.Change {
	t.Helper()
	select {
	case c := <-ch:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no change reported")
	}
	return vsphere.Change{}
}

// building holds VMs the test created: the simulator shows a VM under
// construction (its device list reset, then filled), which may surface as
// disk changes right after VMCreated when the steps fall in two batches.
var building = map[string]bool{}

// expect reads changes until one of kind k for vm arrives. Anything else,
// such as a second VMCreated, fails the test.
func expect(t *testing.T, ch <-chan vsphere.Change, k vsphere.ChangeKind, vm string) vsphere.Change {
	t.Helper()
	for {
		c := next(t, ch)
		if c.Kind == k && c.VM == vm {
			if k == vsphere.VMCreated {
				building[vm] = true
			}
			return c
		}
		if building[c.VM] && (c.Kind == vsphere.DiskAdded || c.Kind == vsphere.DiskRemoved) {
			continue
		}
		t.Fatalf("unexpected change %+v while waiting for %s of %s", c, k, vm)
	}
}

func TestWatch(t *testing.T) {
	e := newEnv(t, vcsim.Options{ProtectedVMs: 2, ProxyVMs: -1})
	ch := feed(t, e)
	src := e.inv.VMByName(vcsim.ProtectedVMName(0))

	// Created: the replica. The simulator re-sends enter for every VM;
	// only the new one may be reported.
	r, err := e.c.EnsureReplica(e.ctx, e.replicaSpec(t, src.Name))
	if err != nil {
		t.Fatal(err)
	}
	c := expect(t, ch, vsphere.VMCreated, r.MoRef)
	if c.Name != r.Name {
		t.Fatalf("created %+v", c)
	}

	// Disk added.
	addDisk(t, e, src.MoRef, 2007, 7, 64)
	c = expect(t, ch, vsphere.DiskAdded, src.MoRef)
	if !slices.Equal(c.DiskKeys, []int32{2007}) {
		t.Fatalf("disk added %+v", c)
	}

	// vMotion to another host of the cluster.
	var to string
	for _, h := range e.inv.ClusterByName(vcsim.SourceClusterName).Hosts {
		if h != src.Host {
			to = h
			break
		}
	}
	vc := vcsimClient(t, e)
	vmo := object.NewVirtualMachine(vc, types.ManagedObjectReference{Type: "VirtualMachine", Value: src.MoRef})
	hr := types.ManagedObjectReference{Type: "HostSystem", Value: to}
	task, err := vmo.Relocate(e.ctx, types.VirtualMachineRelocateSpec{Host: &hr}, types.VirtualMachineMovePriorityDefaultPriority)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Wait(e.ctx); err != nil {
		t.Fatal(err)
	}
	c = expect(t, ch, vsphere.HostChanged, src.MoRef)
	if c.Host != to || c.PrevHost != src.Host {
		t.Fatalf("host changed %+v, want %s -> %s", c, src.Host, to)
	}

	// Storage vMotion to the other source datastore.
	var ds string
	for _, d := range e.inv.HostByName(vcsim.SourceHostName(0)).Datastores {
		if d != src.Disks[0].Datastore {
			ds = d
		}
	}
	dr := types.ManagedObjectReference{Type: "Datastore", Value: ds}
	task, err = vmo.Relocate(e.ctx, types.VirtualMachineRelocateSpec{Datastore: &dr}, types.VirtualMachineMovePriorityDefaultPriority)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Wait(e.ctx); err != nil {
		t.Fatal(err)
	}
	c = expect(t, ch, vsphere.DatastoreChanged, src.MoRef)
	if !slices.Contains(c.Datastores, ds) {
		t.Fatalf("datastore changed %+v, want %s", c, ds)
	}

	// Removed.
	if err := e.c.DeleteReplica(e.ctx, r.MoRef); err != nil {
		t.Fatal(err)
	}
	expect(t, ch, vsphere.VMRemoved, r.MoRef)

	// A VM in a nested folder is seen too: the feed walks the folders.
	dcFolder := object.NewFolder(vc, types.ManagedObjectReference{Type: "Folder", Value: e.inv.Datacenters[0].VMFolder})
	outer, err := dcFolder.CreateFolder(e.ctx, "outer")
	if err != nil {
		t.Fatal(err)
	}
	inner, err := outer.CreateFolder(e.ctx, "inner")
	if err != nil {
		t.Fatal(err)
	}
	spec := e.replicaSpec(t, vcsim.ProtectedVMName(1))
	spec.Folder = inner.Reference().Value
	nested, err := e.c.EnsureReplica(e.ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	expect(t, ch, vsphere.VMCreated, nested.MoRef)
	if err := e.c.DeleteReplica(e.ctx, nested.MoRef); err != nil {
		t.Fatal(err)
	}
	expect(t, ch, vsphere.VMRemoved, nested.MoRef)

	// Nothing else is pending: no duplicate reports.
	for {
		select {
		case c := <-ch:
			if building[c.VM] && c.Kind != vsphere.VMCreated {
				continue
			}
			t.Fatalf("spurious change %+v", c)
		case <-time.After(300 * time.Millisecond):
			return
		}
	}
}

// TestWatchStopsWhileInventoryChanges ends watches while a VM keeps
// moving between hosts: the simulator is then still inside the wait the
// client gave up, applying the changes, while the watch cleans up. Under
// the race detector (make test) a cleanup that destroyed the filter on its
// own raced with that wait. Each watch must report the move made while it
// ran, end without an error, and report nothing once it returned.
func TestWatchStopsWhileInventoryChanges(t *testing.T) {
	e := newEnv(t, vcsim.Options{ProtectedVMs: 1, ProxyVMs: -1})
	src := e.inv.VMByName(vcsim.ProtectedVMName(0))
	hosts := e.inv.ClusterByName(vcsim.SourceClusterName).Hosts
	if len(hosts) < 2 {
		t.Fatalf("cluster hosts %v, want two or more", hosts)
	}
	vmo := object.NewVirtualMachine(vcsimClient(t, e), types.ManagedObjectReference{Type: "VirtualMachine", Value: src.MoRef})
	at := src.Host
	move := func() string {
		to := hosts[0]
		if to == at {
			to = hosts[1]
		}
		hr := types.ManagedObjectReference{Type: "HostSystem", Value: to}
		task, err := vmo.Relocate(e.ctx, types.VirtualMachineRelocateSpec{Host: &hr}, types.VirtualMachineMovePriorityDefaultPriority)
		if err == nil {
			err = task.Wait(e.ctx)
		}
		if err != nil {
			t.Errorf("relocate to %s: %v", to, err)
		}
		at = to
		return to
	}
	for i := range 6 {
		ctx, cancel := context.WithCancel(e.ctx)
		ch := make(chan vsphere.Change, 1000)
		done := make(chan error, 1)
		go func() { done <- e.c.Watch(ctx, func(c vsphere.Change) { ch <- c }) }()
		if c := next(t, ch); c.Kind != vsphere.Synced {
			t.Fatalf("watch %d: first change %+v, want synced", i, c)
		}
		to := move()
		if c := next(t, ch); c.Kind != vsphere.HostChanged || c.VM != src.MoRef || c.Host != to {
			t.Fatalf("watch %d: change %+v, want %s to %s", i, c, src.MoRef, to)
		}
		// more moves while the watch ends
		stop := make(chan struct{})
		moved := make(chan struct{})
		go func() {
			defer close(moved)
			for {
				select {
				case <-stop:
					return
				default:
					move()
				}
			}
		}()
		time.Sleep(50 * time.Millisecond)
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("watch %d: %v", i, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("watch %d did not stop", i)
		}
		n := len(ch)
		time.Sleep(50 * time.Millisecond)
		if len(ch) != n {
			t.Fatalf("watch %d reported %d changes after it returned", i, len(ch)-n)
		}
		close(stop)
		<-moved
	}
}
