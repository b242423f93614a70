package vcsim

import (
	"testing"

	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25/mo"
)

// The lab is built one VM at a time, so a restarted lab (a new simulator
// on the same directory) gives every VM the MoRef it had: the
// coordinators key tasks and replicas by MoRef.
func TestLabMoRefsStableAcrossStarts(t *testing.T) {
	morefs := func() map[string]string {
		s, ctx := startLab(t, Options{})
		defer s.Close()
		c, err := s.Client(ctx)
		if err != nil {
			t.Fatal(err)
		}
		v, err := view.NewManager(c.Client).CreateContainerView(ctx, c.ServiceContent.RootFolder, []string{"VirtualMachine"}, true)
		if err != nil {
			t.Fatal(err)
		}
		var vms []mo.VirtualMachine
		if err := v.Retrieve(ctx, []string{"VirtualMachine"}, []string{"name"}, &vms); err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, vm := range vms {
			out[vm.Name] = vm.Self.Value
		}
		return out
	}
	first, second := morefs(), morefs()
	if len(first) == 0 || len(first) != len(second) {
		t.Fatalf("VMs: %d then %d", len(first), len(second))
	}
	for name, ref := range first {
		if second[name] != ref {
			t.Errorf("%s: %s, then %s after a restart", name, ref, second[name])
		}
	}
}
