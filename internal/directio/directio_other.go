//go:build !linux

package directio

import "os"

// open: direct I/O is only used on Linux.
func open(string) *os.File { return nil }
