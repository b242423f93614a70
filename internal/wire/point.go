package wire

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// Codec is the compression of a point payload.
type Codec uint8

// Codecs. Types are append-only.
const (
	CodecNone Codec = 0
	CodecS2   Codec = 1
	CodecZstd Codec = 2 // zstd at its fastest level
	codecMax        = CodecZstd
)

// DefaultCodec is the codec picked from BenchmarkCodec on the mixed corpus:
// s2 compresses several times faster than zstd-fastest for a ratio that is
// only a little worse, and the data path is CPU-bound on small machines.
const DefaultCodec = CodecS2

func (c Codec) String() string {
	switch c {
	case CodecNone:
		return "none"
	case CodecS2:
		return "s2"
	case CodecZstd:
		return "zstd"
	}
	return fmt.Sprintf("Codec(%d)", uint8(c))
}

// ParseCodec reads a codec name as printed by String.
func ParseCodec(s string) (Codec, error) {
	switch s {
	case "none":
		return CodecNone, nil
	case "s2":
		return CodecS2, nil
	case "zstd":
		return CodecZstd, nil
	}
	return 0, fmt.Errorf("unknown codec %q (want none, s2 or zstd)", s)
}

// Extent is one entry of a point: a byte range of a disk with its data or
// a run of zeroes.
type Extent struct {
	Disk int32
	Off  int64
	Op   uint8 // OpData or OpZero (OpTrim is accepted and means zeroes)
	Len  int64
	Data []byte // len(Data)==Len for OpData
}

const (
	extentHeaderLen = 4 + 8 + 1 + 8
	// ChunkSize is the unit of compression: bounded memory per chunk and
	// independent chunks.
	ChunkSize = 1 << 20
	// DefaultMaxRawLen bounds the decoded size of one point.
	DefaultMaxRawLen = 1 << 30
	chunkHeaderLen   = 8
	chunkStored      = 1 << 31 // chunk did not compress and is stored as is
	nonceLen         = 12
	sealOverhead     = nonceLen + 16
)

// Errors of the point codec; each wraps ErrBadPoint.
var (
	ErrBadPoint = errors.New("bad point payload")
	ErrAuth     = fmt.Errorf("%w: authentication failed (wrong key, tampered or foreign frame)", ErrBadPoint)
)

// PointOptions configure EncodePoint and DecodePoint.
type PointOptions struct {
	Codec Codec // for encoding; decoding uses the message's codec
	// Sealer encrypts on encode and is required to decode an encrypted
	// point; nil means no encryption.
	Sealer *Sealer
	// VM is bound into the sealed data so a point of one VM cannot be
	// replayed into another VM's stream.
	VM string
	// MaxRawLen bounds the decoded size (0: DefaultMaxRawLen).
	MaxRawLen int
	// Buf, when its capacity suffices, holds the encoded payload (encode)
	// or the decompressed form (decode) instead of a new allocation (a
	// caller's free list); its contents are overwritten. A sealed point's
	// payload is a copy and Buf only scratch.
	Buf []byte
}

// RawSize is the size of the serialised extent list and data.
func RawSize(extents []Extent) int {
	n := 4
	for i := range extents {
		n += extentHeaderLen
		if extents[i].Op == OpData {
			n += len(extents[i].Data)
		}
	}
	return n
}

