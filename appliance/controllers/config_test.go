package controllers

import (
	"bytes"
	"reflect"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
)

// configState: policy p1 (enabled) protects vm-1 from host-1 to host-2
// through proxies px1 and px2; vm-2 is not configured yet; policy p2 is
// disabled; a traffic rule applies to everything.
func configState() *model.State {
	st := model.NewState()
	st.Proxies["px1"] = &model.Proxy{ID: "px1", Name: "src", Address: "10.0.0.1:7100"}
	st.Proxies["px2"] = &model.Proxy{ID: "px2", Name: "dst", Address: "10.0.1.1:7100"}
	st.Proxies["px3"] = &model.Proxy{ID: "px3", Name: "idle", Address: "10.0.2.1:7100"}
	st.Hosts["vc1/host-1"] = &model.Host{ID: "vc1/host-1", VCenterID: "vc1", MoRef: "host-1", FilterAddr: "10.0.0.5:7200"}
	st.Hosts["vc1/host-2"] = &model.Host{ID: "vc1/host-2", VCenterID: "vc1", MoRef: "host-2", FilterAddr: "10.0.1.5:7200"}
	pol := &model.Policy{ID: "p1", Name: "gold", Enabled: true, VCenterID: "vc1", Target: model.Target{VCenterID: "vc1"},
		RPO: model.Duration(15 * time.Second), ShortTermRetention: model.Duration(time.Hour), LongTermRetention: model.Duration(48 * time.Hour)}
	st.Policies["p1"] = pol
	off := *pol
	off.ID, off.Name, off.Enabled = "p2", "off", false
	st.Policies["p2"] = &off
	st.Tasks["p1/vm-1"] = &model.VMTask{ID: "p1/vm-1", PolicyID: "p1", VMMoRef: "vm-1", VMName: "web", SourceHost: "vc1/host-1",
		TargetHost: "host-2", SourceProxy: "px1", TargetProxy: "px2", Disks: []model.DiskMap{{Key: 2000, CapacityBytes: 1 << 30}},
		Status: model.StatusSyncing, LagSeconds: 2}
	st.Tasks["p1/vm-2"] = &model.VMTask{ID: "p1/vm-2", PolicyID: "p1", VMMoRef: "vm-2", SourceHost: "vc1/host-1", Status: model.StatusConfiguring}
	st.Tasks["p2/vm-3"] = &model.VMTask{ID: "p2/vm-3", PolicyID: "p2", VMMoRef: "vm-3", SourceHost: "vc1/host-1",
		TargetHost: "vc1/host-2", SourceProxy: "px1", TargetProxy: "px2"}
	st.TrafficRules["tr2"] = &model.TrafficRule{ID: "tr2", Name: "b", SourceCIDR: "0.0.0.0/0", TargetCIDR: "0.0.0.0/0", Encrypt: true}
	st.TrafficRules["tr1"] = &model.TrafficRule{ID: "tr1", Name: "a", SourceCIDR: "10.0.0.0/8", TargetCIDR: "10.0.0.0/8", ThrottleBytesPerSec: 1 << 20}
	return st
}

func TestComponentConfigContent(t *testing.T) {
	st := configState()
	keys := DeriveKeys(bytes.Repeat([]byte{7}, 32))
	want := model.TaskPath{TaskID: "p1/vm-1", PolicyID: "p1", VM: "web", RPO: model.Duration(15 * time.Second),
		ShortTermRetention: model.Duration(time.Hour), LongTermRetention: model.Duration(48 * time.Hour),
		SourceHost: "host-1", TargetHost: "host-2", SourceProxy: "10.0.0.1:7100", TargetProxy: "10.0.1.1:7100", TargetFilter: "10.0.1.5:7200"}
	for _, who := range []struct {
		kind model.ComponentKind
		id   string
	}{
		{model.ComponentFilter, "vc1/host-1"}, {model.ComponentFilter, "vc1/host-2"},
		{model.ComponentProxy, "px1"}, {model.ComponentProxy, "px2"},
	} {
		cfg := ComponentConfig(st, who.kind, who.id, keys)
		if cfg.Kind != who.kind || cfg.ID != who.id || len(cfg.Tasks) != 1 || cfg.Version == "" {
			t.Fatalf("%s %s: %+v", who.kind, who.id, cfg)
		}
		got := cfg.Tasks[0]
		if !bytes.Equal(got.Key, keys("p1/vm-1")) || len(got.Key) != 32 {
			t.Fatalf("%s: key %x", who.id, got.Key)
		}
		if len(got.Disks) != 1 || got.Disks[0].Key != 2000 || len(got.Rules) != 2 || got.Rules[0].ID != "tr1" || got.Rules[1].ID != "tr2" {
			t.Fatalf("%s: disks %+v rules %+v", who.id, got.Disks, got.Rules)
		}
		got.Key, got.Disks, got.Rules = nil, nil, nil
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: task path\n%+v\nwant\n%+v", who.id, got, want)
		}
	}
	for _, who := range []struct {
		kind model.ComponentKind
		id   string
	}{
		{model.ComponentProxy, "px3"}, {model.ComponentFilter, "vc1/host-9"}, {model.ComponentFilter, "host-1"}, {"coordinator", "px1"},
	} {
		if cfg := ComponentConfig(st, who.kind, who.id, keys); len(cfg.Tasks) != 0 || cfg.Tasks == nil {
			t.Fatalf("%s %s gets %+v", who.kind, who.id, cfg.Tasks)
		}
	}
}

