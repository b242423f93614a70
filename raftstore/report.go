package raftstore

import (
	"fmt"
	"math"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
)

// ComponentHeartbeat records one heartbeat of a filter or proxy together
// with the data-path status of the VMs it reports, as one log entry: a
// component reports every few seconds, and one entry per heartbeat keeps
// the log small however many VMs it serves.
//
// It changes only the component's liveness and addresses and the status
// fields of the tasks it reports (never their planning fields). Reports
// of tasks the state does not have, of disabled policies, or of tasks this
// component no longer serves (a component may run a stale configuration)
// are ignored.
type ComponentHeartbeat struct {
	Kind model.ComponentKind `json:"kind"`
	// ID is the proxy ID, or the host ID ("<vcenter-id>/<moref>") of a
	// filter.
	ID string    `json:"id"`
	At time.Time `json:"at"`
	// Filter addresses, stored on the host when not empty.
	DataAddr  string           `json:"data_addr,omitempty"`
	AdminAddr string           `json:"admin_addr,omitempty"`
	NBDAddr   string           `json:"nbd_addr,omitempty"`
	VMs       []model.VMReport `json:"vms,omitempty"`
}

// Type implements Command.
func (ComponentHeartbeat) Type() CmdType { return CmdComponentHeartbeat }

// HeartbeatResult is what applying a ComponentHeartbeat returns: the IDs of
// the tasks whose status changed.
type HeartbeatResult struct {
	Updated []string `json:"updated,omitempty"`
}

func init() {
	register(applyComponentHeartbeat)
}

// cbtReason is the reason of CBT mode when the filter gives none.
const cbtReason = "changes could not be delivered in time; dirty blocks are tracked and will be resent"

// CheckVMReports validates the VM reports of a heartbeat: the API runs it
// before proposing, the FSM again when applying.
func CheckVMReports(kind model.ComponentKind, vms []model.VMReport) error {
	for i, v := range vms {
		field := fmt.Sprintf("vms[%d]", i)
		if v.TaskID == "" {
			return model.Invalid(field+".task_id", "required")
		}
		switch v.Status {
		case "", model.StatusInitialSync, model.StatusSyncing, model.StatusCBT:
		default:
			return model.Invalid(field+".status", "a component reports %q, %q or %q, not %q",
				model.StatusInitialSync, model.StatusSyncing, model.StatusCBT, v.Status)
		}
		if kind == model.ComponentFilter && v.Status == "" {
			return model.Invalid(field+".status", "a filter reports the status of every VM")
		}
		if v.SyncDoneBytes < 0 || v.SyncTotalBytes < 0 {
			return model.Invalid(field+".sync_done_bytes", "must not be negative")
		}
		if v.LagSeconds < 0 || math.IsNaN(v.LagSeconds) || math.IsInf(v.LagSeconds, 0) {
			return model.Invalid(field+".lag_seconds", "must be a non-negative number")
		}
	}
	return nil
}

// reportable reports whether a task's status may be set by the data path:
// not while the reconciler owns it (not configured yet, a configuration
// error, a disabled policy's outcome).
func reportable(t *model.VMTask) bool {
	switch t.Status {
	case model.StatusConfiguring, model.StatusInitialSync, model.StatusSyncing, model.StatusCBT:
		return true
	case model.StatusWarning, model.StatusError:
		return len(t.Reason) >= len(model.LagReasonPrefix) && t.Reason[:len(model.LagReasonPrefix)] == model.LagReasonPrefix
	}
	return false
}

// syncing reports whether the task is streaming, so that its status
// follows the lag: Syncing, or a Warning or Error the lag caused.
func syncing(t *model.VMTask) bool {
	switch t.Status {
	case model.StatusSyncing:
		return true
	case model.StatusWarning, model.StatusError:
		return reportable(t)
	}
	return false
}

func applyComponentHeartbeat(s *model.State, c ComponentHeartbeat) (any, error) {
	if c.ID == "" {
		return nil, model.Invalid("id", "required")
	}
	if err := CheckVMReports(c.Kind, c.VMs); err != nil {
		return nil, err
	}
	switch c.Kind {
	case model.ComponentProxy:
		old, ok := s.Proxies[c.ID]
		if !ok {
			return nil, model.NotFound("id", "proxy", c.ID)
		}
		p := *old
		p.LastHeartbeat = c.At
		store(s.Proxies, p.ID, p)
	case model.ComponentFilter:
		old, ok := s.Hosts[c.ID]
		if !ok {
			return nil, model.NotFound("id", "host", c.ID)
		}
		h := *old
		h.LastHeartbeat = c.At
		if c.DataAddr != "" {
			h.FilterAddr = c.DataAddr
		}
		if c.AdminAddr != "" {
			h.FilterAdmin = c.AdminAddr
		}
		if c.NBDAddr != "" {
			h.FilterNBD = c.NBDAddr
		}
		store(s.Hosts, h.ID, h)
	default:
		return nil, model.Invalid("kind", "must be %q or %q, got %q", model.ComponentFilter, model.ComponentProxy, c.Kind)
	}
	var res HeartbeatResult
	for _, v := range c.VMs {
		old, ok := s.Tasks[v.TaskID]
		if !ok || !reportable(old) {
			continue
		}
		p, ok := s.Policies[old.PolicyID]
		if !ok || !p.Enabled {
			continue
		}
		t := *old
		switch c.Kind {
		case model.ComponentFilter:
			// Only the source filter sees the VM's writes and sync progress.
			if t.SourceHost != c.ID && hostID(p.VCenterID, t.SourceHost) != c.ID {
				continue
			}
			t.Status, t.Reason = v.Status, v.Reason
			t.SyncDoneBytes, t.SyncTotalBytes = v.SyncDoneBytes, v.SyncTotalBytes
			switch v.Status {
			case model.StatusSyncing:
				t.Status, t.Reason = model.LagStatus(p, time.Duration(t.LagSeconds*float64(time.Second)))
			case model.StatusCBT:
				if t.Reason == "" {
					t.Reason = cbtReason
				}
			}
		case model.ComponentProxy:
			// Only the source proxy measures the write-to-durable lag.
			if t.SourceProxy != c.ID {
				continue
			}
			t.LagSeconds = v.LagSeconds
			if !v.LastPointAt.IsZero() {
				t.LastPointAt = v.LastPointAt
			}
			if syncing(&t) {
				t.Status, t.Reason = model.LagStatus(p, time.Duration(t.LagSeconds*float64(time.Second)))
			}
		}
		if t.Status == old.Status && t.Reason == old.Reason && t.SyncDoneBytes == old.SyncDoneBytes &&
			t.SyncTotalBytes == old.SyncTotalBytes && t.LagSeconds == old.LagSeconds && t.LastPointAt.Equal(old.LastPointAt) {
			continue
		}
		t.UpdatedAt = c.At
		store(s.Tasks, t.ID, t)
		res.Updated = append(res.Updated, t.ID)
	}
	return res, nil
}

// hostID turns a task's host reference ("<vcenter-id>/<moref>" or a bare
// MoRef of the policy's vCenter) into a host ID.
func hostID(vcenterID, ref string) string {
	if ref == "" {
		return ""
	}
	for i := 0; i < len(ref); i++ {
		if ref[i] == '/' {
			return ref
		}
	}
	return vcenterID + "/" + ref
}
