package journal

import (
	"fmt"
	"os"

	"github.com/continuum-cdp/continuum/internal/directio"
)

// Big records are appended with direct I/O where the file system supports
// it: the data goes from the committer's staging buffer to the device
// without a copy into the page cache, and no writeback has to flush it
// later. Small records (markers, small points) and file systems without
// direct I/O (tmpfs) go through the page cache as before.
//
// A direct record starts at a multiple of directAlign and its last block
// is padded with zeroes. A reader that finds a zero length prefix at an
// offset that is not a multiple of directAlign skips to the next multiple:
// a record never starts with a zero prefix, so those bytes are padding or
// the clean end of the segment.
const (
	directAlign = directio.Align
	// directMin is the smallest record written directly; a smaller one
	// would be mostly padding.
	directMin = 64 << 10
	// stageBytes is the staging buffer: a bigger record is written in
	// pieces of this size.
	stageBytes = 4 << 20
)

func alignUp(n int64) int64 { return directio.Up(n) }

// openDirect opens a segment for direct appends, or returns nil.
func openDirect(path string) *os.File { return directio.Open(path) }

// directWriteAt is the direct write (tests make it fail).
var directWriteAt = (*os.File).WriteAt

// direct reports whether a record of n bytes goes to seg with direct I/O.
func (s *Store) direct(seg *segment, n int64) bool {
	return seg != nil && seg.df != nil && n >= directMin
}

// writeDirect writes the n-byte record vec at off (a multiple of
// directAlign) through df: copied into the staging buffer a piece at a
// time, the last piece padded with zeroes up to directAlign. Only the
// committer calls it.
func (s *Store) writeDirect(df *os.File, vec [][]byte, off int64) error {
	if s.stage == nil {
		s.stage = directio.Aligned(stageBytes)
	}
	fill := 0
	put := func(final bool) error {
		n := fill
		if final {
			n = int(alignUp(int64(fill)))
			clear(s.stage[fill:n])
		}
		if _, err := directWriteAt(df, s.stage[:n], off); err != nil {
			return fmt.Errorf("direct write: %w", err)
		}
		off += int64(n)
		fill = 0
		return nil
	}
	for _, p := range vec {
		for len(p) > 0 {
			c := copy(s.stage[fill:], p)
			fill += c
			p = p[c:]
			if fill == len(s.stage) {
				if err := put(false); err != nil {
					return err
				}
			}
		}
	}
	if fill > 0 {
		return put(true)
	}
	return nil
}
