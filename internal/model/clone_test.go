package model

import (
	"reflect"
	"testing"
	"time"
)

func TestStateCloneSharesNothing(t *testing.T) {
	s := NewState()
	s.VCenters["vc"] = &VCenter{ID: "vc", Name: "vc", PasswordSealed: []byte{1, 2, 3}}
	s.Policies["p"] = &Policy{ID: "p", VMs: []VMRef{{MoRef: "vm-1"}}, SourceProxies: []string{"a"}, TargetProxies: []string{"b"}, RPO: Duration(time.Second)}
	s.Tasks["t"] = &VMTask{ID: "t", Disks: []DiskMap{{Key: 1}}}
	s.Replicas["r"] = &Replica{ID: "r", Disks: []DiskMap{{Key: 2}}}
	s.Tenants["tn"] = &Tenant{ID: "tn", KeySealed: []byte{9}}
	s.Coordinators["n1"] = &Coordinator{ID: "n1"}

	c := s.Clone()
	if !reflect.DeepEqual(c, s) {
		t.Fatalf("clone differs from the original")
	}
	c.VCenters["vc"].PasswordSealed[0] = 0
	c.Policies["p"].VMs[0].MoRef = "x"
	c.Policies["p"].SourceProxies[0] = "x"
	c.Policies["p"].TargetProxies[0] = "x"
	c.Tasks["t"].Disks[0].Key = 0
	c.Replicas["r"].Disks[0].Key = 0
	c.Tenants["tn"].KeySealed[0] = 0
	c.Coordinators["n1"].APIAddr = "changed"
	delete(c.Proxies, "none")
	c.Hosts["h"] = &Host{ID: "h"}

	if s.VCenters["vc"].PasswordSealed[0] != 1 || s.Policies["p"].VMs[0].MoRef != "vm-1" ||
		s.Policies["p"].SourceProxies[0] != "a" || s.Policies["p"].TargetProxies[0] != "b" ||
		s.Tasks["t"].Disks[0].Key != 1 || s.Replicas["r"].Disks[0].Key != 2 ||
		s.Tenants["tn"].KeySealed[0] != 9 || s.Coordinators["n1"].APIAddr != "" || len(s.Hosts) != 0 {
		t.Fatalf("changing the clone changed the original")
	}
}

// TestCloneKnowsEveryReferenceField fails when a type gains a slice, map or
// pointer field that Clone does not copy yet.
func TestCloneKnowsEveryReferenceField(t *testing.T) {
	known := map[string]bool{
		"VCenter.PasswordSealed": true, "VCDServer.PasswordSealed": true,
		"Policy.VMs": true, "Policy.SourceProxies": true, "Policy.TargetProxies": true,
		"VMTask.Disks": true, "Replica.Disks": true, "Tenant.KeySealed": true,
	}
	st := reflect.TypeOf(State{})
	for i := range st.NumField() {
		elem := st.Field(i).Type.Elem().Elem() // map[string]*T -> T
		for j := range elem.NumField() {
			f := elem.Field(j)
			switch f.Type.Kind() {
			case reflect.Slice, reflect.Map, reflect.Pointer, reflect.Interface:
				if name := elem.Name() + "." + f.Name; !known[name] {
					t.Errorf("%s is a reference field that Clone does not deep-copy", name)
				}
			}
		}
	}
}
