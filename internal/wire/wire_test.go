package wire

import (
	"bytes"
	"errors"
	"io"
	"net"
	"reflect"
	"runtime"
	"testing"
)

func allMsgs() []Msg {
	return []Msg{
		&Hello{Role: RoleSourceProxy, NodeID: "sp-1", VM: "vm-42", Disks: []Disk{{Key: 2000, Capacity: 1 << 30}, {Key: 2001, Capacity: 4096}}, Resume: 77},
		&Hello{Role: RoleTargetProxy, VM: "vm-1"},
		&HelloAck{Resume: 12, InitialSyncDone: true},
		&HelloAck{Err: "unknown vm"},
		&Write{Seq: 9, Disk: 2000, Off: 512, Op: OpData, Len: 5, Flags: FlagInitial, Data: []byte("hello")},
		&Write{Seq: 10, Disk: 2001, Off: 4096, Op: OpZero, Len: 1 << 20},
		&Write{Seq: 11, Disk: 2001, Off: 0, Op: OpTrim, Len: 4096, Flags: FlagResync},
		&Marker{Seq: 11, Kind: MarkerInitialSyncDone},
		&Ack{Seq: 11},
		&Point{ID: 11, Time: 1_700_000_000_000_000_000, Kind: PointShortTerm, Marker: MarkerResyncDone, Codec: CodecS2, Encrypted: true, RawLen: 99, Payload: []byte{1, 2, 3}},
		&PointAck{ID: 11},
		&Status{VM: "vm-42", Mode: "CBT mode", BytesDone: 5, BytesTotal: 10, Msg: "buffer full"},
		&Error{Code: ErrCodeNoSpace, Msg: "no space left on device"},
		&Heartbeat{},
	}
}

func TestFrameRoundTrip(t *testing.T) {
	for _, m := range allMsgs() {
		b, err := AppendFrame(nil, m)
		if err != nil {
			t.Fatalf("%s: %v", m.Type(), err)
		}
		got, n, err := DecodeFrame(b, 0)
		if err != nil {
			t.Fatalf("%s: decode: %v", m.Type(), err)
		}
		if n != len(b) {
			t.Fatalf("%s: used %d of %d bytes", m.Type(), n, len(b))
		}
		if !reflect.DeepEqual(got, m) {
			t.Fatalf("%s: got %+v, want %+v", m.Type(), got, m)
		}
	}
}

func TestConnRoundTripAndBufferReuse(t *testing.T) {
	a, b := net.Pipe()
	ca, cb := NewConn(a), NewConn(b)
	defer ca.Close()
	defer cb.Close()
	msgs := allMsgs()
	go func() {
		for _, m := range msgs {
			if err := ca.WriteMsg(m); err != nil {
				t.Error(err)
				return
			}
		}
		if err := ca.Flush(); err != nil {
			t.Error(err)
		}
	}()
	var got []Msg
	for range msgs {
		m, err := cb.ReadMsg()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, m)
	}
	// Messages read earlier must not be clobbered by later reads.
	for i := range msgs {
		if !reflect.DeepEqual(got[i], msgs[i]) {
			t.Fatalf("message %d: got %+v, want %+v", i, got[i], msgs[i])
		}
	}
}

func TestExpect(t *testing.T) {
	a, b := net.Pipe()
	ca, cb := NewConn(a), NewConn(b)
	defer ca.Close()
	defer cb.Close()
	go func() {
		_ = ca.Send(&HelloAck{Resume: 3})
		_ = ca.Send(&Error{Code: ErrCodeUnknownVM, Msg: "no such vm"})
		_ = ca.Send(&Ack{Seq: 1})
	}()
	ha, err := Expect[*HelloAck](cb)
	if err != nil || ha.Resume != 3 {
		t.Fatalf("HelloAck: %+v %v", ha, err)
	}
	_, err = Expect[*HelloAck](cb)
	var we *Error
	if !errors.As(err, &we) || we.Code != ErrCodeUnknownVM {
		t.Fatalf("want remote Error, got %v", err)
	}
	if _, err = Expect[*PointAck](cb); err == nil {
		t.Fatal("Ack accepted as PointAck")
	}
}