// EncodePoint fills p.Codec, p.Encrypted, p.RawLen and p.Payload from the
// extents; p.ID, Time, Kind and Marker must be set first because they are
// authenticated when sealing.
func EncodePoint(p *Point, extents []Extent, opts PointOptions) error {
	for i := range extents {
		e := &extents[i]
		if e.Off < 0 || e.Len < 0 {
			return fmt.Errorf("encode point %d: extent %d: negative offset or length", p.ID, i)
		}
		switch e.Op {
		case OpData:
			if int64(len(e.Data)) != e.Len {
				return fmt.Errorf("encode point %d: extent %d: %d data bytes, Len %d", p.ID, i, len(e.Data), e.Len)
			}
		case OpZero, OpTrim:
		default:
			return fmt.Errorf("encode point %d: extent %d: unknown op %d", p.ID, i, e.Op)
		}
	}
	size := RawSize(extents)
	if size > math.MaxUint32 {
		return fmt.Errorf("encode point %d: %d bytes exceed a point's limit", p.ID, size)
	}
	head := make([]byte, 0, 4+len(extents)*extentHeaderLen)
	head = be.AppendUint32(head, uint32(len(extents)))
	for i := range extents {
		e := &extents[i]
		head = be.AppendUint32(head, uint32(e.Disk))
		head = be.AppendUint64(head, uint64(e.Off))
		head = append(head, e.Op)
		head = be.AppendUint64(head, uint64(e.Len))
	}
	p.RawLen = uint32(size)
	p.Codec = opts.Codec
	var body []byte
	switch opts.Codec {
	case CodecNone:
		body = append(opts.Buf[:0], head...)
		for i := range extents {
			if extents[i].Op == OpData {
				body = append(body, extents[i].Data...)
			}
		}
	case CodecS2, CodecZstd:
		cw := chunkWriter{codec: opts.Codec, out: opts.Buf[:0]}
		short := 1 // the head's chunk
		for i := range extents {
			if extents[i].Op == OpData && len(extents[i].Data) >= ChunkSize {
				short++ // a short chunk may end before each big extent
			}
		}
		if bound := compressedBound(opts.Codec, size) + short*chunkHeaderLen; cap(cw.out) < bound {
			// room for the worst case, with slack so that a reused
			// buffer also fits the next, slightly larger point
			cw.out = make([]byte, 0, bound+bound/4)
		}
		cw.write(head)
		for i := range extents {
			if extents[i].Op == OpData {
				cw.write(extents[i].Data)
			}
		}
		body = cw.finish()
	default:
		return fmt.Errorf("encode point %d: unknown codec %d", p.ID, opts.Codec)
	}
	p.Encrypted = opts.Sealer != nil
	if p.Encrypted {
		body = opts.Sealer.seal(nil, body, pointAD(p, opts.VM))
	}
	p.Payload = body
	return nil
}

// SealPoint returns a sealed copy of an encoded clear point, so that the
// encryption of a point can be chosen per connection after it was
// compressed; p itself stays clear (it may be resent in clear elsewhere).
func SealPoint(p *Point, s *Sealer, vm string) (*Point, error) {
	return SealPointTo(nil, p, s, vm)
}

// SealPointTo is SealPoint building the sealed payload in dst's storage
// when it is large enough (a sender's buffer, free again once the point
// is written out); dst must not overlap p.Payload.
func SealPointTo(dst []byte, p *Point, s *Sealer, vm string) (*Point, error) {
	if p.Encrypted {
		return nil, fmt.Errorf("seal point %d: already sealed", p.ID)
	}
	if s == nil {
		return nil, fmt.Errorf("seal point %d: no key", p.ID)
	}
	out := *p
	out.frame = nil // the sealed copy does not own p's read buffer
	out.Encrypted = true
	out.Payload = s.seal(dst, p.Payload, pointAD(p, vm))
	return &out, nil
}

// DecodePoint verifies, decrypts and decompresses a point payload and
// parses its extents. Extent data aliases one freshly allocated buffer
// (or, for an unsealed CodecNone point, p.Payload).
func DecodePoint(p *Point, opts PointOptions) ([]Extent, error) {
	_, ext, err := OpenPoint(p, opts)
	return ext, err
}

// OpenPoint is DecodePoint that also returns the point in plain form
// (CodecNone, not encrypted), sharing its payload with the extents, so a
// relay can forward it without serialising the extents again.
func OpenPoint(p *Point, opts PointOptions) (*Point, []Extent, error) {
	raw, err := openRaw(p, opts)
	if err != nil {
		return nil, nil, err
	}
	ext, err := parseExtents(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: point %d: %w", ErrBadPoint, p.ID, err)
	}
	plain := &Point{ID: p.ID, Time: p.Time, Kind: p.Kind, Marker: p.Marker, Codec: CodecNone, RawLen: p.RawLen, Payload: raw}
	return plain, ext, nil
}

