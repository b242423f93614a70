package raftstore

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
)

// heartbeatFSM holds a policy with thresholds, a source and a target host,
// two proxies and three tasks in different hands.
func heartbeatFSM(t *testing.T) *FSM {
	t.Helper()
	f := NewFSM(nil)
	p := testPolicy("p1", "gold", "vc1")
	p.RPOWarning, p.RPOError = model.Duration(10*time.Second), model.Duration(30*time.Second)
	off := testPolicy("p2", "off", "vc1")
	off.Enabled = false
	planned := model.VMTask{PolicyID: "p1", SourceHost: "vc1/host-1", TargetHost: "host-2", SourceProxy: "px1", TargetProxy: "px2",
		ReplicaID: "vc1/vm-99", Disks: []model.DiskMap{{Key: 2000, CapacityBytes: 1 << 20}}, Generation: 4, Status: model.StatusInitialSync, UpdatedAt: t0}
	for _, c := range []Command{
		PutVCenter{VCenter: testVCenter("vc1", "one"), Create: true},
		PutProxy{Proxy: testProxy("px1", "src"), Create: true},
		PutProxy{Proxy: testProxy("px2", "dst"), Create: true},
		PutHost{Host: model.Host{ID: "vc1/host-1", VCenterID: "vc1", MoRef: "host-1", Name: "esx1"}},
		PutHost{Host: model.Host{ID: "vc1/host-2", VCenterID: "vc1", MoRef: "host-2", Name: "esx2"}},
		PutPolicy{Policy: p, Create: true},
		PutPolicy{Policy: off, Create: true},
		PutTask{Task: with(planned, func(t *model.VMTask) { t.ID = "p1/vm-1"; t.VMMoRef = "vm-1" })},
		PutTask{Task: with(planned, func(t *model.VMTask) {
			t.ID, t.Status, t.Reason = "p1/vm-2", model.StatusError, "no source proxy is available"
		})},
		PutTask{Task: with(planned, func(t *model.VMTask) { t.ID, t.PolicyID, t.Status = "p2/vm-1", "p2", model.StatusSuccess })},
	} {
		if res := applyLog(t, f, c); res.Err != nil {
			t.Fatalf("%T: %v", c, res.Err)
		}
	}
	return f
}

func with(t model.VMTask, mut func(*model.VMTask)) model.VMTask {
	t.Disks = slices.Clone(t.Disks)
	mut(&t)
	return t
}

func task(f *FSM, id string) model.VMTask {
	var t model.VMTask
	f.Read(func(s *model.State) { t = *s.Tasks[id] })
	return t
}