func TestFrameRejects(t *testing.T) {
	good, _ := AppendFrame(nil, &Write{Seq: 1, Disk: 1, Off: 0, Op: OpData, Len: 4, Data: []byte("abcd")})
	mut := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	refix := func(b []byte) []byte { // recompute the CRC so only the payload is wrong
		body := b[:len(b)-TrailerLen]
		return AppendCRC(body)
	}
	cases := map[string][]byte{
		"bad magic":               mut(func(b []byte) []byte { b[0] = 'X'; return b }),
		"bad version":             mut(func(b []byte) []byte { b[2] = 2; return b }),
		"unknown flags":           mut(func(b []byte) []byte { b[4] = 0x80; return b }),
		"bad crc":                 mut(func(b []byte) []byte { b[len(b)-1] ^= 1; return b }),
		"unchecked, not over TLS": mut(func(b []byte) []byte { b[4] = FlagUnchecked; return b }),
		"flipped data":            mut(func(b []byte) []byte { b[HeaderLen+WriteFixedLen] ^= 1; return b }),
		"too large":               mut(func(b []byte) []byte { be.PutUint32(b[5:], DefaultMaxPayload+1); return b }),
		"unknown type":            mut(func(b []byte) []byte { b[3] = 200; return refix(b) }),
		"bad op":                  mut(func(b []byte) []byte { b[HeaderLen+20] = 9; return refix(b) }),
		"len mismatch":            mut(func(b []byte) []byte { be.PutUint32(b[HeaderLen+21:], 3); return refix(b) }),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			_, _, err := DecodeFrame(b, 0)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("DecodeFrame: want ErrCorrupt, got %v", err)
			}
			_, err = NewDecoder(bytes.NewReader(b), 0).Next()
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Decoder: want ErrCorrupt, got %v", err)
			}
		})
	}
	for cut := 1; cut < len(good); cut++ {
		if _, err := NewDecoder(bytes.NewReader(good[:cut]), 0).Next(); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("truncated at %d: want ErrCorrupt, got %v", cut, err)
		}
		if _, _, err := DecodeFrame(good[:cut], 0); err != io.ErrUnexpectedEOF {
			t.Fatalf("DecodeFrame truncated at %d: want ErrUnexpectedEOF, got %v", cut, err)
		}
	}
	if _, err := NewDecoder(bytes.NewReader(nil), 0).Next(); err != io.EOF {
		t.Fatalf("empty stream: want io.EOF, got %v", err)
	}
}

func TestSkippableUnknownFrame(t *testing.T) {
	var b []byte
	unknown := []byte{Magic0, Magic1, Version, 250, FlagSkippable, 0, 0, 0, 2, 7, 7}
	b = AppendCRC(unknown)
	b, _ = AppendFrame(b, &Ack{Seq: 5})
	m, err := NewDecoder(bytes.NewReader(b), 0).Next()
	if err != nil {
		t.Fatal(err)
	}
	if a, ok := m.(*Ack); !ok || a.Seq != 5 {
		t.Fatalf("got %+v", m)
	}
}

func TestEncodeRejectsUnrepresentable(t *testing.T) {
	long := string(make([]byte, 70000))
	for _, m := range []Msg{
		&Hello{VM: long},
		&Write{Op: OpData, Len: 3, Data: []byte("ab")},
		&Write{Op: OpZero, Len: 3, Data: []byte("abc")},
		&Write{Op: 7},
		&Write{Op: OpData, Off: -1},
	} {
		if _, err := AppendFrame(nil, m); err == nil {
			t.Errorf("%s %+v: encoded", m.Type(), m)
		}
	}
}

func TestDecoderLargeFrameAndForgedLength(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 5<<20/16+3)
	big := &Write{Seq: 1, Disk: 1, Op: OpData, Len: uint32(len(data)), Data: data}
	b, err := AppendFrame(nil, big)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = AppendFrame(b, &Ack{Seq: 2})
	d := NewDecoder(bytes.NewReader(b), 0)
	m, err := d.Next()
	if err != nil || !bytes.Equal(m.(*Write).Data, data) {
		t.Fatalf("large frame: %v", err)
	}
	if m, err := d.Next(); err != nil || m.(*Ack).Seq != 2 {
		t.Fatalf("frame after a large one: %v", err)
	}
	// A header claiming 200 MiB (above the size allocated at once)
	// followed by a few bytes: an error, and the reader never grew past
	// what arrived (bounded by the 1 MiB first step).
	forged := []byte{Magic0, Magic1, Version, byte(TypeWrite), 0, 0, 0, 0, 0, 1, 2, 3}
	be.PutUint32(forged[5:], 200<<20)
	d = NewDecoder(bytes.NewReader(forged), 0)
	if _, err := d.Next(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("forged length: %v", err)
	}
	if cap(d.buf) > 2<<20 {
		t.Fatalf("decoder allocated %d bytes for a 3-byte body", cap(d.buf))
	}
}

