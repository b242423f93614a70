package nbd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Backend stores the bytes of one export. Methods are called concurrently;
// the server checks ranges and read-only exports before calling them.
type Backend interface {
	Size() int64
	ReadAt(p []byte, off int64) (int, error)
	// WriteAt writes p at off; fua asks for it to be durable on return.
	WriteAt(p []byte, off int64, fua bool) error
	// WriteZeroes makes the range read back as zeroes.
	WriteZeroes(off, length int64, fua bool) error
	// Trim discards the range; it must read back as zeroes afterwards.
	Trim(off, length int64) error
	// Flush makes every completed write durable.
	Flush() error
}

// An OwningBackend takes the payload buffers of writes: the server reads a
// write's payload into WriteBuffer(n) and hands it to WriteOwned, which
// owns it from then on, also when it fails. A backend that forwards writes
// (a replication stream) then keeps the buffer instead of copying it. A
// request refused before it reaches the backend drops its buffer.
type OwningBackend interface {
	Backend
	WriteBuffer(n int) []byte
	WriteOwned(p []byte, off int64, fua bool) error
}

// Errors a Backend may return (wrapped) to pick the NBD error code.
var (
	ErrOutOfRange = errors.New("out of range") // NBD EINVAL
	ErrReadOnly   = errors.New("read-only")    // NBD EPERM
)

// errorCode maps a backend error to an NBD error value.
func errorCode(err error) uint32 {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return errNoSpc
	case errors.Is(err, ErrOutOfRange), errors.Is(err, syscall.EINVAL):
		return errInval
	case errors.Is(err, ErrReadOnly), errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EROFS):
		return errPerm
	case errors.Is(err, syscall.ENOMEM):
		return errNoMem
	}
	return errIO
}

// FileBackend is an export stored in a plain (sparse) file of a fixed size.
type FileBackend struct {
	f    *os.File
	size int64

	mu       sync.Mutex
	noPunch  bool // the file system refused FALLOC_FL_PUNCH_HOLE once
	closeErr error
	closed   bool
}

// OpenFile opens or creates the file at path as a disk of size bytes. A new or
// shorter file is extended sparsely; a longer file is refused, because
// shrinking it would drop data.
func OpenFile(path string, size int64) (*FileBackend, error) {
	if size < 0 {
		return nil, fmt.Errorf("open nbd file %s: negative size %d", path, size)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open nbd file: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open nbd file: stat %s: %w", path, err)
	}
	switch {
	case st.Size() > size:
		f.Close()
		return nil, fmt.Errorf("open nbd file %s: file holds %d bytes, more than the disk size %d", path, st.Size(), size)
	case st.Size() < size:
		if err := f.Truncate(size); err != nil {
			f.Close()
			return nil, fmt.Errorf("open nbd file: extend %s to %d bytes: %w", path, size, err)
		}
	}
	return &FileBackend{f: f, size: size}, nil
}

// Size is the disk size in bytes.
func (b *FileBackend) Size() int64 { return b.size }

// Path is the file's name.
func (b *FileBackend) Path() string { return b.f.Name() }

func (b *FileBackend) check(off, length int64) error {
	if off < 0 || length < 0 || off > b.size || length > b.size-off {
		return fmt.Errorf("range [%d, +%d) of a %d-byte disk: %w", off, length, b.size, ErrOutOfRange)
	}
	return nil
}

// ReadAt reads len(p) bytes at off.
func (b *FileBackend) ReadAt(p []byte, off int64) (int, error) {
	if err := b.check(off, int64(len(p))); err != nil {
		return 0, fmt.Errorf("read: %w", err)
	}
	n, err := b.f.ReadAt(p, off)
	if err == io.EOF {
		// The file cannot be shorter than the disk unless someone truncated
		// it behind our back; what is missing reads as a hole.
		clear(p[n:])
		return len(p), nil
	}
	if err != nil {
		return n, fmt.Errorf("read %d bytes at %d: %w", len(p), off, err)
	}
	return n, nil
}

// WriteAt writes p at off, syncing the data when fua is set.
func (b *FileBackend) WriteAt(p []byte, off int64, fua bool) error {
	if err := b.check(off, int64(len(p))); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if _, err := b.f.WriteAt(p, off); err != nil {
		return fmt.Errorf("write %d bytes at %d: %w", len(p), off, err)
	}
	if fua {
		return b.Flush()
	}
	return nil
}

// WriteZeroes makes the range read back as zeroes: a hole punched when the
// file system supports it, written zeroes otherwise.
func (b *FileBackend) WriteZeroes(off, length int64, fua bool) error {
	if err := b.check(off, length); err != nil {
		return fmt.Errorf("write zeroes: %w", err)
	}
	if err := b.zero(off, length); err != nil {
		return fmt.Errorf("write zeroes [%d, +%d): %w", off, length, err)
	}
	if fua {
		return b.Flush()
	}
	return nil
}

// Trim punches a hole; the range reads back as zeroes.
func (b *FileBackend) Trim(off, length int64) error {
	if err := b.check(off, length); err != nil {
		return fmt.Errorf("trim: %w", err)
	}
	if err := b.zero(off, length); err != nil {
		return fmt.Errorf("trim [%d, +%d): %w", off, length, err)
	}
	return nil
}

func (b *FileBackend) zero(off, length int64) error {
	if length == 0 {
		return nil
	}
	b.mu.Lock()
	noPunch := b.noPunch
	b.mu.Unlock()
	if !noPunch {
		// PUNCH_HOLE zeroes the partial blocks at either end itself, so
		// unaligned ranges are exact.
		err := unix.Fallocate(int(b.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) {
			return fmt.Errorf("punch hole: %w", err)
		}
		b.mu.Lock()
		b.noPunch = true
		b.mu.Unlock()
	}
	zeroes := make([]byte, min(length, 1<<20))
	for length > 0 {
		n := min(length, int64(len(zeroes)))
		if _, err := b.f.WriteAt(zeroes[:n], off); err != nil {
			return fmt.Errorf("write zeroes: %w", err)
		}
		off += n
		length -= n
	}
	return nil
}

// Flush syncs the file's data.
func (b *FileBackend) Flush() error {
	if err := unix.Fdatasync(int(b.f.Fd())); err != nil {
		return fmt.Errorf("sync %s: %w", b.f.Name(), err)
	}
	return nil
}

// Close syncs and closes the file; later calls return the first result.
func (b *FileBackend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return b.closeErr
	}
	b.closed = true
	err := b.f.Sync()
	if cerr := b.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		b.closeErr = fmt.Errorf("close %s: %w", b.f.Name(), err)
	}
	return b.closeErr
}
