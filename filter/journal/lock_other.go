//go:build !unix

package journal

import (
	"os"
	"path/filepath"
)

// lockDir: no lock where flock is not available.
func lockDir(dir string) (*os.File, error) {
	return os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o644)
}
