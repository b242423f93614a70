package target

import (
	"errors"
	"fmt"
	"time"

	"github.com/continuum-cdp/continuum/filter/journal"
	"github.com/continuum-cdp/continuum/internal/model"
)

// SetRetention sets the retention windows of the VMs in windows (from the
// coordinator's configuration or the admin API), keeps them next to the
// journal so they outlive a restart without a coordinator, and applies a
// changed window at once to a VM whose journal exists (unless a point of
// it is being served; the loop applies it later). A VM without a journal
// yet gets its window when its first session comes. Other VMs keep theirs.
// Invalid windows change nothing.
func (s *Service) SetRetention(windows map[string]Retention) error {
	for vm, rt := range windows {
		if vm == "" {
			return model.Invalid("vm", "a retention window needs a vm name")
		}
		if rt.ShortTerm < 0 || rt.LongTerm < 0 {
			return model.Invalid("short_term", "vm %s: retention windows must not be negative", vm)
		}
	}
	s.mu.Lock()
	prev := make(map[string]Retention, len(s.retention))
	for k, v := range s.retention {
		prev[k] = v
	}
	var changed []string
	for vm, rt := range windows {
		if old, ok := s.retention[vm]; !ok || old != rt {
			s.retention[vm] = rt
			changed = append(changed, vm)
		}
	}
	if len(changed) == 0 {
		s.mu.Unlock()
		return nil
	}
	if err := s.saveRetentionLocked(); err != nil {
		s.retention = prev
		s.mu.Unlock()
		return err
	}
	s.mu.Unlock()
	var errs []error
	now := time.Now()
	for _, name := range changed {
		v, ok := s.store.VM(name)
		if !ok || s.isServing(name) {
			continue
		}
		rt := windows[name]
		if err := v.ApplyRetention(now, rt.ShortTerm, rt.LongTerm); err != nil && !errors.Is(err, journal.ErrRemoved) {
			errs = append(errs, fmt.Errorf("apply retention of %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// retentionLoop applies each VM's retention windows periodically. It
// depends on nothing but the journal, so short-term points keep being
// pruned while the coordinator is away.
func (s *Service) retentionLoop() {
	t := time.NewTicker(s.cfg.RetentionInterval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case now := <-t.C:
			s.applyRetention(now)
		}
	}
}

// applyRetention runs one pass over every VM.
func (s *Service) applyRetention(now time.Time) {
	for _, name := range s.store.VMs() {
		if s.ctx.Err() != nil {
			return
		}
		v, ok := s.store.VM(name)
		if !ok {
			continue
		}
		rt := s.retentionOf(name)
		if rt.ShortTerm == 0 && rt.LongTerm == 0 {
			continue
		}
		if s.isServing(name) {
			// A point served over NBD must stay readable until unserved.
			s.m.retentionRuns.WithLabelValues("deferred").Inc()
			continue
		}
		if err := v.ApplyRetention(now, rt.ShortTerm, rt.LongTerm); errors.Is(err, journal.ErrRemoved) {
			continue // purged meanwhile
		} else if err != nil {
			s.m.retentionRuns.WithLabelValues("error").Inc()
			s.log.Warn("retention", "vm", name, "err", err)
			continue
		}
		s.m.retentionRuns.WithLabelValues("ok").Inc()
	}
}

// isServing reports whether any point of vm is exported over NBD.
func (s *Service) isServing(vm string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sv := range s.served {
		if sv.vm == vm {
			return true
		}
	}
	return false
}