// A heartbeat updates the component and the status fields of the tasks it
// serves, and nothing of their planning; lag turns Syncing into Warning or
// Error by the policy's thresholds, in whichever order the filter's and the
// proxy's reports arrive.
func TestComponentHeartbeatUpdatesStatus(t *testing.T) {
	f := heartbeatFSM(t)
	before := task(f, "p1/vm-1")
	at := t0.Add(time.Minute)
	res := applyLog(t, f, ComponentHeartbeat{Kind: model.ComponentFilter, ID: "vc1/host-1", At: at,
		DataAddr: "127.0.0.1:7001", AdminAddr: "127.0.0.1:7002", NBDAddr: "127.0.0.1:10809",
		VMs: []model.VMReport{
			{TaskID: "p1/vm-1", VM: "vm-1", Status: model.StatusInitialSync, SyncDoneBytes: 10, SyncTotalBytes: 100},
			{TaskID: "p1/vm-2", Status: model.StatusSyncing}, // a configuration error stays
			{TaskID: "p2/vm-1", Status: model.StatusSyncing}, // disabled policy: ignored
			{TaskID: "p9/vm-1", Status: model.StatusSyncing}, // unknown: ignored
		}})
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	if got := res.Value.(HeartbeatResult).Updated; !slices.Equal(got, []string{"p1/vm-1"}) {
		t.Fatalf("updated %v", got)
	}
	var h model.Host
	f.Read(func(s *model.State) { h = *s.Hosts["vc1/host-1"] })
	if !h.LastHeartbeat.Equal(at) || h.FilterAddr != "127.0.0.1:7001" || h.FilterAdmin != "127.0.0.1:7002" || h.FilterNBD != "127.0.0.1:10809" || h.Name != "esx1" {
		t.Fatalf("host after heartbeat: %+v", h)
	}
	got := task(f, "p1/vm-1")
	if got.Status != model.StatusInitialSync || got.SyncDoneBytes != 10 || got.SyncTotalBytes != 100 || !got.UpdatedAt.Equal(at) {
		t.Fatalf("task after the filter's report: %+v", got)
	}
	planning := func(t model.VMTask) model.VMTask {
		t.Status, t.Reason, t.SyncDoneBytes, t.SyncTotalBytes, t.LagSeconds, t.LastPointAt, t.UpdatedAt = "", "", 0, 0, 0, time.Time{}, time.Time{}
		return t
	}
	if !equalTasks(planning(got), planning(before)) {
		t.Fatalf("planning fields changed:\n%+v\n%+v", got, before)
	}
	if task(f, "p1/vm-2").Status != model.StatusError || task(f, "p2/vm-1").Status != model.StatusSuccess {
		t.Fatal("a report replaced a status the reconciler owns")
	}

	// The proxy's lag comes first, then the filter says Syncing: Warning.
	point := t0.Add(50 * time.Second)
	applyOK(t, f, ComponentHeartbeat{Kind: model.ComponentProxy, ID: "px1", At: at, VMs: []model.VMReport{{TaskID: "p1/vm-1", LagSeconds: 12, LastPointAt: point}}})
	if got := task(f, "p1/vm-1"); got.Status != model.StatusInitialSync || got.LagSeconds != 12 || !got.LastPointAt.Equal(point) {
		t.Fatalf("lag during initial sync: %+v", got)
	}
	applyOK(t, f, ComponentHeartbeat{Kind: model.ComponentFilter, ID: "vc1/host-1", At: at, VMs: []model.VMReport{{TaskID: "p1/vm-1", Status: model.StatusSyncing, SyncDoneBytes: 100, SyncTotalBytes: 100}}})
	if got := task(f, "p1/vm-1"); got.Status != model.StatusWarning || !strings.HasPrefix(got.Reason, model.LagReasonPrefix) {
		t.Fatalf("syncing with a 12s lag: %s %q", got.Status, got.Reason)
	}
	// Lag above the error threshold, then back to normal.
	applyOK(t, f, ComponentHeartbeat{Kind: model.ComponentProxy, ID: "px1", At: at, VMs: []model.VMReport{{TaskID: "p1/vm-1", LagSeconds: 31}}})
	if got := task(f, "p1/vm-1"); got.Status != model.StatusError || !got.LastPointAt.Equal(point) {
		t.Fatalf("31s lag: %+v", got)
	}
	applyOK(t, f, ComponentHeartbeat{Kind: model.ComponentProxy, ID: "px1", At: at, VMs: []model.VMReport{{TaskID: "p1/vm-1", LagSeconds: 1}}})
	if got := task(f, "p1/vm-1"); got.Status != model.StatusSyncing || got.Reason != "" {
		t.Fatalf("1s lag: %s %q", got.Status, got.Reason)
	}
	// CBT mode without a reason gets one.
	applyOK(t, f, ComponentHeartbeat{Kind: model.ComponentFilter, ID: "vc1/host-1", At: at, VMs: []model.VMReport{{TaskID: "p1/vm-1", Status: model.StatusCBT}}})
	if got := task(f, "p1/vm-1"); got.Status != model.StatusCBT || got.Reason == "" {
		t.Fatalf("CBT: %s %q", got.Status, got.Reason)
	}

	// A component that no longer serves the task (stale configuration)
	// changes nothing of it: the target host, the target proxy.
	snap := fsmBytes(t, f)
	for _, c := range []ComponentHeartbeat{
		{Kind: model.ComponentFilter, ID: "vc1/host-2", At: at, VMs: []model.VMReport{{TaskID: "p1/vm-1", Status: model.StatusSyncing}}},
		{Kind: model.ComponentProxy, ID: "px2", At: at, VMs: []model.VMReport{{TaskID: "p1/vm-1", LagSeconds: 99}}},
	} {
		if res := applyLog(t, f, c); res.Err != nil || len(res.Value.(HeartbeatResult).Updated) != 0 {
			t.Fatalf("%s %s: %v %+v", c.Kind, c.ID, res.Err, res.Value)
		}
	}
	if task(f, "p1/vm-1").Status != model.StatusCBT {
		t.Fatal("a stale component changed the task")
	}
	if bytes.Equal(snap, fsmBytes(t, f)) {
		t.Fatal("the heartbeats themselves were not recorded")
	}
}

