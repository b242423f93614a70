package directio

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"unsafe"
)

func TestAlignment(t *testing.T) {
	for _, n := range []int{Align, 3 * Align, 1 << 20} {
		b := Aligned(n)
		if len(b) != n || uintptr(unsafe.Pointer(&b[0]))%Align != 0 {
			t.Fatalf("Aligned(%d): %d bytes at %p", n, len(b), &b[0])
		}
		if !Fits(b, 2*Align) {
			t.Fatalf("aligned %d bytes at %d do not fit", n, 2*Align)
		}
		if Fits(b, 100) || Fits(b[1:], 0) || Fits(b[:n-1], 0) || Fits(b[Align:Align], 0) {
			t.Fatal("an unaligned offset, address, length or an empty write fits")
		}
	}
	for n, want := range map[int64]int64{0: 0, 1: Align, Align: Align, Align + 1: 2 * Align} {
		if got := Up(n); got != want {
			t.Fatalf("Up(%d) = %d, want %d", n, got, want)
		}
	}
}

// Where Open answers, a direct write lands in the file; /dev/shm (tmpfs)
// is never opened directly.
func TestOpenWrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, make([]byte, 4*Align), 0o644); err != nil {
		t.Fatal(err)
	}
	if f := Open(path); f != nil {
		b := Aligned(Align)
		copy(b, bytes.Repeat([]byte("direct"), Align))
		if _, err := f.WriteAt(b, Align); err != nil {
			t.Fatal(err)
		}
		f.Close()
		got, _ := os.ReadFile(path)
		if !bytes.Equal(got[Align:2*Align], b) {
			t.Fatal("the direct write is not in the file")
		}
	}
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		shm, err := os.CreateTemp("/dev/shm", "directio-")
		if err != nil {
			t.Skip(err)
		}
		defer os.Remove(shm.Name())
		shm.Close()
		if f := Open(shm.Name()); f != nil {
			f.Close()
			t.Fatal("tmpfs was opened for direct writes")
		}
	}
}
