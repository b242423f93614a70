//go:build !linux

package journal

import "os"

// openDirect: direct I/O is only used on Linux.
func openDirect(string) *os.File { return nil }
