package controllers

import (
	"strings"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
)

func TestLagStatus(t *testing.T) {
	p := &model.Policy{RPOWarning: model.Duration(30 * time.Second), RPOError: model.Duration(time.Minute)}
	for _, tc := range []struct {
		lag  time.Duration
		want model.VMStatus
	}{{5 * time.Second, model.StatusSyncing}, {30 * time.Second, model.StatusSyncing}, {31 * time.Second, model.StatusWarning}, {2 * time.Minute, model.StatusError}} {
		st, reason := LagStatus(p, tc.lag)
		if st != tc.want {
			t.Errorf("lag %s: %s, want %s", tc.lag, st, tc.want)
		}
		if (st != model.StatusSyncing) != (reason != "") {
			t.Errorf("lag %s: status %s with reason %q", tc.lag, st, reason)
		}
	}
	if st, _ := LagStatus(&model.Policy{}, time.Hour); st != model.StatusSyncing {
		t.Errorf("no thresholds: %s", st)
	}
}

func TestDisabledAndPolicyStatus(t *testing.T) {
	task := func(vm string, st model.VMStatus, reason string) *model.VMTask {
		return &model.VMTask{ID: "p/" + vm, VMName: vm, Status: st, Reason: reason}
	}
	cases := []struct {
		name    string
		enabled bool
		tasks   []*model.VMTask
		want    model.VMStatus
		reason  string
	}{
		{"disabled all synced", false, []*model.VMTask{task("a", model.StatusSyncing, ""), task("b", model.StatusSuccess, "")}, model.StatusSuccess, ""},
		{"disabled one in CBT", false, []*model.VMTask{task("a", model.StatusSyncing, ""), task("b", model.StatusCBT, "")}, model.StatusWarning, "b: disabled while in CBT mode"},
		{"disabled during initial sync", false, []*model.VMTask{task("a", model.StatusInitialSync, "")}, model.StatusWarning, "a: disabled before the initial sync"},
		{"disabled with an error", false, []*model.VMTask{task("a", model.StatusCBT, ""), task("b", model.StatusError, "VM gone")}, model.StatusError, "b: VM gone"},
		{"enabled syncing", true, []*model.VMTask{task("a", model.StatusSyncing, ""), task("b", model.StatusSyncing, "")}, model.StatusSyncing, ""},
		{"enabled one initial sync", true, []*model.VMTask{task("a", model.StatusSyncing, ""), task("b", model.StatusInitialSync, "")}, model.StatusInitialSync, ""},
		{"enabled pending counts as initial sync", true, []*model.VMTask{task("a", model.StatusPending, "")}, model.StatusInitialSync, ""},
		{"enabled CBT", true, []*model.VMTask{task("a", model.StatusSyncing, ""), task("b", model.StatusCBT, "tracking")}, model.StatusCBT, "b: tracking"},
		{"enabled errors counted", true, []*model.VMTask{task("a", model.StatusError, "x"), task("b", model.StatusError, "y"), task("c", model.StatusSyncing, "")}, model.StatusError, "(and 1 more VMs)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st, reason := PolicyStatus(&model.Policy{Enabled: tc.enabled}, tc.tasks)
			if st != tc.want || !strings.Contains(reason, tc.reason) {
				t.Fatalf("got %s %q, want %s containing %q", st, reason, tc.want, tc.reason)
			}
		})
	}
	if st, _ := PolicyStatus(&model.Policy{Enabled: true}, nil); st != model.StatusPending {
		t.Errorf("no tasks: %s", st)
	}
}
