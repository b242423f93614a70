package journal

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// maxIovecs stays under the kernel's IOV_MAX (1024).
const maxIovecs = 1024

// writeVecAt writes the concatenation of bufs at off with pwritev, so a
// record goes to the file straight from its pieces (header, the point's
// extent data, trailer) without being copied into one buffer first. It
// returns how many bytes were written.
func writeVecAt(f *os.File, bufs [][]byte, off int64) (int64, error) {
	if len(bufs) == 1 {
		n, err := f.WriteAt(bufs[0], off)
		return int64(n), err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var total int64
	var werr error
	for len(bufs) > 0 && werr == nil {
		chunk := bufs[:min(len(bufs), maxIovecs)]
		var n int
		cerr := rc.Write(func(fd uintptr) bool {
			for {
				n, werr = unix.Pwritev(int(fd), chunk, off)
				if !errors.Is(werr, syscall.EINTR) {
					return true
				}
			}
		})
		if cerr != nil && werr == nil {
			werr = cerr
		}
		if n > 0 {
			total += int64(n)
			off += int64(n)
			bufs = advance(bufs, n)
		} else if werr == nil {
			werr = io.ErrShortWrite
		}
	}
	if werr != nil {
		return total, fmt.Errorf("pwritev: %w", werr)
	}
	return total, nil
}

// advance drops the first n bytes of bufs (a short write's remainder).
func advance(bufs [][]byte, n int) [][]byte {
	for n > 0 && len(bufs) > 0 {
		if n < len(bufs[0]) {
			bufs[0] = bufs[0][n:]
			return bufs
		}
		n -= len(bufs[0])
		bufs = bufs[1:]
	}
	for len(bufs) > 0 && len(bufs[0]) == 0 {
		bufs = bufs[1:]
	}
	return bufs
}