func equalTasks(a, b model.VMTask) bool {
	return a.ID == b.ID && a.PolicyID == b.PolicyID && a.SourceHost == b.SourceHost && a.TargetHost == b.TargetHost &&
		a.SourceProxy == b.SourceProxy && a.TargetProxy == b.TargetProxy && a.ReplicaID == b.ReplicaID &&
		slices.Equal(a.Disks, b.Disks) && a.Generation == b.Generation && a.VMMoRef == b.VMMoRef
}

func applyOK(t *testing.T, f *FSM, c Command) {
	t.Helper()
	if res := applyLog(t, f, c); res.Err != nil {
		t.Fatalf("%T: %v", c, res.Err)
	}
}

// A heartbeat from an unknown component or with a bad report fails with the
// field named and changes nothing, not even the liveness.
func TestComponentHeartbeatRefusals(t *testing.T) {
	f := heartbeatFSM(t)
	for _, tc := range []struct {
		cmd   ComponentHeartbeat
		is    error
		field string
	}{
		{ComponentHeartbeat{Kind: model.ComponentProxy, ID: "px9", At: t0}, model.ErrNotFound, "id"},
		{ComponentHeartbeat{Kind: model.ComponentFilter, ID: "host-1", At: t0}, model.ErrNotFound, "id"},
		{ComponentHeartbeat{Kind: "coordinator", ID: "px1", At: t0}, model.ErrInvalid, "kind"},
		{ComponentHeartbeat{Kind: model.ComponentProxy, At: t0}, model.ErrInvalid, "id"},
		{ComponentHeartbeat{Kind: model.ComponentFilter, ID: "vc1/host-1", At: t0, VMs: []model.VMReport{{TaskID: "p1/vm-1", Status: model.StatusSuccess}}}, model.ErrInvalid, "vms[0].status"},
		{ComponentHeartbeat{Kind: model.ComponentFilter, ID: "vc1/host-1", At: t0, VMs: []model.VMReport{{TaskID: "p1/vm-1"}}}, model.ErrInvalid, "vms[0].status"},
		{ComponentHeartbeat{Kind: model.ComponentProxy, ID: "px1", At: t0, VMs: []model.VMReport{{TaskID: "p1/vm-1"}, {TaskID: ""}}}, model.ErrInvalid, "vms[1].task_id"},
		{ComponentHeartbeat{Kind: model.ComponentProxy, ID: "px1", At: t0, VMs: []model.VMReport{{TaskID: "p1/vm-1", LagSeconds: -1}}}, model.ErrInvalid, "vms[0].lag_seconds"},
		{ComponentHeartbeat{Kind: model.ComponentFilter, ID: "vc1/host-1", At: t0, VMs: []model.VMReport{{TaskID: "p1/vm-1", Status: model.StatusSyncing, SyncDoneBytes: -5}}}, model.ErrInvalid, "vms[0].sync_done_bytes"},
	} {
		before := fsmBytes(t, f)
		res := applyLog(t, f, tc.cmd)
		if !errors.Is(res.Err, tc.is) || model.ErrorField(res.Err) != tc.field {
			t.Errorf("%+v: error %v (field %q), want %v on %q", tc.cmd, res.Err, model.ErrorField(res.Err), tc.is, tc.field)
		}
		if !bytes.Equal(before, fsmBytes(t, f)) {
			t.Errorf("%+v changed the state", tc.cmd)
		}
	}
}

