package wire

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/continuum-cdp/continuum/internal/bufpool"
)

// Frame layout constants.
const (
	Magic0     = 'C'
	Magic1     = 'W'
	Version    = 1
	HeaderLen  = 9
	TrailerLen = 4
	// DefaultMaxPayload bounds a frame; a larger length is treated as
	// corruption. It leaves room for a point cut at a byte limit plus the
	// write that crossed it, sealed and framed. Readers allocate as bytes
	// arrive, so a forged length cannot make them allocate it up front.
	DefaultMaxPayload = 256 << 20
)

// FlagSkippable on a frame lets a reader that does not know its type skip
// it instead of failing, so optional messages can be added later.
const FlagSkippable uint8 = 1 << 0

// FlagUnchecked on a frame says that its trailer holds no CRC: the frame
// crossed a TLS connection, whose AEAD already authenticates every byte of
// it, so computing and checking a CRC as well only costs CPU on every hop.
// A reader accepts such a frame only from a TLS connection; anywhere else
// it is corrupt.
const FlagUnchecked uint8 = 1 << 1

// FlagTagged on a frame says that its trailer is a TagLen-byte integrity
// tag instead of a CRC (integrity.go). A reader accepts such a frame only
// on a connection that switched to integrity frames, and from then on
// nothing else.
const FlagTagged uint8 = 1 << 2

const knownFrameFlags = FlagSkippable | FlagUnchecked | FlagTagged

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Frame errors; every decode failure wraps ErrCorrupt.
var (
	ErrCorrupt  = errors.New("corrupt frame")
	ErrTooLarge = errors.New("frame too large")
)

// AppendFrame appends m as one complete frame to dst.
func AppendFrame(dst []byte, m Msg) ([]byte, error) {
	if err := checkMsg(m); err != nil {
		return dst, err
	}
	start := len(dst)
	dst = append(dst, Magic0, Magic1, Version, byte(m.Type()), frameFlags(m), 0, 0, 0, 0)
	dst = m.appendFixed(dst)
	dst = append(dst, m.tail()...)
	n := len(dst) - start - HeaderLen
	if n > math.MaxUint32 {
		return dst[:start], fmt.Errorf("encode %s: %w (%d bytes)", m.Type(), ErrTooLarge, n)
	}
	be.PutUint32(dst[start+5:], uint32(n))
	return be.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli)), nil
}

func frameFlags(m Msg) uint8 {
	switch m.Type() {
	case TypeStatus, TypeHeartbeat, TypeFeatures:
		return FlagSkippable
	}
	return 0
}

// checkMsg rejects what the encoding cannot represent, so a sender learns
// of it instead of the receiver seeing a garbled message.
func checkMsg(m Msg) error {
	long := func(s ...string) error {
		for _, v := range s {
			if len(v) > math.MaxUint16 {
				return fmt.Errorf("encode %s: string of %d bytes exceeds 65535", m.Type(), len(v))
			}
		}
		return nil
	}
	switch v := m.(type) {
	case *Hello:
		if len(v.Disks) > math.MaxUint16 {
			return fmt.Errorf("encode Hello: %d disks", len(v.Disks))
		}
		return long(v.Role, v.NodeID, v.VM)
	case *HelloAck:
		return long(v.Err)
	case *Status:
		return long(v.VM, v.Mode, v.Msg)
	case *Error:
		return long(v.Msg)
	case *Write:
		if err := v.Validate(); err != nil {
			return fmt.Errorf("encode Write: %w", err)
		}
	}
	return nil
}

// DecodeFrame parses one whole frame from the start of b and returns the
// message and the number of bytes used. io.ErrUnexpectedEOF means b holds
// only part of a frame.
func DecodeFrame(b []byte, maxPayload int) (Msg, int, error) {
	if maxPayload <= 0 {
		maxPayload = DefaultMaxPayload
	}
	if len(b) < HeaderLen {
		return nil, 0, io.ErrUnexpectedEOF
	}
	t, flags, n, err := parseHeader(b[:HeaderLen], maxPayload)
	if err != nil {
		return nil, 0, err
	}
	total := HeaderLen + n + TrailerLen
	if len(b) < total {
		return nil, 0, io.ErrUnexpectedEOF
	}
	m, _, err := decodeBody(t, flags, b[:total], false, false, nil)
	return m, total, err
}

