// Package directio opens files for direct I/O (O_DIRECT) where the file
// system offers it, and checks what a direct write needs: offset, length
// and memory at multiples of Align. Data written directly goes from the
// caller's buffer to the device, with no copy into the page cache and no
// writeback to flush it later.
package directio

import (
	"os"
	"unsafe"
)

// Align is the alignment this package asks of direct writes: one page,
// which covers the logical block size of the devices we expect. A file
// system that wants more is not used directly.
const Align = 4096

// Open opens path for direct writes, or returns nil where the file system
// has no direct I/O or wants an alignment coarser than Align. tmpfs
// reports no alignment: its "direct" writes would copy into memory all the
// same, so it is left to the page cache.
func Open(path string) *os.File { return open(path) }

// Aligned returns n bytes of memory that start at a multiple of Align.
func Aligned(n int) []byte {
	b := make([]byte, n+Align)
	skip := 0
	if r := int(uintptr(unsafe.Pointer(&b[0])) & (Align - 1)); r != 0 {
		skip = Align - r
	}
	return b[skip : skip+n : skip+n]
}

// Fits reports whether writing p at off meets Align: offset, length and
// the address of p.
func Fits(p []byte, off int64) bool {
	return len(p) > 0 && off%Align == 0 && len(p)%Align == 0 &&
		uintptr(unsafe.Pointer(&p[0]))%Align == 0
}

// Up rounds n up to a multiple of Align.
func Up(n int64) int64 { return (n + Align - 1) &^ (Align - 1) }
