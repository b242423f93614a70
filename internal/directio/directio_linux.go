package directio

import (
	"os"

	"golang.org/x/sys/unix"
)

func open(path string) *os.File {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, 0, unix.STATX_DIOALIGN, &st); err != nil || st.Mask&unix.STATX_DIOALIGN == 0 {
		return nil
	}
	if st.Dio_mem_align == 0 || st.Dio_offset_align == 0 || st.Dio_mem_align > Align || st.Dio_offset_align > Align {
		return nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		return nil
	}
	return f
}
