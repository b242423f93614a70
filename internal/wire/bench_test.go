package wire

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"
)

// mixedCorpus is a third zeroes, a third text-like data and a third
// random bytes, as 64 KiB extents: what guest writes roughly look like.
func mixedCorpus(size int) []Extent {
	r := rand.New(rand.NewPCG(9, 9))
	words := []string{"continuum", "journal", "block", "the", "of", "replica", "2026-11-23", "INFO", "write", "0x7f3a", "\n", " ", "user=42"}
	const ext = 64 << 10
	var out []Extent
	for off := 0; off < size; off += ext {
		data := make([]byte, ext)
		switch (off / ext) % 3 {
		case 0: // zeroes as data, as a guest writing zeroed blocks sends them
		case 1:
			var b bytes.Buffer
			for b.Len() < ext {
				b.WriteString(words[r.IntN(len(words))])
				b.WriteByte(' ')
			}
			copy(data, b.Bytes())
		case 2:
			for i := 0; i < ext; i += 8 {
				be.PutUint64(data[i:], r.Uint64())
			}
		}
		out = append(out, Extent{Disk: 2000, Off: int64(off), Op: OpData, Len: ext, Data: data})
	}
	return out
}

// BenchmarkCodec compares the codecs on the mixed corpus: MB/s of encode
// and decode (b.SetBytes is the raw size) and the compression ratio.
// Run: go test -run XXX -bench Codec -benchtime 20x ./internal/wire/
func BenchmarkCodec(b *testing.B) {
	corpus := mixedCorpus(24 << 20)
	raw := RawSize(corpus)
	for _, c := range []Codec{CodecNone, CodecS2, CodecZstd} {
		for _, enc := range []bool{false, true} {
			opts := PointOptions{Codec: c, VM: "vm"}
			name := c.String()
			if enc {
				opts.Sealer, _ = NewSealer(testKey(1))
				name += "+aes"
			}
			b.Run(fmt.Sprintf("encode/%s", name), func(b *testing.B) {
				b.SetBytes(int64(raw))
				var p Point
				for b.Loop() {
					p = Point{ID: 1, Kind: PointShortTerm}
					if err := EncodePoint(&p, corpus, opts); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(raw)/float64(len(p.Payload)), "ratio")
			})
			p := Point{ID: 1, Kind: PointShortTerm}
			if err := EncodePoint(&p, corpus, opts); err != nil {
				b.Fatal(err)
			}
			b.Run(fmt.Sprintf("decode/%s", name), func(b *testing.B) {
				b.SetBytes(int64(raw))
				for b.Loop() {
					if _, err := DecodePoint(&p, opts); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
