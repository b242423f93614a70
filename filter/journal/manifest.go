package journal

import (
	"encoding/json"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"time"
)

const manifestName = "manifest.json"

// manifest is the small durable state of a VM that the segments alone do
// not give: which deltas exist and are listed, what the base holds, and
// which records are folded away.
type manifest struct {
	Version         int          `json:"version"`
	VM              string       `json:"vm"`
	Disks           []DiskSpec   `json:"disks"`
	InitialSyncDone bool         `json:"initial_sync_done"`
	BaseID          uint64       `json:"base_id"` // the base is the state at this point
	BaseTime        time.Time    `json:"base_time"`
	BaseListed      bool         `json:"base_listed"` // the base is a listed long-term point
	Layers          []layerEntry `json:"layers"`      // ascending ID
	ShortCut        uint64       `json:"short_cut"`   // short-term points <= are no longer listed
	DropThrough     uint64       `json:"drop_through"`
	LastID          uint64       `json:"last_id"` // at least this ID is durable
	// Since is the first segment whose records of this name are this
	// VM's: older ones belong to a VM of the same name that was removed
	// (0: every segment, as for a name never used before).
	Since uint64 `json:"since_segment,omitempty"`
}

type layerEntry struct {
	ID     uint64    `json:"id"`
	Time   time.Time `json:"time"`
	Listed bool      `json:"listed"` // a long-term point; else a fold of expired short-term points
	File   string    `json:"file"`
}

// manifestFile wraps the manifest with a checksum of its exact bytes.
type manifestFile struct {
	Manifest json.RawMessage `json:"manifest"`
	CRC32C   uint32          `json:"crc32c"`
}

func readManifest(dir string) (*manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, manifestName))
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	var mf manifestFile
	if err := json.Unmarshal(b, &mf); err != nil {
		return nil, fmt.Errorf("%w: manifest in %s: %v", ErrCorrupt, dir, err)
	}
	if crc32.Checksum(mf.Manifest, castagnoli) != mf.CRC32C {
		return nil, fmt.Errorf("%w: manifest in %s: checksum mismatch", ErrCorrupt, dir)
	}
	var m manifest
	if err := json.Unmarshal(mf.Manifest, &m); err != nil {
		return nil, fmt.Errorf("%w: manifest in %s: %v", ErrCorrupt, dir, err)
	}
	if m.Version != 1 {
		return nil, fmt.Errorf("%w: manifest in %s: unknown version %d", ErrCorrupt, dir, m.Version)
	}
	return &m, nil
}

// writeManifest replaces the manifest atomically: temp file, fsync,
// rename, fsync of the directory.
func (s *Store) writeManifest(dir string, m *manifest) error {
	m.Version = 1
	body, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode manifest: %w", err)
	}
	b, err := json.Marshal(manifestFile{Manifest: body, CRC32C: crc32.Checksum(body, castagnoli)})
	if err != nil {
		return fmt.Errorf("encode manifest: %w", err)
	}
	tmp := filepath.Join(dir, manifestName+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write manifest: %w", err)
	}
	if err := s.syncFile(f); err != nil {
		f.Close()
		return fmt.Errorf("fsync manifest: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, manifestName)); err != nil {
		return fmt.Errorf("replace manifest: %w", err)
	}
	if err := s.syncDir(dir); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
