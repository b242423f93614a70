package wire

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// FuzzFrameDecoder feeds arbitrary bytes to the stream decoder: it must
// return messages or an error, never panic, and whatever it accepts must
// re-encode to the same bytes.
func FuzzFrameDecoder(f *testing.F) {
	var stream []byte
	for _, m := range allMsgs() {
		b, err := AppendFrame(nil, m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		stream = append(stream, b...)
	}
	f.Add(stream)
	f.Add([]byte{Magic0, Magic1, Version, byte(TypeWrite), 0, 0xff, 0xff, 0xff, 0xff})
	f.Add(AppendCRC([]byte{Magic0, Magic1, Version, 250, FlagSkippable, 0, 0, 0, 0}))
	f.Fuzz(func(t *testing.T, b []byte) {
		d := NewDecoder(bytes.NewReader(b), 1<<16)
		used := 0
		for i := 0; i < 64; i++ {
			m, err := d.Next()
			if err != nil {
				if err != io.EOF && !errors.Is(err, ErrCorrupt) {
					t.Fatalf("unexpected error class: %v", err)
				}
				return
			}
			// DecodeFrame must agree, skipping the same skippable frames.
			var n int
			for {
				dm, dn, err := DecodeFrame(b[used:], 1<<16)
				if err != nil {
					t.Fatalf("stream decoder accepted what DecodeFrame rejects: %v", err)
				}
				used += dn
				if dm != nil {
					n = dn
					break
				}
			}
			re, err := AppendFrame(nil, m)
			if err != nil {
				t.Fatalf("re-encode %s: %v", m.Type(), err)
			}
			if !bytes.Equal(re, b[used-n:used]) {
				t.Fatalf("%s: re-encoding differs", m.Type())
			}
		}
	})
}

// FuzzIntegrityDecoder feeds arbitrary bytes to a decoder of integrity
// frames: it must return messages or an error, never panic, and what it
// accepts must be, frame for frame, what a writer with the same key wrote
// (a forged tag never passes).
func FuzzIntegrityDecoder(f *testing.F) {
	key := bytes.Repeat([]byte{3}, 16)
	var stream []byte
	for _, m := range allMsgs() {
		b := tagged(f, key, m)
		f.Add(b)
		stream = append(stream, b...)
	}
	f.Add(stream)
	f.Fuzz(func(t *testing.T, b []byte) {
		d := NewDecoder(bytes.NewReader(b), 1<<16)
		mac, err := newFrameMAC(key)
		if err != nil {
			t.Fatal(err)
		}
		d.mac = mac
		var got []Msg
		for i := 0; i < 64; i++ {
			m, err := d.Next()
			if err != nil {
				if err != io.EOF && !errors.Is(err, ErrCorrupt) {
					t.Fatalf("unexpected error class: %v", err)
				}
				break
			}
			got = append(got, m)
		}
		if len(got) == 0 {
			return
		}
		// the accepted messages, written again in order, are a prefix
		// of the input: the tags pinned every byte and position
		re := tagged(t, key, got...)
		if !bytes.HasPrefix(b, re) {
			t.Fatalf("accepted %d messages that do not re-encode to the input", len(got))
		}
	})
}

// FuzzPointDecoder feeds arbitrary payloads (and header fields) to
// DecodePoint, with and without a key: an error or extents that re-encode
// to the same raw form, never a panic.
func FuzzPointDecoder(f *testing.F) {
	ext := []Extent{
		{Disk: 1, Off: 0, Op: OpData, Len: 4, Data: []byte("data")},
		{Disk: 2, Off: 512, Op: OpZero, Len: 4096},
		{Disk: 1, Off: 9, Op: OpData, Len: 64, Data: bytes.Repeat([]byte("ab"), 32)},
	}
	s, _ := NewSealer(testKey(3))
	for _, c := range []Codec{CodecNone, CodecS2, CodecZstd} {
		for _, sealer := range []*Sealer{nil, s} {
			p := &Point{ID: 5, Kind: PointShortTerm}
			if err := EncodePoint(p, ext, PointOptions{Codec: c, Sealer: sealer, VM: "vm"}); err != nil {
				f.Fatal(err)
			}
			f.Add(uint8(p.Codec), p.Encrypted, p.RawLen, p.Payload)
		}
	}
	f.Fuzz(func(t *testing.T, codec uint8, enc bool, rawLen uint32, payload []byte) {
		p := &Point{ID: 5, Kind: PointShortTerm, Codec: Codec(codec), Encrypted: enc, RawLen: rawLen, Payload: payload}
		opts := PointOptions{VM: "vm", MaxRawLen: 16 << 20}
		if enc {
			opts.Sealer = s
		}
		got, err := DecodePoint(p, opts)
		if err != nil {
			if !errors.Is(err, ErrBadPoint) {
				t.Fatalf("error is not ErrBadPoint: %v", err)
			}
			return
		}
		q := &Point{ID: 5, Kind: PointShortTerm}
		if err := EncodePoint(q, got, PointOptions{Codec: CodecNone}); err != nil {
			t.Fatalf("re-encode accepted extents: %v", err)
		}
		if q.RawLen != rawLen {
			t.Fatalf("raw length %d after round trip, header said %d", q.RawLen, rawLen)
		}
	})
}
