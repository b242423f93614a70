package controllers

import (
	"context"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/vsphere"
)

// watch follows a source vCenter's change feed and queues the policies a
// change concerns. The reconcile is level-based: it re-reads vCenter and
// finds the added disk, the new host or the missing VM itself.
func (r *PolicyReconciler) watch(ctx context.Context, q *queue, vcID string) {
	backoff := r.cfg.BackoffBase
	for ctx.Err() == nil {
		vc, err := r.cfg.Inventories(ctx, vcID)
		if err == nil {
			err = vc.Watch(ctx, func(c vsphere.Change) { r.onChange(q, vcID, c) })
		}
		if ctx.Err() != nil {
			return
		}
		r.log.Info("vCenter change feed stopped; restarting", "vcenter", vcID, "err", err, "after", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, r.cfg.BackoffMax)
	}
}

func (r *PolicyReconciler) onChange(q *queue, vcID string, c vsphere.Change) {
	var ids []string
	r.cfg.Store.Read(func(s *model.State) {
		for _, p := range s.Policies {
			if p.VCenterID != vcID || !p.Enabled {
				continue
			}
			hit := c.Kind == vsphere.Synced // everything may have changed while unwatched
			for _, ref := range p.VMs {
				if ref.MoRef == c.VM || (ref.MoRef == "" && ref.Name == c.Name) {
					hit = true
				}
			}
			if hit {
				ids = append(ids, p.ID)
			}
		}
	})
	if len(ids) > 0 {
		r.log.Debug("vCenter change", "kind", c.Kind, "vm", c.VM, "policies", ids)
	}
	for _, id := range ids {
		q.Add(id)
	}
}
