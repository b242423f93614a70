package wire

import (
	"bufio"
	"crypto/aes"
	"crypto/cipher"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
)

// Integrity frames: a connection between a host's filter and a proxy of
// the same site may carry its data in clear once both ends have
// authenticated each other, while every frame stays authenticated. The
// TLS handshake (mutual certificates) runs as on every hop and so does the
// Hello exchange; the side that answers Hello then announces
// FeatureIntegrityAgreed, and after that answer both directions leave TLS
// for frames that carry a 16-byte tag instead of a CRC (FlagTagged):
//
//	tag = GCM-Seal(key, nonce, plaintext = frame header and the message's
//	      fixed fields, additional data = its bulk data)[last 16 bytes]
//
// where only the tag is sent (the receiver computes the same and compares)
// and the nonce is the frame's number on this direction of the connection
// (4 zero bytes, 8-byte counter). GCM spends on additional data only its
// GHASH pass, a fraction of what encrypting costs. Each direction has its
// own AES-128 key from the TLS exporter (RFC 8446 section 7.5), so a tag
// is bound to this connection, this direction and this position: a frame
// that is altered, dropped, replayed, reordered or injected fails its
// check and the connection is dropped. Confidentiality is what is given
// up, which is why it is a choice of the deployment (the source proxy's
// and target proxy's traffic rules), never the default.
//
// Switching needs TLS to stop reading exactly at its last record: the
// coalescingConn under TLS hands it bytes up to the end of the record it is
// reading and no further, so integrity frames that follow stay in the
// coalescingConn for the new reader.

// exporterLabel names the keys derived for integrity frames.
const exporterLabel = "EXPORTER-continuum-integrity-frames"

// TagLen is the trailer of an integrity frame.
const TagLen = 16

// frameMAC tags (or checks) the frames of one direction of a connection.
type frameMAC struct {
	aead    cipher.AEAD
	ctr     uint64
	nonce   [12]byte
	scratch []byte // GCM output: the sealed fixed part, then the tag
}

func newFrameMAC(key []byte) (*frameMAC, error) {
	blk, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(blk)
	if err != nil {
		return nil, err
	}
	return &frameMAC{aead: aead, scratch: make([]byte, 0, 512)}, nil
}

// next computes the tag of the next frame of the direction: fixed is the
// header and fixed fields, bulk the bulk data. The tag is valid until the
// next call.
func (m *frameMAC) next(fixed, bulk []byte) []byte {
	be.PutUint64(m.nonce[4:], m.ctr)
	m.ctr++
	out := m.aead.Seal(m.scratch[:0], m.nonce[:], fixed, bulk)
	m.scratch = out[:0]
	return out[len(out)-TagLen:]
}

// check verifies the tag at the end of a whole frame f of type t.
func (m *frameMAC) check(t MsgType, f []byte) error {
	body := f[:len(f)-TagLen]
	split := min(len(body), HeaderLen+fixedLen(t, len(body)-HeaderLen))
	tag := m.next(body[:split], body[split:])
	if subtle.ConstantTimeCompare(tag, f[len(f)-TagLen:]) != 1 {
		return fmt.Errorf("%w: %s: integrity tag does not match (altered, replayed or foreign frame)", ErrCorrupt, t)
	}
	return nil
}

// fixedLen is the part of a payload of n bytes of type t that the tag
// covers as plaintext: the fields ahead of a Write's data or a Point's
// payload, and the whole payload of any other message.
func fixedLen(t MsgType, n int) int {
	switch t {
	case TypeWrite:
		return WriteFixedLen
	case TypePoint:
		return PointFixedLen
	}
	return n
}

// announceBits is the Features a Conn sends ahead of its first frame.
// Called with wmu held.
func (c *Conn) announceBits() uint64 {
	bits := FeatureUncheckedFrames
	if c.coal != nil {
		bits |= FeatureIntegrityFrames
		if c.wantIntegrity {
			bits |= FeatureIntegrityWanted
		}
		if c.agreed {
			bits |= FeatureIntegrityAgreed
		}
	}
	return bits
}

