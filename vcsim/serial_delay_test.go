//go:build !race

// The simulator's TaskDelay is a package variable its task goroutines read
// unlocked, so this test stays out of race builds.

package vcsim

import (
	"testing"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// With serial tasks, a task call returns only once its task has ended; the
// simulator's tasks otherwise run after the call returns.
func TestSerialTasksEndBeforeTheirCallReturns(t *testing.T) {
	for _, serial := range []bool{true, false} {
		old := serialTasks
		serialTasks = serial
		s, ctx := startLab(t, Options{ProtectedVMs: 1, ProxyVMs: -1})
		serialTasks = old

		c, err := s.Client(ctx)
		if err != nil {
			t.Fatal(err)
		}
		vms, err := find.NewFinder(c.Client, false).VirtualMachineList(ctx, "/"+DatacenterName+"/vm/...")
		if err != nil || len(vms) == 0 {
			t.Fatalf("VMs: %v %v", vms, err)
		}
		simulator.TaskDelay.Delay = 300
		task, err := vms[0].Reconfigure(ctx, types.VirtualMachineConfigSpec{Annotation: "serial"})
		var info mo.Task
		if err == nil {
			err = property.DefaultCollector(c.Client).RetrieveOne(ctx, task.Reference(), []string{"info.state"}, &info)
		}
		simulator.TaskDelay.Delay = 0
		if err != nil {
			t.Fatal(err)
		}
		done := info.Info.State == types.TaskInfoStateSuccess
		if done != serial {
			t.Errorf("serial=%v: task %s when its call returned", serial, info.Info.State)
		}
		if err := task.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
}
