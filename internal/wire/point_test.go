package wire

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
)

func testKey(b byte) []byte { return bytes.Repeat([]byte{b}, KeySize) }

func sampleExtents(r *rand.Rand) []Extent {
	big := make([]byte, 3*ChunkSize+123) // several chunks, mixed content
	for i := range big {
		switch {
		case i < ChunkSize:
			big[i] = byte(i / 512) // compressible
		case i < 2*ChunkSize:
			big[i] = byte(r.Uint32()) // incompressible: stored chunk
		}
	}
	return []Extent{
		{Disk: 2000, Off: 0, Op: OpData, Len: 5, Data: []byte("hello")},
		{Disk: 2001, Off: 1 << 30, Op: OpZero, Len: 1 << 20},
		{Disk: 2000, Off: 7, Op: OpData, Len: int64(len(big)), Data: big},
		{Disk: 2000, Off: 4096, Op: OpTrim, Len: 512},
		{Disk: 2002, Off: 3, Op: OpData, Len: 0, Data: []byte{}},
	}
}

func TestPointRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	ext := sampleExtents(r)
	for _, codec := range []Codec{CodecNone, CodecS2, CodecZstd} {
		for _, enc := range []bool{false, true} {
			var s *Sealer
			if enc {
				var err error
				if s, err = NewSealer(testKey(7)); err != nil {
					t.Fatal(err)
				}
			}
			opts := PointOptions{Codec: codec, Sealer: s, VM: "vm-1"}
			p := &Point{ID: 42, Time: 123, Kind: PointShortTerm}
			if err := EncodePoint(p, ext, opts); err != nil {
				t.Fatal(err)
			}
			// Through a frame, as on the wire.
			b, err := AppendFrame(nil, p)
			if err != nil {
				t.Fatal(err)
			}
			m, _, err := DecodeFrame(b, 0)
			if err != nil {
				t.Fatal(err)
			}
			got, err := DecodePoint(m.(*Point), opts)
			if err != nil {
				t.Fatalf("%s enc=%v: %v", codec, enc, err)
			}
			if len(got) != len(ext) {
				t.Fatalf("%d extents, want %d", len(got), len(ext))
			}
			for i := range ext {
				g, w := got[i], ext[i]
				if g.Disk != w.Disk || g.Off != w.Off || g.Op != w.Op || g.Len != w.Len || !bytes.Equal(g.Data, w.Data) {
					t.Fatalf("%s enc=%v extent %d differs", codec, enc, i)
				}
			}
			if codec != CodecNone && len(p.Payload) >= int(p.RawLen) {
				t.Errorf("%s: %d bytes for %d raw", codec, len(p.Payload), p.RawLen)
			}
		}
	}
}