func parseHeader(h []byte, maxPayload int) (MsgType, uint8, int, error) {
	if h[0] != Magic0 || h[1] != Magic1 {
		return 0, 0, 0, fmt.Errorf("%w: bad magic %#x%#x", ErrCorrupt, h[0], h[1])
	}
	if h[2] != Version {
		return 0, 0, 0, fmt.Errorf("%w: unsupported version %d", ErrCorrupt, h[2])
	}
	if h[4]&^knownFrameFlags != 0 {
		return 0, 0, 0, fmt.Errorf("%w: unknown flags %#x", ErrCorrupt, h[4])
	}
	n := be.Uint32(h[5:])
	if uint64(n) > uint64(maxPayload) {
		return 0, 0, 0, fmt.Errorf("%w: %w: payload %d > %d", ErrCorrupt, ErrTooLarge, n, maxPayload)
	}
	return MsgType(h[3]), h[4], int(n), nil
}

// ownedDecoder is a message that can keep its bulk data as a slice of the
// frame instead of copying it out; keep records the whole frame so that
// Release can hand it back.
type ownedDecoder interface {
	decodeOwned(p []byte) error
	keep(frame []byte)
}

// decodeBody checks the CRC (or, with mac, the integrity tag) of a whole
// frame f and decodes its payload. It returns (nil, false, nil) for a
// skippable frame of unknown type. With give, the message may keep f;
// kept says it did. An unchecked frame (FlagUnchecked) is accepted only
// when authenticated says the stream is TLS; with mac every frame must be
// tagged and nothing else is.
func decodeBody(t MsgType, flags uint8, f []byte, give, authenticated bool, mac *frameMAC) (m Msg, kept bool, err error) {
	var body []byte
	switch {
	case (flags&FlagTagged != 0) != (mac != nil):
		return nil, false, tagMismatch(t, mac != nil)
	case mac != nil:
		if err := mac.check(t, f); err != nil {
			return nil, false, err
		}
		body = f[:len(f)-TagLen]
	case flags&FlagUnchecked != 0:
		if !authenticated {
			return nil, false, fmt.Errorf("%w: %s: frame without a checksum on a connection that is not TLS", ErrCorrupt, t)
		}
		body = f[:len(f)-TrailerLen]
	default:
		body = f[:len(f)-TrailerLen]
		if got, want := crc32.Checksum(body, castagnoli), be.Uint32(f[len(f)-TrailerLen:]); got != want {
			return nil, false, fmt.Errorf("%w: %s: checksum %#08x, want %#08x", ErrCorrupt, t, got, want)
		}
	}
	m = newMsg(t)
	if m == nil {
		if flags&FlagSkippable != 0 {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("%w: unknown type %d", ErrCorrupt, uint8(t))
	}
	if od, ok := m.(ownedDecoder); ok && give {
		err, kept = od.decodeOwned(body[HeaderLen:]), true
		if err == nil {
			od.keep(f)
		}
	} else {
		err = m.decode(body[HeaderLen:])
	}
	if err != nil {
		return nil, false, fmt.Errorf("%w: %s: %w", ErrCorrupt, t, err)
	}
	return m, kept, nil
}

// tagMismatch is the error for a frame whose FlagTagged does not match the
// stream: integrity says the stream switched to integrity frames.
func tagMismatch(t MsgType, integrity bool) error {
	if integrity {
		return fmt.Errorf("%w: %s: frame without an integrity tag on a connection that switched to integrity frames", ErrCorrupt, t)
	}
	return fmt.Errorf("%w: %s: integrity frame on a connection that did not agree to them", ErrCorrupt, t)
}

// Decoder reads frames from a stream, reusing one buffer.
type Decoder struct {
	r          io.Reader
	maxPayload int
	buf        []byte
	// small is the buffer of headers and small frames, kept for the
	// stream's life: a big frame's buffer goes to its message, and the
	// next frame starts in small again instead of a fresh allocation
	small []byte
	// reuse: big frames are read into released buffers (the reader
	// calls Release); others get buffers of their exact size
	reuse bool
	// authenticated: the stream is TLS, so unchecked frames are accepted
	authenticated bool
	// mac: the stream carries integrity frames, checked with it
	mac *frameMAC
}

// NewDecoder reads frames from r; maxPayload <= 0 means DefaultMaxPayload.
func NewDecoder(r io.Reader, maxPayload int) *Decoder {
	if maxPayload <= 0 {
		maxPayload = DefaultMaxPayload
	}
	small := make([]byte, 0, 64<<10)
	return &Decoder{r: r, maxPayload: maxPayload, buf: small, small: small}
}

// Next returns the next message. io.EOF means the stream ended cleanly
// between frames; anything else is fatal for the stream.
func (d *Decoder) Next() (Msg, error) {
	for {
		d.buf = d.buf[:HeaderLen]
		if _, err := io.ReadFull(d.r, d.buf); err != nil {
			if err == io.ErrUnexpectedEOF {
				return nil, fmt.Errorf("%w: truncated header", ErrCorrupt)
			}
			return nil, err
		}
		t, flags, n, err := parseHeader(d.buf, d.maxPayload)
		if err != nil {
			return nil, err
		}
		total := HeaderLen + n + TrailerLen
		if (flags&FlagTagged != 0) != (d.mac != nil) {
			// the trailer's size depends on it: refuse before reading on
			return nil, tagMismatch(t, d.mac != nil)
		}
		if d.mac != nil {
			total = HeaderLen + n + TagLen
		}
		if err := d.readBody(total); err != nil {
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return nil, fmt.Errorf("%w: %s truncated", ErrCorrupt, t)
			}
			return nil, err
		}
		// A big frame's buffer goes to the message rather than being
		// copied; small frames are copied so the buffer is reused.
		m, kept, err := decodeBody(t, flags, d.buf, total > giveAway, d.authenticated, d.mac)
		if kept || cap(d.buf) > 8<<20 {
			// Do not pin (or share) a big buffer. Only a frame over
			// giveAway is kept, and it never fits in small.
			d.buf = d.small[:0]
		}
		if err != nil {
			return nil, err
		}
		if m != nil {
			return m, nil
		}
	}
}