// The version changes exactly when something the component runs does:
// not for status, lag or heartbeats, but for an address, a rule, the RPO,
// a disk, or a task coming or going.
func TestComponentConfigVersion(t *testing.T) {
	keys := DeriveKeys(bytes.Repeat([]byte{7}, 32))
	base := ComponentConfig(configState(), model.ComponentProxy, "px1", keys)
	if again := ComponentConfig(configState(), model.ComponentProxy, "px1", keys); !reflect.DeepEqual(again, base) {
		t.Fatal("the same state gives another config")
	}
	same := []func(st *model.State){
		func(st *model.State) {
			st.Tasks["p1/vm-1"].Status, st.Tasks["p1/vm-1"].LagSeconds = model.StatusCBT, 99
		},
		func(st *model.State) { st.Proxies["px1"].LastHeartbeat = time.Now() },
		func(st *model.State) { st.Hosts["vc1/host-2"].LastHeartbeat = time.Now() },
		func(st *model.State) { st.Policies["p1"].RPOWarning = model.Duration(time.Minute) },
	}
	for i, mut := range same {
		st := configState()
		mut(st)
		if v := ComponentConfig(st, model.ComponentProxy, "px1", keys).Version; v != base.Version {
			t.Errorf("unchanged config %d has a new version", i)
		}
	}
	changed := []func(st *model.State){
		func(st *model.State) { st.Proxies["px2"].Address = "10.0.1.2:7100" },
		func(st *model.State) { st.Hosts["vc1/host-2"].FilterAddr = "10.0.1.6:7200" },
		func(st *model.State) { st.TrafficRules["tr1"].Encrypt = true },
		func(st *model.State) { delete(st.TrafficRules, "tr2") },
		func(st *model.State) { st.Policies["p1"].RPO = model.Duration(30 * time.Second) },
		func(st *model.State) {
			st.Tasks["p1/vm-1"].Disks = append(st.Tasks["p1/vm-1"].Disks, model.DiskMap{Key: 2001})
		},
		func(st *model.State) { st.Policies["p1"].Enabled = false },
		func(st *model.State) { st.Policies["p2"].Enabled = true },
		func(st *model.State) { st.Tasks["p1/vm-1"].SourceProxy = "px3" },
	}
	for i, mut := range changed {
		st := configState()
		mut(st)
		if v := ComponentConfig(st, model.ComponentProxy, "px1", keys).Version; v == base.Version {
			t.Errorf("changed config %d keeps its version", i)
		}
	}
	// Another cluster key gives other keys, hence another version.
	if v := ComponentConfig(configState(), model.ComponentProxy, "px1", DeriveKeys(bytes.Repeat([]byte{8}, 32))).Version; v == base.Version {
		t.Error("new keys keep the version")
	}
	// Tasks come in ID order.
	st := configState()
	st.Tasks["p1/vm-0"] = &model.VMTask{ID: "p1/vm-0", PolicyID: "p1", VMMoRef: "vm-0", SourceHost: "host-1", TargetHost: "host-2", SourceProxy: "px1", TargetProxy: "px2"}
	cfg := ComponentConfig(st, model.ComponentFilter, "vc1/host-1", nil)
	if len(cfg.Tasks) != 2 || cfg.Tasks[0].TaskID != "p1/vm-0" || cfg.Tasks[1].TaskID != "p1/vm-1" || cfg.Tasks[0].Key != nil {
		t.Fatalf("order or keys: %+v", cfg.Tasks)
	}
}
