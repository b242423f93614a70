package source

import (
	"bytes"
	"testing"

	"github.com/continuum-cdp/continuum/internal/wire"
)

func TestGetDataCopies(t *testing.T) {
	for _, n := range []int{0, 1, minPooled - 1, minPooled, minPooled + 1, 1 << 20, maxPooled, maxPooled + 1} {
		src := bytes.Repeat([]byte{0xa5}, n)
		got := getData(src)
		if len(got) != n || !bytes.Equal(got, src) {
			t.Fatalf("getData of %d bytes: %d bytes, equal %v", n, len(got), bytes.Equal(got, src))
		}
		if n > 0 && &got[0] == &src[0] {
			t.Fatalf("getData of %d bytes aliases its input", n)
		}
		if n >= minPooled && n <= maxPooled && cap(got)&(cap(got)-1) != 0 {
			t.Fatalf("pooled buffer of %d bytes has capacity %d", n, cap(got))
		}
		putData(got)
	}
	// a buffer that did not come from getData is not kept
	putData(make([]byte, 5000))
	if b := getData(make([]byte, 5000)); cap(b) != 8192 {
		t.Fatalf("class of 5000 bytes has capacity %d, want 8192", cap(b))
	}
}

// An entry acknowledged while a writeLoop still writes it keeps its data
// until that writeLoop is done with it.
func TestEntryReleaseWaitsForSender(t *testing.T) {
	w := &wire.Write{Seq: 1, Op: wire.OpData, Data: getData(bytes.Repeat([]byte{1}, 8192))}
	e := &entry{seq: 1, msg: w, sending: true}
	e.release()
	if w.Data == nil || !e.ackedSending {
		t.Fatal("data released while being sent")
	}
	e.sending = false
	e.ackedSending = false
	e.release()
	if w.Data != nil {
		t.Fatal("data not released once sent and acknowledged")
	}
}