// giveAway is the frame size above which a decoded message keeps the
// read buffer instead of copying its bulk data.
const giveAway = 256 << 10

// directAlloc is the frame size up to which the read buffer is allocated
// at once; beyond it the buffer grows (doubling from 1 MiB) as bytes
// arrive, so a forged length cannot make a reader allocate it up front.
const directAlloc = 64 << 20

// readBody reads the rest of a frame of total bytes into d.buf.
func (d *Decoder) readBody(total int) error {
	have := HeaderLen
	for have < total {
		if cap(d.buf) < total {
			want := total
			if total > directAlloc {
				want = min(total, max(2*cap(d.buf), 1<<20))
			}
			var nb []byte
			if d.reuse && want == total && total > giveAway {
				// given away to the message: from the pool of
				// released frames
				nb = getFrame(total)[:have]
			} else {
				nb = make([]byte, have, want)
			}
			copy(nb, d.buf[:have])
			d.buf = nb
		}
		end := min(total, cap(d.buf))
		d.buf = d.buf[:end]
		if _, err := io.ReadFull(d.r, d.buf[have:end]); err != nil {
			return err
		}
		have = end
	}
	d.buf = d.buf[:total]
	return nil
}

// frames holds released frame buffers by size class, across garbage
// collections: reading into one spares the allocation, zeroing and page
// faults of a fresh buffer for every big frame. It keeps at most
// FramePoolBytes; a process reads and holds a few points and a cut's
// worth of writes at a time.
var frames = bufpool.New(FramePoolBytes, frameClass)

// FramePoolBytes bounds the released frame buffers a process keeps.
const FramePoolBytes = 128 << 20

// frameClass rounds n up to its size class: steps of 1/16 of its power of
// two (at least 64 KiB), so a buffer is at most 1/8 larger than needed.
func frameClass(n int) int { return bufpool.Sixteenths(n) }

func getFrame(n int) []byte { return frames.Get(n)[:0] }

func putFrame(b []byte) {
	if cap(b) > directAlloc {
		return // not a buffer of getFrame's
	}
	frames.Put(b)
}

// Release hands back the read buffer that a big Write or Point kept (see
// Decoder.Next), once nothing uses its data any more: Data or Payload and
// whatever was decoded from them without a copy. The next big frame of a
// similar size is read into it. The message's data is cleared; a message
// that kept no buffer is left alone, and not releasing is always safe.
func Release(m Msg) {
	switch v := m.(type) {
	case *Write:
		if v.frame != nil {
			putFrame(v.frame)
			v.frame, v.Data = nil, nil
		}
	case *Point:
		if v.frame != nil {
			putFrame(v.frame)
			v.frame, v.Payload = nil, nil
		}
	}
}

