package controllers

import (
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
)

// After a loss of quorum every heartbeat in the state is old; a new leader
// waits for the components in use that were alive when the outage began,
// and not for those that were dead already or that nothing uses.
func TestAwaitedComponent(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	start := t0.Add(60 * time.Second) // leader elected after a 60 s outage
	timeout := 15 * time.Second
	state := func() *model.State {
		return &model.State{
			Policies: map[string]*model.Policy{
				"p": {ID: "p", Enabled: true},
				"q": {ID: "q", Enabled: false},
			},
			Proxies: map[string]*model.Proxy{
				"src":  {ID: "src", Name: "src", LastHeartbeat: t0},
				"dst":  {ID: "dst", Name: "dst", LastHeartbeat: t0.Add(-time.Second)},
				"gone": {ID: "gone", Name: "gone", LastHeartbeat: t0.Add(-time.Hour)},
				"idle": {ID: "idle", Name: "idle", LastHeartbeat: t0},
			},
			Hosts: map[string]*model.Host{
				"vc/h1": {ID: "vc/h1", Name: "h1", LastHeartbeat: t0},
				"vc/h2": {ID: "vc/h2", Name: "h2", LastHeartbeat: t0},
			},
			Tasks: map[string]*model.VMTask{
				"p/vm-1": {ID: "p/vm-1", PolicyID: "p", SourceProxy: "src", TargetProxy: "dst", SourceHost: "vc/h1", TargetHost: "vc/h2"},
				"q/vm-2": {ID: "q/vm-2", PolicyID: "q", SourceProxy: "idle", TargetProxy: "idle"},
			},
		}
	}

	s := state()
	ref := newestHeartbeat(s)
	if got := awaitedComponent(s, start, ref, timeout); got == "" {
		t.Fatal("nothing awaited right after the outage, want the components of p/vm-1")
	}
	// Each component of the task reports to the new leader in turn.
	s.Proxies["src"].LastHeartbeat = start.Add(time.Second)
	s.Proxies["dst"].LastHeartbeat = start.Add(time.Second)
	if got := awaitedComponent(s, start, ref, timeout); got != "filter of host h1" && got != "filter of host h2" {
		t.Fatalf("awaited %q, want a filter of the task", got)
	}
	s.Hosts["vc/h1"].LastHeartbeat = start.Add(2 * time.Second)
	s.Hosts["vc/h2"].LastHeartbeat = start.Add(2 * time.Second)
	if got := awaitedComponent(s, start, ref, timeout); got != "" {
		t.Fatalf("awaited %q after every component of the enabled policy reported", got)
	}

	// A proxy that was dead long before the outage is not awaited.
	s = state()
	s.Tasks["p/vm-1"].SourceProxy = "gone"
	s.Proxies["dst"].LastHeartbeat = start
	s.Hosts["vc/h1"].LastHeartbeat = start
	s.Hosts["vc/h2"].LastHeartbeat = start
	ref = t0
	if got := awaitedComponent(s, start, ref, timeout); got != "" {
		t.Fatalf("awaited %q, a proxy dead before the outage", got)
	}
}