// A big frame's message keeps the read buffer; the next read must not
// overwrite it.
func TestDecoderGivesAwayBigBuffers(t *testing.T) {
	var b []byte
	var want [][]byte
	for i := range 3 {
		data := bytes.Repeat([]byte{byte('a' + i)}, giveAway+100)
		want = append(want, data)
		b, _ = AppendFrame(b, &Point{ID: uint64(i + 1), Kind: PointShortTerm, RawLen: uint32(len(data)), Payload: data})
		b, _ = AppendFrame(b, &Write{Seq: uint64(i + 1), Op: OpData, Len: uint32(len(data)), Data: data})
	}
	d := NewDecoder(bytes.NewReader(b), 0)
	var got []Msg
	for range 6 {
		m, err := d.Next()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, m)
	}
	for i := range 3 {
		if !bytes.Equal(got[2*i].(*Point).Payload, want[i]) || !bytes.Equal(got[2*i+1].(*Write).Data, want[i]) {
			t.Fatalf("message %d was overwritten by a later read", i)
		}
	}
}

// A released big message's buffer is read into again by a later frame of
// a similar size, and that frame's data is its own; a message that kept no
// buffer is not touched.
func TestReleaseReusesFrameBuffers(t *testing.T) {
	var b []byte
	var want [][]byte
	for i := range 4 {
		data := bytes.Repeat([]byte{byte('k' + i)}, 3<<20+i*1000)
		want = append(want, data)
		b, _ = AppendFrame(b, &Write{Seq: uint64(i + 1), Op: OpData, Len: uint32(len(data)), Data: data})
	}
	b, _ = AppendFrame(b, &Write{Seq: 9, Op: OpData, Len: 3, Data: []byte("abc")})
	d := NewDecoder(bytes.NewReader(b), 0)
	d.reuse = true
	var reused int
	var last *byte
	for i := range 4 {
		m, err := d.Next()
		if err != nil {
			t.Fatal(err)
		}
		w := m.(*Write)
		if !bytes.Equal(w.Data, want[i]) {
			t.Fatalf("write %d: wrong data", i)
		}
		if last != nil && &w.frame[:1][0] == last {
			reused++
		}
		last = &w.frame[:1][0]
		Release(w)
		runtime.GC()
		if w.Data != nil || w.frame != nil {
			t.Fatal("a released write still holds its data")
		}
	}
	// the pool keeps released buffers across collections: every frame
	// after the first is read into the one released before it
	if reused != 3 {
		t.Fatalf("%d of 3 frames read into a released buffer", reused)
	}
	m, err := d.Next()
	if err != nil {
		t.Fatal(err)
	}
	small := m.(*Write)
	Release(small)
	if string(small.Data) != "abc" {
		t.Fatal("releasing a copied message cleared it")
	}
	if frameClass(3<<20+1) != 3<<20+256<<10 || frameClass(100) != 64<<10 || frameClass(1<<20) != 1<<20 {
		t.Fatalf("size classes: %d %d %d", frameClass(3<<20+1), frameClass(100), frameClass(1<<20))
	}
}

// A stream of big frames that are given away and released allocates
// almost nothing per frame: the next header goes into the decoder's own
// small buffer, not a fresh one.
func TestBigFramesAllocateLittle(t *testing.T) {
	var b []byte
	data := bytes.Repeat([]byte{7}, 1<<20)
	const n = 40
	for i := range n {
		b, _ = AppendFrame(b, &Write{Seq: uint64(i + 1), Op: OpData, Len: uint32(len(data)), Data: data})
	}
	d := NewDecoder(bytes.NewReader(b), 0)
	d.reuse = true
	read := func() {
		m, err := d.Next()
		if err != nil {
			t.Fatal(err)
		}
		Release(m)
	}
	read() // the first frame's buffer comes from nowhere
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range n - 1 {
		read()
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / (n - 1); per > 16<<10 {
		t.Fatalf("%d bytes allocated per 1 MiB frame, want under 16 KiB", per)
	}
}