// Conn is a framed connection. WriteMsg and Flush may be called from
// several goroutines; ReadMsg from one at a time.
type Conn struct {
	nc   net.Conn
	dec  *Decoder
	rbuf *bufio.Reader // the decoder's reader
	// rmu is held by ReadMsg, so that a switch to integrity frames can
	// tell that no read is in progress
	rmu sync.Mutex

	wmu sync.Mutex
	bw  *bufio.Writer
	hdr []byte

	// a TLS connection over a coalescingConn: writes are held (wmu)
	tls    *tls.Conn
	coal   *coalescingConn
	hsDone bool // the handshake was seen complete (wmu)
	// announce: Features goes out ahead of the first frame (TLS only;
	// wmu)
	announce bool
	// frames are written unchecked (FlagUnchecked): the connection is
	// TLS and the peer announced FeatureUncheckedFrames. Set by the
	// reader, read by writers.
	unchecked atomic.Bool

	// integrity frames (integrity.go). wantIntegrity, agreed, switchWrite
	// and wmac are guarded by wmu; switchRead belongs to the reader.
	peerBits      atomic.Uint64 // the peer's announced features
	wantIntegrity bool          // ask for them (the side sending Hello)
	agreed        bool          // grant them (the side answering Hello)
	// switchWrite: the next frame this side writes (its answer) is its
	// last over TLS; switchRead: so is the next one it reads (the
	// peer's answer)
	switchWrite, switchRead bool
	wmac                    *frameMAC
	integrity               atomic.Bool
	isTLS                   bool // set once
}

// ConnOption tunes a Conn.
type ConnOption func(*connOpts)

type connOpts struct {
	maxPayload, bufSize int
	reuse               bool
}

// WithMaxPayload sets the largest payload accepted from the peer.
func WithMaxPayload(n int) ConnOption { return func(o *connOpts) { o.maxPayload = n } }

// WithBufferSize sets the read and write buffer size.
func WithBufferSize(n int) ConnOption { return func(o *connOpts) { o.bufSize = n } }

// WithFrameReuse reads big frames into buffers given back by Release; for
// a reader that releases its messages.
func WithFrameReuse() ConnOption { return func(o *connOpts) { o.reuse = true } }

// NewConn wraps nc.
func NewConn(nc net.Conn, opts ...ConnOption) *Conn {
	o := connOpts{maxPayload: DefaultMaxPayload, bufSize: 256 << 10}
	for _, f := range opts {
		f(&o)
	}
	rbuf := bufio.NewReaderSize(nc, o.bufSize)
	dec := NewDecoder(rbuf, o.maxPayload)
	dec.reuse = o.reuse
	c := &Conn{
		nc:   nc,
		dec:  dec,
		rbuf: rbuf,
		bw:   bufio.NewWriterSize(nc, o.bufSize),
		hdr:  make([]byte, 0, 256),
	}
	c.tls, c.coal = coalescer(nc)
	if _, ok := nc.(*tls.Conn); ok {
		// this reader takes unchecked frames from a TLS stream; the
		// writer sends them once the peer says it does too
		c.announce, dec.authenticated, c.isTLS = true, true, true
	}
	return c
}

func noRelease() error { return nil }

// holdLocked makes the TLS records of the writes until the returned
// release one large write rather than one write each (see
// coalescingConn). Before the handshake is complete it does nothing: the
// handshake's own messages must not wait. Called with wmu held.
func (c *Conn) holdLocked() func() error {
	if c.coal == nil || c.wmac != nil {
		return noRelease
	}
	if !c.hsDone {
		if c.hsDone = c.tls.ConnectionState().HandshakeComplete; !c.hsDone {
			return noRelease
		}
	}
	c.coal.hold()
	return c.coal.release
}

// WriteMsg buffers one frame; call Flush (or Send) to push it out. Bulk
// data is written straight from the message without an extra copy.
func (c *Conn) WriteMsg(m Msg) error {
	if err := checkMsg(m); err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	release := c.holdLocked()
	err := c.writeMsgLocked(m)
	// the frame after the announcement that agreed (written just now
	// ahead of a first frame, or earlier) is the last over TLS
	last := c.switchWrite && m.Type() != TypeFeatures
	if rerr := release(); err == nil && rerr != nil {
		err = fmt.Errorf("write %s: %w", m.Type(), rerr)
	}
	if err == nil && last {
		// the answer was this side's last frame over TLS
		c.switchWrite = false
		err = c.switchLocked(false)
	}
	return err
}

