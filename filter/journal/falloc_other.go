//go:build !linux

package journal

import "os"

func preallocate(f *os.File, size int64) error { return f.Truncate(size) }

func punchZero(f *os.File, off, n int64) error { return writeZeroes(f, off, n) }
