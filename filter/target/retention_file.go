package target

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/continuum-cdp/continuum/internal/model"
)

// retentionFileName holds the per-VM windows set through the API, next to
// the journal, so they survive a restart without a coordinator.
const retentionFileName = "retention.json"

func (s *Service) retentionPath() string { return filepath.Join(s.cfg.JournalDir, retentionFileName) }

func (s *Service) loadRetention() error {
	b, err := os.ReadFile(s.retentionPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read retention settings: %w", err)
	}
	var m map[string]Window
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("read retention settings %s: %w", s.retentionPath(), err)
	}
	for vm, w := range m {
		if w.ShortTerm < 0 || w.LongTerm < 0 {
			return fmt.Errorf("read retention settings %s: vm %s: negative window", s.retentionPath(), vm)
		}
		s.retention[vm] = Retention{ShortTerm: w.ShortTerm.D(), LongTerm: w.LongTerm.D()}
	}
	return nil
}

// saveRetentionLocked writes the settings atomically (temp file, fsync,
// rename). Called with s.mu held.
func (s *Service) saveRetentionLocked() error {
	m := map[string]Window{}
	for vm, r := range s.retention {
		m[vm] = Window{ShortTerm: model.Duration(r.ShortTerm), LongTerm: model.Duration(r.LongTerm)}
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("save retention settings: %w", err)
	}
	tmp := s.retentionPath() + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("save retention settings: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("save retention settings: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("save retention settings: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("save retention settings: %w", err)
	}
	if err := os.Rename(tmp, s.retentionPath()); err != nil {
		return fmt.Errorf("save retention settings: %w", err)
	}
	return nil
}
