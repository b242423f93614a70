package controllers

import (
	"fmt"
	"strings"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
)

// lagReasonPrefix starts the reason of a status that comes from the
// achieved lag (see model.LagStatus).
const lagReasonPrefix = model.LagReasonPrefix

// configOwned reports whether the task's status is the reconciler's to set:
// the task has not been handed to the data path yet, or it failed
// configuration.
func configOwned(t *model.VMTask) bool {
	switch t.Status {
	case "", model.StatusPending, model.StatusConfiguring, model.StatusSuccess:
		return true // Success is a disabled policy's outcome: enabling starts over
	case model.StatusError, model.StatusWarning:
		return !strings.HasPrefix(t.Reason, lagReasonPrefix)
	}
	return false
}

// LagStatus applies the policy's RPO thresholds to a reported lag.
func LagStatus(p *model.Policy, lag time.Duration) (model.VMStatus, string) {
	return model.LagStatus(p, lag)
}

// DisabledStatus is a task's outcome once its policy is disabled: Success,
// Warning or Error, with the reason.
func DisabledStatus(t *model.VMTask) (model.VMStatus, string) {
	switch t.Status {
	case model.StatusSuccess, model.StatusSyncing:
		return model.StatusSuccess, ""
	case model.StatusError:
		return model.StatusError, t.Reason
	case model.StatusWarning:
		return model.StatusWarning, t.Reason
	case model.StatusCBT:
		return model.StatusWarning, "disabled while in CBT mode: the replica is behind the source"
	case model.StatusInitialSync:
		return model.StatusWarning, "disabled before the initial sync finished"
	default:
		return model.StatusWarning, "disabled before the VM was configured"
	}
}

// PolicyStatus summarises a policy from its tasks: for a disabled policy the
// worst of Success, Warning and Error; for an enabled one the worst data-path
// status, a configuration or lag problem first. The reason names the VM.
func PolicyStatus(p *model.Policy, tasks []*model.VMTask) (model.VMStatus, string) {
	if len(tasks) == 0 {
		if p.Enabled {
			return model.StatusPending, "no VM configured yet"
		}
		return model.StatusSuccess, ""
	}
	order := []model.VMStatus{model.StatusError, model.StatusWarning, model.StatusCBT,
		model.StatusPending, model.StatusConfiguring, model.StatusInitialSync, model.StatusSyncing, model.StatusSuccess}
	if !p.Enabled {
		order = []model.VMStatus{model.StatusError, model.StatusWarning, model.StatusSuccess}
	}
	worst, reason, n := len(order), "", 0
	for _, t := range tasks {
		st, r := t.Status, t.Reason
		if !p.Enabled {
			st, r = DisabledStatus(t)
		}
		i := len(order) - 1
		for j, o := range order {
			if o == st {
				i = j
				break
			}
		}
		switch {
		case i < worst:
			worst, n = i, 1
			reason = vmReason(t, r)
		case i == worst:
			n++
		}
	}
	st := order[worst]
	if st == model.StatusPending || st == model.StatusConfiguring {
		st = model.StatusInitialSync
	}
	if n > 1 && reason != "" {
		reason = fmt.Sprintf("%s (and %d more VMs)", reason, n-1)
	}
	return st, reason
}

func vmReason(t *model.VMTask, r string) string {
	if r == "" {
		return ""
	}
	name := t.VMName
	if name == "" {
		name = t.VMMoRef
	}
	return name + ": " + r
}