// The state a heartbeat leaves survives a snapshot and restore.
func TestComponentHeartbeatSnapshot(t *testing.T) {
	f := heartbeatFSM(t)
	applyOK(t, f, ComponentHeartbeat{Kind: model.ComponentFilter, ID: "vc1/host-1", At: t0.Add(time.Hour), DataAddr: "127.0.0.1:7001",
		VMs: []model.VMReport{{TaskID: "p1/vm-1", Status: model.StatusCBT, Reason: "buffer full"}}})
	applyOK(t, f, ComponentHeartbeat{Kind: model.ComponentProxy, ID: "px1", At: t0.Add(time.Hour), VMs: []model.VMReport{{TaskID: "p1/vm-1", LagSeconds: 3.5, LastPointAt: t0}}})
	g := persistRestore(t, snapshotOf(t, f))
	if !bytes.Equal(fsmBytes(t, f), fsmBytes(t, g)) {
		t.Fatal("restored state differs")
	}
	if got := task(g, "p1/vm-1"); got.Status != model.StatusCBT || got.Reason != "buffer full" || got.LagSeconds != 3.5 {
		t.Fatalf("restored task: %+v", got)
	}
}

// PutTasks leaves the state as the same PutTask commands one by one would;
// one bad task (no ID, no such policy) makes it change nothing.
func TestPutTasksIsManyPutTask(t *testing.T) {
	tasks := []model.VMTask{
		{ID: "p1/vm-5", PolicyID: "p1", VMMoRef: "vm-5", Status: model.StatusPending, UpdatedAt: t0},
		{ID: "p1/vm-6", PolicyID: "p1", VMMoRef: "vm-6", Disks: []model.DiskMap{{Key: 2000, CapacityBytes: 1 << 20}}, UpdatedAt: t0},
		// Replaces a task of heartbeatFSM, and a later element wins.
		{ID: "p1/vm-1", PolicyID: "p1", VMMoRef: "vm-1", Status: model.StatusPending, UpdatedAt: t0},
		{ID: "p1/vm-5", PolicyID: "p1", VMMoRef: "vm-5", Status: model.StatusError, Reason: "later", UpdatedAt: t0},
	}
	one, batch := heartbeatFSM(t), heartbeatFSM(t)
	for _, tk := range tasks {
		if res := applyLog(t, one, PutTask{Task: tk}); res.Err != nil {
			t.Fatal(res.Err)
		}
	}
	if res := applyLog(t, batch, PutTasks{Tasks: tasks}); res.Err != nil {
		t.Fatal(res.Err)
	}
	snap := func(f *FSM) string {
		var b []byte
		f.Read(func(s *model.State) {
			var err error
			if b, err = json.Marshal(s); err != nil {
				t.Fatal(err)
			}
		})
		return string(b)
	}
	if snap(one) != snap(batch) {
		t.Fatal("PutTasks left another state than the same PutTask commands")
	}
	before := snap(batch)
	for _, bad := range [][]model.VMTask{
		{{ID: "p1/vm-7", PolicyID: "p1"}, {PolicyID: "p1"}},
		{{ID: "p1/vm-7", PolicyID: "p1"}, {ID: "p9/vm-1", PolicyID: "p9"}},
	} {
		res := applyLog(t, batch, PutTasks{Tasks: bad})
		if res.Err == nil {
			t.Fatalf("bad batch %+v accepted", bad)
		}
		if snap(batch) != before {
			t.Fatalf("refused batch %+v changed the state", bad)
		}
	}
}