func TestPointSealing(t *testing.T) {
	ext := []Extent{{Disk: 1, Off: 0, Op: OpData, Len: 4, Data: []byte("data")}}
	s1, _ := NewSealer(testKey(1))
	s1b, _ := NewSealer(testKey(1)) // same key, other session
	s2, _ := NewSealer(testKey(2))
	mk := func() *Point {
		p := &Point{ID: 10, Time: 5, Kind: PointShortTerm}
		if err := EncodePoint(p, ext, PointOptions{Codec: CodecS2, Sealer: s1, VM: "vm-a"}); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if _, err := DecodePoint(mk(), PointOptions{Sealer: s1b, VM: "vm-a"}); err != nil {
		t.Fatalf("same key, other sealer: %v", err)
	}
	a, b := mk(), mk()
	if bytes.Equal(a.Payload[:nonceLen], b.Payload[:nonceLen]) {
		t.Fatal("nonce repeated")
	}
	cases := map[string]struct {
		p    func() *Point
		opts PointOptions
	}{
		"wrong key":    {mk, PointOptions{Sealer: s2, VM: "vm-a"}},
		"other vm":     {mk, PointOptions{Sealer: s1, VM: "vm-b"}},
		"swapped id":   {func() *Point { p := mk(); p.ID = 11; return p }, PointOptions{Sealer: s1, VM: "vm-a"}},
		"changed kind": {func() *Point { p := mk(); p.Kind = PointResync; return p }, PointOptions{Sealer: s1, VM: "vm-a"}},
		"flipped byte": {func() *Point { p := mk(); p.Payload[20] ^= 1; return p }, PointOptions{Sealer: s1, VM: "vm-a"}},
		"truncated":    {func() *Point { p := mk(); p.Payload = p.Payload[:10]; return p }, PointOptions{Sealer: s1, VM: "vm-a"}},
		"no key":       {mk, PointOptions{VM: "vm-a"}},
		"plain refused": {func() *Point {
			p := &Point{ID: 1, Kind: PointShortTerm}
			_ = EncodePoint(p, ext, PointOptions{})
			return p
		}, PointOptions{Sealer: s1, VM: "vm-a"}},
	}
	for name, c := range cases {
		if _, err := DecodePoint(c.p(), c.opts); !errors.Is(err, ErrBadPoint) {
			t.Errorf("%s: want ErrBadPoint, got %v", name, err)
		}
	}
}

func TestPointRejectsMalformed(t *testing.T) {
	ext := []Extent{{Disk: 1, Off: 0, Op: OpData, Len: 4, Data: []byte("data")}, {Disk: 1, Off: 9, Op: OpZero, Len: 3}}
	mk := func(c Codec) *Point {
		p := &Point{ID: 3, Kind: PointShortTerm}
		if err := EncodePoint(p, ext, PointOptions{Codec: c}); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := map[string]*Point{
		"rawlen high":   func() *Point { p := mk(CodecNone); p.RawLen++; return p }(),
		"rawlen low s2": func() *Point { p := mk(CodecS2); p.RawLen--; return p }(),
		"trailing":      func() *Point { p := mk(CodecNone); p.Payload = append(p.Payload, 0); p.RawLen++; return p }(),
		"bad op":        func() *Point { p := mk(CodecNone); p.Payload[4+12] = 9; return p }(),
		"huge count":    func() *Point { p := mk(CodecNone); be.PutUint32(p.Payload, 1<<30); return p }(),
		"negative len":  func() *Point { p := mk(CodecNone); p.Payload[4+13] = 0x80; return p }(),
		"bad codec":     func() *Point { p := mk(CodecNone); p.Codec = 9; return p }(),
		"garbage s2":    func() *Point { p := mk(CodecS2); p.Payload[chunkHeaderLen] ^= 0xff; return p }(),
		"huge rawlen":   func() *Point { p := mk(CodecS2); p.RawLen = 1<<32 - 1; return p }(),
	}
	for name, p := range cases {
		if _, err := DecodePoint(p, PointOptions{}); !errors.Is(err, ErrBadPoint) {
			t.Errorf("%s: want ErrBadPoint, got %v", name, err)
		}
	}
	if err := EncodePoint(&Point{}, []Extent{{Op: OpData, Len: 3, Data: []byte("x")}}, PointOptions{}); err == nil {
		t.Error("encoded extent with wrong data length")
	}
	if _, err := NewSealer(make([]byte, 16)); err == nil {
		t.Error("accepted a 16-byte key")
	}
}

func TestOpenPointGivesPlainForm(t *testing.T) {
	ext := sampleExtents(rand.New(rand.NewPCG(3, 3)))
	s, _ := NewSealer(testKey(9))
	p := &Point{ID: 8, Time: 99, Kind: PointResync, Marker: MarkerResyncStart}
	if err := EncodePoint(p, ext, PointOptions{Codec: CodecZstd, Sealer: s, VM: "v"}); err != nil {
		t.Fatal(err)
	}
	plain, got, err := OpenPoint(p, PointOptions{Sealer: s, VM: "v"})
	if err != nil {
		t.Fatal(err)
	}
	if plain.Codec != CodecNone || plain.Encrypted || plain.ID != 8 || plain.Time != 99 || plain.Kind != PointResync || plain.Marker != MarkerResyncStart {
		t.Fatalf("plain header %+v", plain)
	}
	again, err := DecodePoint(plain, PointOptions{})
	if err != nil || len(again) != len(got) {
		t.Fatalf("plain form does not decode: %v", err)
	}
	for i := range got {
		if !bytes.Equal(again[i].Data, ext[i].Data) || again[i].Len != ext[i].Len {
			t.Fatalf("extent %d differs", i)
		}
	}
}

// TestSealPointLater: a clear point sealed afterwards decodes like one
// sealed while encoding, and the clear original is left untouched.
func TestSealPointLater(t *testing.T) {
	ext := sampleExtents(rand.New(rand.NewPCG(3, 4)))
	s, _ := NewSealer(testKey(1))
	p := &Point{ID: 7, Time: 9, Kind: PointShortTerm}
	if err := EncodePoint(p, ext, PointOptions{Codec: CodecS2, VM: "vm-a"}); err != nil {
		t.Fatal(err)
	}
	clear := bytes.Clone(p.Payload)
	sp, err := SealPoint(p, s, "vm-a")
	if err != nil {
		t.Fatal(err)
	}
	if p.Encrypted || !bytes.Equal(p.Payload, clear) || !sp.Encrypted {
		t.Fatal("sealing changed the clear point or did not mark the copy")
	}
	got, err := DecodePoint(sp, PointOptions{Sealer: s, VM: "vm-a"})
	if err != nil || len(got) != len(ext) || !bytes.Equal(got[2].Data, ext[2].Data) {
		t.Fatalf("decode sealed copy: %v", err)
	}
	if _, err := DecodePoint(sp, PointOptions{Sealer: s, VM: "vm-b"}); !errors.Is(err, ErrBadPoint) {
		t.Fatalf("sealed copy opened for another vm: %v", err)
	}
	if _, err := SealPoint(sp, s, "vm-a"); err == nil {
		t.Fatal("sealed twice")
	}
	if _, err := SealPoint(p, nil, "vm-a"); err == nil {
		t.Fatal("sealed without a key")
	}
	// into a sender's buffer, twice: its storage is used and each copy
	// opens with its own nonce
	buf := bytes.Repeat([]byte{0xab}, len(p.Payload)+sealOverhead+10)
	for range 2 {
		sp2, err := SealPointTo(buf, p, s, "vm-a")
		if err != nil {
			t.Fatal(err)
		}
		if &sp2.Payload[0] != &buf[0] || bytes.Equal(sp2.Payload[:nonceLen], sp.Payload[:nonceLen]) {
			t.Fatal("sealed outside the given buffer or with a repeated nonce")
		}
		got, err := DecodePoint(sp2, PointOptions{Sealer: s, VM: "vm-a"})
		if err != nil || !bytes.Equal(got[2].Data, ext[2].Data) {
			t.Fatalf("decode point sealed into a buffer: %v", err)
		}
	}
	if !bytes.Equal(p.Payload, clear) {
		t.Fatal("sealing into a buffer changed the clear point")
	}
}

// The encoder gathers only small pieces and those that straddle chunk
// boundaries: a write of ChunkSize or more starts a chunk of its own (so it
// is compressed where it lies), every other chunk but the last is full,
// and the payload decodes to the same extents, also when it is built in a
// reused buffer that held an older, larger payload.
func TestPointChunksAcrossExtentsAndReusedBuffer(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	var ext []Extent
	off := int64(0)
	for _, n := range []int{1, 4095, ChunkSize - 7, 3, ChunkSize, 2*ChunkSize + 11, 513, ChunkSize} {
		d := make([]byte, n)
		for i := range d {
			if r.IntN(4) == 0 {
				d[i] = byte(r.Uint32())
			}
		}
		ext = append(ext, Extent{Disk: 2000, Off: off, Op: OpData, Len: int64(n), Data: d})
		ext = append(ext, Extent{Disk: 2001, Off: off, Op: OpZero, Len: 9})
		off += int64(n) + 100
	}
	for _, codec := range []Codec{CodecNone, CodecS2, CodecZstd} {
		old := bytes.Repeat([]byte{0xee}, RawSize(ext)+ChunkSize)
		opts := PointOptions{Codec: codec, VM: "vm-1", Buf: old}
		p := &Point{ID: 9, Kind: PointShortTerm}
		if err := EncodePoint(p, ext, opts); err != nil {
			t.Fatal(err)
		}
		if &p.Payload[0] != &old[0] {
			t.Errorf("%s: payload not built in the given buffer", codec)
		}
		if int(p.RawLen) != RawSize(ext) {
			t.Fatalf("%s: raw length %d, want %d", codec, p.RawLen, RawSize(ext))
		}
		if codec != CodecNone {
			// where the data of each big write starts in the raw stream
			bigStarts := map[int]bool{}
			at := 4 + len(ext)*extentHeaderLen
			for _, e := range ext {
				if e.Op == OpData {
					if len(e.Data) >= ChunkSize {
						bigStarts[at] = true
					}
					at += len(e.Data)
				}
			}
			body, raw, short := p.Payload, 0, 0
			for len(body) > 0 {
				n, comp := int(be.Uint32(body)), be.Uint32(body[4:])&^chunkStored
				delete(bigStarts, raw)
				raw += n
				if n > ChunkSize {
					t.Fatalf("%s: chunk of %d raw bytes", codec, n)
				}
				if n != ChunkSize && raw != int(p.RawLen) {
					short++
				}
				body = body[chunkHeaderLen+int(comp):]
			}
			if len(bigStarts) != 0 {
				t.Fatalf("%s: %d big writes do not start a chunk", codec, len(bigStarts))
			}
			if short > 4 { // before each of the three big writes, and the head
				t.Fatalf("%s: %d short chunks before the last", codec, short)
			}
		}
		// decoded into a reused buffer too
		into := bytes.Repeat([]byte{0xdd}, RawSize(ext))
		got, err := DecodePoint(p, PointOptions{VM: "vm-1", Buf: into})
		if err != nil {
			t.Fatalf("%s: %v", codec, err)
		}
		for i := range ext {
			g, w := got[i], ext[i]
			if g.Disk != w.Disk || g.Off != w.Off || g.Op != w.Op || g.Len != w.Len || !bytes.Equal(g.Data, w.Data) {
				t.Fatalf("%s: extent %d differs", codec, i)
			}
		}
		if codec != CodecNone && &got[0].Data[0] != &into[4+len(ext)*extentHeaderLen] {
			t.Errorf("%s: not decoded into the given buffer", codec)
		}
	}
}