func (c *Conn) writeMsgLocked(m Msg) error {
	if c.announce {
		c.announce = false
		bits := c.announceBits()
		c.switchWrite = bits&FeatureIntegrityAgreed != 0
		if err := c.writeMsgLocked(&Features{Bits: bits}); err != nil {
			return err
		}
	}
	// the announcement is always checked: any reader can pass over it
	unchecked := c.unchecked.Load() && m.Type() != TypeFeatures
	flags := frameFlags(m)
	switch {
	case c.wmac != nil:
		unchecked = false
		flags |= FlagTagged
	case unchecked:
		flags |= FlagUnchecked
	}
	h := append(c.hdr[:0], Magic0, Magic1, Version, byte(m.Type()), flags, 0, 0, 0, 0)
	h = m.appendFixed(h)
	tail := m.tail()
	n := len(h) - HeaderLen + len(tail)
	if n > math.MaxUint32 {
		return fmt.Errorf("write %s: %w (%d bytes)", m.Type(), ErrTooLarge, n)
	}
	be.PutUint32(h[5:], uint32(n))
	c.hdr = h
	if _, err := c.bw.Write(h); err != nil {
		return fmt.Errorf("write %s: %w", m.Type(), err)
	}
	if _, err := c.bw.Write(tail); err != nil {
		return fmt.Errorf("write %s: %w", m.Type(), err)
	}
	var trailer []byte
	switch {
	case c.wmac != nil:
		trailer = c.wmac.next(h, tail)
	case unchecked:
		trailer = be.AppendUint32(h[len(h):], 0)
	default:
		trailer = be.AppendUint32(h[len(h):], crc32.Update(crc32.Checksum(h, castagnoli), castagnoli, tail))
	}
	if _, err := c.bw.Write(trailer); err != nil {
		return fmt.Errorf("write %s: %w", m.Type(), err)
	}
	return nil
}

// Flush pushes buffered frames to the network.
func (c *Conn) Flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	release := c.holdLocked()
	err := c.bw.Flush()
	if rerr := release(); err == nil {
		err = rerr
	}
	if err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	return nil
}

// Send writes m and flushes.
func (c *Conn) Send(m Msg) error {
	if err := c.WriteMsg(m); err != nil {
		return err
	}
	return c.Flush()
}

// ReadMsg returns the next message; see Decoder.Next.
func (c *Conn) ReadMsg() (Msg, error) {
	c.rmu.Lock()
	m, err := c.readMsgLocked()
	c.rmu.Unlock()
	if err == nil && c.switchRead {
		// the peer's answer was its last frame over TLS
		c.switchRead = false
		c.wmu.Lock()
		err = c.switchLocked(true)
		c.wmu.Unlock()
		if err != nil {
			return nil, err
		}
	}
	return m, err
}

func (c *Conn) readMsgLocked() (Msg, error) {
	for {
		m, err := c.dec.Next()
		if err != nil {
			return nil, err
		}
		f, ok := m.(*Features)
		if !ok {
			return m, nil
		}
		// the peer's announcement: not the caller's business
		if !c.dec.authenticated {
			continue
		}
		c.peerBits.Store(f.Bits)
		if f.Bits&FeatureUncheckedFrames != 0 {
			c.unchecked.Store(true)
		}
		if f.Bits&FeatureIntegrityAgreed != 0 {
			c.wmu.Lock()
			agreed := c.agreed
			c.wmu.Unlock()
			if agreed || c.coal == nil {
				return nil, fmt.Errorf("%w: integrity frames agreed by both sides, or by a peer this side did not offer them to", ErrCorrupt)
			}
			c.switchRead = true
		}
	}
}

// Unchecked reports whether frames to the peer go without a CRC: the
// connection is TLS and the peer announced that it reads them.
func (c *Conn) Unchecked() bool { return c.unchecked.Load() }

// SetReadDeadline sets the underlying connection's read deadline.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.nc.SetReadDeadline(t) }

// SetWriteDeadline sets the underlying connection's write deadline.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.nc.SetWriteDeadline(t) }

// NetConn returns the wrapped connection.
func (c *Conn) NetConn() net.Conn { return c.nc }

// Close closes the underlying connection without flushing.
func (c *Conn) Close() error { return c.nc.Close() }

// Expect reads the next message and requires it to be of type T. A remote
// *Error is returned as the error.
func Expect[T Msg](c *Conn) (T, error) {
	var zero T
	m, err := c.ReadMsg()
	if err != nil {
		return zero, err
	}
	if v, ok := m.(T); ok {
		return v, nil
	}
	if e, ok := m.(*Error); ok {
		return zero, e
	}
	return zero, fmt.Errorf("unexpected %s, want %s", m.Type(), zero.Type())
}

// AppendCRC appends the CRC-32C of b to b: it turns a header and payload
// into a complete frame (used to build test and fuzz inputs).
func AppendCRC(b []byte) []byte {
	return be.AppendUint32(b, crc32.Checksum(b, castagnoli))
}
