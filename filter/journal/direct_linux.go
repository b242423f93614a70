package journal

import (
	"os"

	"golang.org/x/sys/unix"
)

// openDirect opens path for direct writes, or returns nil where the file
// system does not offer direct I/O, or wants an alignment coarser than
// directAlign. tmpfs reports no alignment: its "direct" writes would copy
// into memory all the same, so it keeps the page cache path.
func openDirect(path string) *os.File {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, 0, unix.STATX_DIOALIGN, &st); err != nil || st.Mask&unix.STATX_DIOALIGN == 0 {
		return nil
	}
	if st.Dio_mem_align == 0 || st.Dio_offset_align == 0 || st.Dio_mem_align > directAlign || st.Dio_offset_align > directAlign {
		return nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		return nil
	}
	return f
}