// RequestIntegrity asks the peer, on the side that sends Hello, to carry
// this connection in integrity frames after the Hello exchange; the peer
// decides (it answers with FeatureIntegrityAgreed or not). It must be
// called before the first frame is written; it reports whether the
// request will be made (a TLS connection that can switch).
func (c *Conn) RequestIntegrity() bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if !c.announce || c.coal == nil {
		return false
	}
	c.wantIntegrity = true
	return true
}

// AgreeIntegrity decides, on the side that answers Hello, whether the
// connection goes on in integrity frames after the answer: it does when
// the peer can switch and either asked for it or want is set (this side's
// traffic rules say so). It must be called after the peer's Hello was read
// and before the answer is written, with no read in progress; the switch
// itself happens as the answer (the next frame written) goes out.
func (c *Conn) AgreeIntegrity(want bool) bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if !c.announce || c.coal == nil {
		return false
	}
	peer := c.peerBits.Load()
	c.agreed = peer&FeatureIntegrityFrames != 0 && (want || peer&FeatureIntegrityWanted != 0)
	return c.agreed
}

// Integrity reports whether the connection carries integrity frames: data
// in clear, every frame authenticated.
func (c *Conn) Integrity() bool { return c.integrity.Load() }

// Protection names what protects the connection's frames, for statuses
// and logs: "integrity" (integrity frames), "tls", or "clear" (CRC only:
// a connection without TLS, tests and benchmarks).
func (c *Conn) Protection() string {
	switch {
	case c.Integrity():
		return "integrity"
	case c.isTLS:
		return "tls"
	}
	return "clear"
}

// errSwitch wraps a failed switch to integrity frames.
var errSwitch = errors.New("switch to integrity frames")

// switchLocked leaves TLS for integrity frames in both directions. It is
// called with wmu held, once this side's last TLS frame is written out
// (the answering side) or read (the asking side); client says which side
// this is, which picks the keys. Nothing may be buffered above TLS: the
// peer's TLS frames all came before its switch.
func (c *Conn) switchLocked(client bool) error {
	if !c.rmu.TryLock() {
		return fmt.Errorf("%w: a read is in progress", errSwitch)
	}
	defer c.rmu.Unlock()
	if err := c.bw.Flush(); err != nil {
		return fmt.Errorf("%w: flush the last TLS frame: %w", errSwitch, err)
	}
	if c.rbuf.Buffered() != 0 {
		return fmt.Errorf("%w: %w: %d bytes over TLS after the peer's last TLS frame", errSwitch, ErrCorrupt, c.rbuf.Buffered())
	}
	st := c.tls.ConnectionState()
	km, err := st.ExportKeyingMaterial(exporterLabel, nil, 2*16)
	if err != nil {
		return fmt.Errorf("%w: derive keys: %w", errSwitch, err)
	}
	toServer, toClient := km[:16], km[16:]
	wkey, rkey := toClient, toServer
	if client {
		wkey, rkey = toServer, toClient
	}
	if c.wmac, err = newFrameMAC(wkey); err != nil {
		return fmt.Errorf("%w: %w", errSwitch, err)
	}
	rmac, err := newFrameMAC(rkey)
	if err != nil {
		return fmt.Errorf("%w: %w", errSwitch, err)
	}
	c.coal.switchRaw()
	c.rbuf = bufio.NewReaderSize(c.coal, c.rbuf.Size())
	c.dec.r, c.dec.mac, c.dec.authenticated = c.rbuf, rmac, false
	c.bw.Reset(rawWriter{c.coal})
	c.integrity.Store(true)
	return nil
}

// rawWriter writes to the socket under a coalescingConn, past TLS.
type rawWriter struct{ c *coalescingConn }

func (w rawWriter) Write(p []byte) (int, error) { return w.c.Conn.Write(p) }

var _ io.Writer = rawWriter{}