func openRaw(p *Point, opts PointOptions) ([]byte, error) {
	maxRaw := opts.MaxRawLen
	if maxRaw <= 0 {
		maxRaw = DefaultMaxRawLen
	}
	if uint64(p.RawLen) > uint64(maxRaw) {
		return nil, fmt.Errorf("%w: point %d: raw length %d > %d", ErrBadPoint, p.ID, p.RawLen, maxRaw)
	}
	body := p.Payload
	if p.Encrypted {
		if opts.Sealer == nil {
			return nil, fmt.Errorf("%w: point %d is encrypted and no key is configured", ErrBadPoint, p.ID)
		}
		var err error
		if body, err = opts.Sealer.open(body, pointAD(p, opts.VM)); err != nil {
			return nil, fmt.Errorf("point %d: %w", p.ID, err)
		}
	} else if opts.Sealer != nil {
		return nil, fmt.Errorf("%w: point %d is not encrypted but encryption is required", ErrBadPoint, p.ID)
	}
	switch p.Codec {
	case CodecNone:
		if len(body) != int(p.RawLen) {
			return nil, fmt.Errorf("%w: point %d: %d bytes, raw length %d", ErrBadPoint, p.ID, len(body), p.RawLen)
		}
		return body, nil
	case CodecS2, CodecZstd:
		raw, err := decompressChunks(p.Codec, body, int(p.RawLen), opts.Buf)
		if err != nil {
			return nil, fmt.Errorf("%w: point %d: %w", ErrBadPoint, p.ID, err)
		}
		return raw, nil
	}
	return nil, fmt.Errorf("%w: point %d: unknown codec %d", ErrBadPoint, p.ID, p.Codec)
}

func parseExtents(raw []byte) ([]Extent, error) {
	r := reader{b: raw}
	n := r.u32()
	if r.err != nil {
		return nil, r.err
	}
	if uint64(n)*extentHeaderLen > uint64(len(r.b)) {
		return nil, fmt.Errorf("%d extents do not fit in %d bytes", n, len(r.b))
	}
	ext := make([]Extent, n)
	var data int64
	for i := range ext {
		e := &ext[i]
		e.Disk = int32(r.u32())
		e.Off = int64(r.u64())
		e.Op = r.u8()
		e.Len = int64(r.u64())
		if e.Off < 0 || e.Len < 0 || e.Off > math.MaxInt64-e.Len {
			return nil, fmt.Errorf("extent %d: bad range %d+%d", i, e.Off, e.Len)
		}
		switch e.Op {
		case OpData:
			data += e.Len
			if data > int64(len(raw)) {
				return nil, fmt.Errorf("extent %d: data beyond the payload", i)
			}
		case OpZero, OpTrim:
		default:
			return nil, fmt.Errorf("extent %d: unknown op %d", i, e.Op)
		}
	}
	if data != int64(len(r.b)) {
		return nil, fmt.Errorf("extents hold %d data bytes, payload has %d", data, len(r.b))
	}
	for i := range ext {
		if ext[i].Op == OpData {
			ext[i].Data = r.take(int(ext[i].Len))
		}
	}
	return ext, r.done()
}

var (
	zencOnce sync.Once
	zenc     *zstd.Encoder
	zdecOnce sync.Once
	zdec     *zstd.Decoder
)

// zstd encoders and decoders are safe for concurrent EncodeAll/DecodeAll
// and costly to create, so one of each is shared.
func zstdEncoder() *zstd.Encoder {
	zencOnce.Do(func() {
		zenc, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest),
			zstd.WithEncoderConcurrency(2), zstd.WithLowerEncoderMem(true))
	})
	return zenc
}

func zstdDecoder() *zstd.Decoder {
	zdecOnce.Do(func() {
		zdec, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(2),
			zstd.WithDecoderMaxMemory(ChunkSize), zstd.WithDecoderMaxWindow(ChunkSize))
	})
	return zdec
}

