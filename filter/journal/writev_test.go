package journal

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The pieces of recordVec are appendRecord's record, byte for byte, and
// writeVecAt puts them in the file as one record the scanner accepts.
func TestRecordVecMatchesAppendRecord(t *testing.T) {
	p := &Point{ID: 7, Time: time.Unix(5, 6), Kind: KindShortTerm, Marker: MarkerNone, Extents: []Extent{
		{Disk: 2000, Off: 4096, Op: OpData, Len: 3, Data: []byte("abc")},
		{Disk: 2000, Off: 1 << 20, Op: OpTrim, Len: 512},
		{Disk: 2001, Off: 0, Op: OpData, Len: 5, Data: []byte("hello")},
		{Disk: 2001, Off: 8192, Op: OpZero, Len: 4096},
	}}
	want := appendRecord(nil, "vm-a", p, false)
	vec, size := recordVec("vm-a", p)
	if size != int64(len(want)) {
		t.Fatalf("size %d, record has %d bytes", size, len(want))
	}
	if got := bytes.Join(vec, nil); !bytes.Equal(got, want) {
		t.Fatalf("vectored record differs:\n got %x\nwant %x", got, want)
	}
	if len(vec) != 4 || &vec[1][0] != &p.Extents[0].Data[0] {
		t.Fatalf("extent data is copied or misplaced: %d pieces", len(vec))
	}

	f, err := os.Create(filepath.Join(t.TempDir(), "seg"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n, err := writeVecAt(f, vec, 100)
	if err != nil || n != size {
		t.Fatalf("writeVecAt: %d bytes, %v", n, err)
	}
	got := make([]byte, size)
	if _, err := f.ReadAt(got, 100); err != nil {
		t.Fatal(err)
	}
	h, err := parseRecord(got)
	if err != nil || h.id != 7 || len(h.exts) != 4 {
		t.Fatalf("record written from pieces: %+v, %v", h, err)
	}
}

// More pieces than one pwritev takes are written in turn, in order.
func TestWriteVecAtManyPieces(t *testing.T) {
	var bufs [][]byte
	var want []byte
	for i := range 2500 {
		b := bytes.Repeat([]byte{byte(i)}, 1+i%7)
		bufs = append(bufs, b)
		want = append(want, b...)
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "seg"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n, err := writeVecAt(f, bufs, 0)
	if err != nil || n != int64(len(want)) {
		t.Fatalf("writeVecAt: %d of %d bytes, %v", n, len(want), err)
	}
	got, err := os.ReadFile(f.Name())
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("file differs from the pieces (%v)", err)
	}
}

func TestAdvance(t *testing.T) {
	bufs := [][]byte{[]byte("ab"), []byte("cde"), []byte("f")}
	bufs = advance(bufs, 3)
	if got := string(bytes.Join(bufs, nil)); got != "def" {
		t.Fatalf("after 3 bytes: %q", got)
	}
	if bufs = advance(bufs, 3); len(bufs) != 0 {
		t.Fatalf("after all bytes: %d pieces left", len(bufs))
	}
}
