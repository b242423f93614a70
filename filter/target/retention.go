package target

import "time"

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
		if err := v.ApplyRetention(now, rt.ShortTerm, rt.LongTerm); err != nil {
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