// compressedBound is the most a compressed payload of raw bytes can take:
// a chunk that does not compress is stored as is.
func compressedBound(c Codec, raw int) int {
	n := (raw + ChunkSize - 1) / ChunkSize
	if c == CodecS2 {
		// s2 writes into room for its worst case before the chunk falls
		// back to stored
		return raw + n*chunkHeaderLen + (s2.MaxEncodedLen(ChunkSize) - ChunkSize)
	}
	return raw + n*chunkHeaderLen
}

// chunkWriter compresses a byte stream in chunks of at most ChunkSize as
// it is written: per chunk {rawLen uint32, compLen uint32 (high bit:
// stored)} then the bytes. A whole chunk available in one write is
// compressed in place; small pieces are gathered in a scratch chunk, so a
// point's raw form is never built. A write of ChunkSize or more first
// ends the scratch chunk short, so that its own chunks start at its
// start and need no copy (otherwise the extent list ahead of the data
// would put every chunk boundary inside a write).
type chunkWriter struct {
	codec   Codec
	out     []byte
	scratch []byte
}

func (w *chunkWriter) write(b []byte) {
	if len(b) >= ChunkSize && len(w.scratch) > 0 {
		w.chunk(w.scratch)
		w.scratch = w.scratch[:0]
	}
	for len(b) > 0 {
		if len(w.scratch) == 0 && len(b) >= ChunkSize {
			w.chunk(b[:ChunkSize])
			b = b[ChunkSize:]
			continue
		}
		if w.scratch == nil {
			w.scratch = (*chunkScratch.Get().(*[]byte))[:0]
		}
		n := min(len(b), ChunkSize-len(w.scratch))
		w.scratch = append(w.scratch, b[:n]...)
		b = b[n:]
		if len(w.scratch) == ChunkSize {
			w.chunk(w.scratch)
			w.scratch = w.scratch[:0]
		}
	}
}

func (w *chunkWriter) finish() []byte {
	if w.scratch != nil {
		if len(w.scratch) > 0 {
			w.chunk(w.scratch)
		}
		b := w.scratch[:0]
		chunkScratch.Put(&b)
		w.scratch = nil
	}
	return w.out
}

var chunkScratch = sync.Pool{New: func() any { b := make([]byte, 0, ChunkSize); return &b }}

func (w *chunkWriter) chunk(chunk []byte) {
	out := w.out
	hdr := len(out)
	out = append(out, 0, 0, 0, 0, 0, 0, 0, 0)
	start := len(out)
	switch w.codec {
	case CodecS2:
		out = slices.Grow(out, s2.MaxEncodedLen(len(chunk)))
		out = out[:start+s2.MaxEncodedLen(len(chunk))]
		n := len(s2.Encode(out[start:], chunk))
		out = out[:start+n]
	case CodecZstd:
		out = zstdEncoder().EncodeAll(chunk, out)
	}
	comp := uint32(len(out) - start)
	if int(comp) >= len(chunk) {
		out = append(out[:start], chunk...)
		comp = uint32(len(chunk)) | chunkStored
	}
	be.PutUint32(out[hdr:], uint32(len(chunk)))
	be.PutUint32(out[hdr+4:], comp)
	w.out = out
}

