package source

import (
	"errors"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// nextData is where the first data at or after off lies in f (SEEK_DATA),
// and whether the filesystem could tell: a scan skips a chunk that lies in
// a hole instead of reading zeroes the kernel has to produce page by page.
// Unwritten and not yet allocated (delayed) data count as data.
func nextData(f *os.File, off int64) (int64, bool) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, false
	}
	var at int64
	var serr error
	if err := rc.Control(func(fd uintptr) {
		at, serr = unix.Seek(int(fd), off, unix.SEEK_DATA)
	}); err != nil {
		return 0, false
	}
	switch {
	case serr == nil:
		return at, true
	case errors.Is(serr, syscall.ENXIO):
		// no data at or after off
		return 1<<63 - 1, true
	default:
		return 0, false
	}
}
