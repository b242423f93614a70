package nbd

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestOpenFileSizes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.img")
	b, err := OpenFile(path, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.WriteAt([]byte("data"), 1<<20-4, true); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	// Growing keeps the data; the new tail reads as zeroes.
	b, err = OpenFile(path, 2<<20)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 8)
	if _, err := b.ReadAt(got, 1<<20-4); err != nil || string(got) != "data\x00\x00\x00\x00" {
		t.Fatalf("read %q %v", got, err)
	}
	if b.Size() != 2<<20 {
		t.Fatalf("size %d", b.Size())
	}
	b.Close()
	st, _ := os.Stat(path)
	if st.Size() != 2<<20 {
		t.Fatalf("file size %d", st.Size())
	}
	// Shrinking would drop data: refused, file untouched.
	if _, err := OpenFile(path, 1<<20); err == nil {
		t.Fatal("shrinking open accepted")
	}
	st, _ = os.Stat(path)
	if st.Size() != 2<<20 {
		t.Fatalf("file size after refused open %d", st.Size())
	}
	if _, err := OpenFile(path, -1); err == nil {
		t.Fatal("negative size accepted")
	}
	if _, err := OpenFile(filepath.Join(t.TempDir(), "no", "such", "dir"), 10); err == nil {
		t.Fatal("open in a missing directory succeeded")
	}
}

func TestFileBackendRangesAndZeroing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "z.img")
	b, err := OpenFile(path, 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, err := range []error{
		b.WriteAt([]byte{1}, 4<<20, false),
		b.WriteAt(make([]byte, 2), 4<<20-1, false),
		b.WriteZeroes(-1, 1, false),
		b.Trim(4<<20-1, 2),
		func() error { _, err := b.ReadAt(make([]byte, 1), 4<<20); return err }(),
	} {
		if !errors.Is(err, ErrOutOfRange) || errorCode(err) != errInval {
			t.Fatalf("out of range: %v", err)
		}
	}

	full := bytes.Repeat([]byte{0x9c}, 4<<20)
	if err := b.WriteAt(full, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}
	before := blocks(t, path)
	// Unaligned trims and zeroes touch exactly their bytes.
	if err := b.Trim(1000, 2<<20); err != nil {
		t.Fatal(err)
	}
	if err := b.WriteZeroes(3<<20+1, 12345, true); err != nil {
		t.Fatal(err)
	}
	clear(full[1000 : 1000+2<<20])
	clear(full[3<<20+1 : 3<<20+1+12345])
	got := make([]byte, 4<<20)
	if _, err := b.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, full) {
		t.Fatal("content after trim and write zeroes differs")
	}
	if b.noPunch {
		t.Log("file system cannot punch holes; zeroes were written")
	} else if after := blocks(t, path); after >= before {
		t.Fatalf("trim punched no hole: %d blocks before, %d after", before, after)
	}
}

func blocks(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Blocks
}

func TestErrorCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code uint32
	}{
		{nil, 0},
		{fmt.Errorf("append: %w", syscall.ENOSPC), errNoSpc},
		{fmt.Errorf("append: %w", syscall.EDQUOT), errNoSpc},
		{fmt.Errorf("x: %w", ErrOutOfRange), errInval},
		{fmt.Errorf("x: %w", ErrReadOnly), errPerm},
		{syscall.EROFS, errPerm},
		{errors.New("disk on fire"), errIO},
	} {
		if got := errorCode(tc.err); got != tc.code {
			t.Errorf("errorCode(%v) = %d, want %d", tc.err, got, tc.code)
		}
	}
}

// failBackend fails every write with one error, to check what clients see.
type failBackend struct {
	memBackend
	err error
}

func (f *failBackend) WriteAt(p []byte, off int64, fua bool) error { return f.err }

func TestBackendErrorsReachClient(t *testing.T) {
	full := &failBackend{memBackend: memBackend{data: make([]byte, 1<<20)}, err: fmt.Errorf("append: %w", syscall.ENOSPC)}
	broken := &failBackend{memBackend: memBackend{data: make([]byte, 1<<20)}, err: errors.New("boom")}
	_, addr := startServer(t, nil, Export{Name: "full", Backend: full}, Export{Name: "broken", Backend: broken})
	if code := dialExport(t, addr, "full").write(t, 0, []byte("x")); code != errNoSpc {
		t.Fatalf("full: code %d, want ENOSPC", code)
	}
	c := dialExport(t, addr, "broken")
	if code := c.write(t, 0, []byte("x")); code != errIO {
		t.Fatalf("broken: code %d, want EIO", code)
	}
	if _, code := c.read(t, 0, 1); code != 0 {
		t.Fatalf("read after failed write: %d", code)
	}
}