func decompressChunks(c Codec, body []byte, rawLen int, buf []byte) ([]byte, error) {
	// Grow as chunks decode rather than trusting rawLen up front: a forged
	// header cannot make us allocate more than the input justifies.
	out := buf[:0]
	if cap(buf) < rawLen {
		out = make([]byte, 0, min(rawLen, len(body)*4+64))
	}
	for len(body) > 0 {
		if len(body) < chunkHeaderLen {
			return nil, errors.New("truncated chunk header")
		}
		n := int(be.Uint32(body))
		comp := be.Uint32(body[4:])
		stored := comp&chunkStored != 0
		clen := int(comp &^ chunkStored)
		body = body[chunkHeaderLen:]
		if n == 0 || n > ChunkSize || len(out)+n > rawLen {
			return nil, fmt.Errorf("bad chunk size %d", n)
		}
		if clen > len(body) {
			return nil, errors.New("truncated chunk")
		}
		src := body[:clen]
		body = body[clen:]
		start := len(out)
		if cap(out)-start < n {
			grown := make([]byte, start, min(rawLen, max(2*cap(out), start+n)))
			copy(grown, out)
			out = grown
		}
		dst := out[start : start+n]
		switch {
		case stored:
			if clen != n {
				return nil, fmt.Errorf("stored chunk of %d bytes, header says %d", clen, n)
			}
			copy(dst, src)
		case c == CodecS2:
			dl, err := s2.DecodedLen(src)
			if err != nil || dl != n {
				return nil, fmt.Errorf("s2 chunk: decoded length %d, want %d: %v", dl, n, err)
			}
			d, err := s2.Decode(dst, src)
			if err != nil {
				return nil, fmt.Errorf("s2 chunk: %w", err)
			}
			if len(d) != n || &d[0] != &dst[0] {
				return nil, errors.New("s2 chunk: size mismatch")
			}
		case c == CodecZstd:
			d, err := zstdDecoder().DecodeAll(src, dst[:0])
			if err != nil {
				return nil, fmt.Errorf("zstd chunk: %w", err)
			}
			if len(d) != n || &d[0] != &dst[0] {
				return nil, fmt.Errorf("zstd chunk: %d bytes, want %d", len(d), n)
			}
		}
		out = out[:start+n]
	}
	if len(out) != rawLen {
		return nil, fmt.Errorf("decoded %d bytes, raw length %d", len(out), rawLen)
	}
	return out, nil
}

func pointAD(p *Point, vm string) []byte {
	ad := make([]byte, 0, PointFixedLen+len(vm)+2)
	ad = be.AppendUint64(ad, p.ID)
	ad = be.AppendUint64(ad, uint64(p.Time))
	ad = append(ad, p.Kind, p.Marker, uint8(p.Codec))
	ad = be.AppendUint32(ad, p.RawLen)
	return appendString(ad, vm)
}

// KeySize is the AES-256 key length.
const KeySize = 32

// Sealer seals point payloads with AES-256-GCM. The 12-byte nonce is a
// random 4-byte session ID and an 8-byte counter, so a nonce never repeats
// within a Sealer; the nonce travels in front of the ciphertext. One
// Sealer is safe for concurrent use.
type Sealer struct {
	aead    cipher.AEAD
	session [4]byte
	counter atomic.Uint64
}

// NewSealer builds a Sealer from a 32-byte key.
func NewSealer(key []byte) (*Sealer, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("encryption key: %d bytes, want %d", len(key), KeySize)
	}
	blk, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("encryption key: %w", err)
	}
	aead, err := cipher.NewGCM(blk)
	if err != nil {
		return nil, fmt.Errorf("encryption key: %w", err)
	}
	s := &Sealer{aead: aead}
	if _, err := rand.Read(s.session[:]); err != nil {
		return nil, fmt.Errorf("session id: %w", err)
	}
	return s, nil
}

// seal returns nonce, ciphertext and tag of plain, in dst's storage when
// it is large enough.
func (s *Sealer) seal(dst, plain, ad []byte) []byte {
	ctr := s.counter.Add(1)
	out := dst[:0]
	if need := nonceLen + len(plain) + s.aead.Overhead(); cap(out) < need {
		out = make([]byte, 0, need)
	}
	out = out[:nonceLen]
	copy(out, s.session[:])
	be.PutUint64(out[4:], ctr)
	return s.aead.Seal(out, out[:nonceLen], plain, ad)
}

func (s *Sealer) open(sealed, ad []byte) ([]byte, error) {
	if len(sealed) < sealOverhead {
		return nil, ErrAuth
	}
	plain, err := s.aead.Open(nil, sealed[:nonceLen], sealed[nonceLen:], ad)
	if err != nil {
		return nil, ErrAuth
	}
	return plain, nil
}
