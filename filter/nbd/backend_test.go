package nbd

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
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

// keepingBackend owns its write buffers (OwningBackend) and keeps every
// one, to check that the server reads each payload into a buffer of the
// backend's and never touches it after WriteOwned.
type keepingBackend struct {
	memBackend
	mu      sync.Mutex
	handed  map[*byte]bool
	kept    [][]byte
	copies  int
	wantOff []int64
}

func (k *keepingBackend) WriteBuffer(n int) []byte {
	b := make([]byte, n)
	k.mu.Lock()
	k.handed[&b[0]] = true
	k.mu.Unlock()
	return b
}

func (k *keepingBackend) WriteOwned(p []byte, off int64, fua bool) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.handed[&p[0]] {
		k.copies++
	}
	k.kept = append(k.kept, p)
	k.wantOff = append(k.wantOff, off)
	return k.memBackend.WriteAt(p, off, fua)
}

func (k *keepingBackend) WriteAt(p []byte, off int64, fua bool) error {
	k.mu.Lock()
	k.copies++
	k.mu.Unlock()
	return k.memBackend.WriteAt(p, off, fua)
}

func TestOwningBackendKeepsPayloads(t *testing.T) {
	k := &keepingBackend{memBackend: memBackend{data: make([]byte, 1<<20)}, handed: map[*byte]bool{}}
	_, addr := startServer(t, nil, Export{Name: "own", Backend: k})
	c := dialExport(t, addr, "own")
	const n = 40
	for i := range n {
		p := bytes.Repeat([]byte{byte(i + 1)}, 4096+i)
		if code := c.write(t, uint64(i)*8192, p); code != 0 {
			t.Fatalf("write %d: code %d", i, code)
		}
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.copies != 0 || len(k.kept) != n {
		t.Fatalf("%d of %d writes reached the backend in a buffer of the server's, %d kept", k.copies, n, len(k.kept))
	}
	for i, p := range k.kept {
		if want := bytes.Repeat([]byte{byte(i + 1)}, 4096+i); !bytes.Equal(p, want) || k.wantOff[i] != int64(i)*8192 {
			t.Fatalf("write %d: its buffer changed after WriteOwned (or went to offset %d)", i, k.wantOff[i])
		}
	}
}
