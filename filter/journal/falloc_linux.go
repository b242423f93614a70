package journal

import (
	"os"
	"syscall"
)

// preallocate reserves size bytes for f so appends do not grow the file
// (and its metadata) on every write; filesystems without fallocate fall
// back to a sparse truncate.
func preallocate(f *os.File, size int64) error {
	err := syscall.Fallocate(int(f.Fd()), 0, 0, size)
	if err == syscall.EOPNOTSUPP || err == syscall.ENOSYS {
		return f.Truncate(size)
	}
	return err
}

// punchZero makes [off, off+n) of f read as zeroes without changing its
// size, freeing the blocks where the filesystem can.
func punchZero(f *os.File, off, n int64) error {
	const punchHole, keepSize = 0x02, 0x01
	err := syscall.Fallocate(int(f.Fd()), punchHole|keepSize, off, n)
	if err == syscall.EOPNOTSUPP || err == syscall.ENOSYS {
		return writeZeroes(f, off, n)
	}
	return err
}
