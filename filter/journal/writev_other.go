//go:build !linux

package journal

import "os"

// writeVecAt writes the concatenation of bufs at off, one piece at a time.
func writeVecAt(f *os.File, bufs [][]byte, off int64) (int64, error) {
	var total int64
	for _, b := range bufs {
		n, err := f.WriteAt(b, off+total)
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
	return total, nil
}
