package wire

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync"

	"github.com/continuum-cdp/continuum/internal/bufpool"
)

// TLS writes every record (at most 16 KiB) with a system call of its own,
// and reads one record at a time.
// On loopback and fast links the per-call cost of the network stack then
// outweighs the encryption. A coalescingConn sits between TLS and the
// socket: while a Conn writes (WriteMsg, Flush) it keeps the records and
// writes them in pieces of up to coalesceBytes; at any other time, and
// before the handshake is complete, it writes straight through, so nothing
// TLS sends on its own (handshake, alerts, key updates) ever waits in it.
// Reads ask the socket for up to readChunk when TLS asks for less, but
// hand TLS no byte past the end of the record it is reading: what follows
// TLS's last record on a connection that switches to integrity frames
// (integrity.go) stays here for the reader that comes after TLS.
type coalescingConn struct {
	net.Conn

	mu      sync.Mutex
	holding bool
	held    []byte // from coalesceBufs while holding

	rmu  sync.Mutex
	rbuf []byte // read from the socket, not yet taken (from coalesceBufs)
	rpos int
	rerr error // the socket's error, after rbuf

	// TLS record boundaries of the bytes handed to TLS (rmu)
	recHdr  [5]byte
	recHave int // header bytes of the current record handed over
	recLeft int // its body bytes still to hand over
	// raw: past TLS (rmu and mu): reads are no longer bounded by
	// records, and what TLS writes (the close_notify alert of a Close)
	// is dropped rather than put among integrity frames
	raw bool
}

// tlsRecordHeader is the length of a TLS record header: type, version,
// length.
const tlsRecordHeader = 5

// readChunk is how much a coalescingConn asks the socket for when TLS asks
// for less: TLS reads a record at a time, so one system call then serves
// several records.
const readChunk = 64 << 10

func (c *coalescingConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.raw {
		return c.readLocked(p)
	}
	if c.recLeft > 0 {
		p = p[:min(len(p), c.recLeft)]
	} else {
		p = p[:min(len(p), tlsRecordHeader-c.recHave)]
	}
	n, err := c.readLocked(p)
	c.track(p[:n])
	return n, err
}

// track follows the record boundaries through bytes handed to TLS.
func (c *coalescingConn) track(b []byte) {
	for len(b) > 0 {
		if c.recLeft > 0 {
			k := min(len(b), c.recLeft)
			c.recLeft -= k
			b = b[k:]
			continue
		}
		k := copy(c.recHdr[c.recHave:], b)
		c.recHave += k
		b = b[k:]
		if c.recHave == tlsRecordHeader {
			c.recHave = 0
			c.recLeft = int(c.recHdr[3])<<8 | int(c.recHdr[4])
		}
	}
}

func (c *coalescingConn) readLocked(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if c.rbuf != nil {
		n := copy(p, c.rbuf[c.rpos:])
		if c.rpos += n; c.rpos == len(c.rbuf) {
			coalesceBufs.Put(c.rbuf)
			c.rbuf, c.rpos = nil, 0
		}
		return n, nil
	}
	if err := c.rerr; err != nil {
		c.rerr = nil
		return 0, err
	}
	if len(p) >= readChunk {
		return c.Conn.Read(p)
	}
	buf := coalesceBufs.Get(readChunk)
	n, err := c.Conn.Read(buf)
	if n <= len(p) {
		copy(p, buf[:n])
		coalesceBufs.Put(buf)
		return n, err
	}
	// the rest waits for the next Read, an error after it
	copy(p, buf[:len(p)])
	c.rbuf, c.rpos, c.rerr = buf[:n], len(p), err
	return len(p), nil
}

// coalesceBytes is the largest write a coalescingConn makes while holding.
const coalesceBytes = 256 << 10

// coalesceBufs serves the held buffers and the read-ahead: only a
// connection in the middle of a write, or with bytes read ahead, holds
// one, so idle connections cost nothing.
var coalesceBufs = bufpool.New(32<<20, nil)

func (c *coalescingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.raw {
		return len(p), nil
	}
	if !c.holding {
		return c.Conn.Write(p)
	}
	if c.held == nil {
		c.held = coalesceBufs.Get(coalesceBytes)[:0]
	}
	if len(c.held)+len(p) > cap(c.held) {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		if len(p) > cap(c.held) {
			return c.Conn.Write(p)
		}
	}
	c.held = append(c.held, p...)
	return len(p), nil
}

func (c *coalescingConn) flushLocked() error {
	if len(c.held) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.held)
	c.held = c.held[:0]
	return err
}

// hold keeps the writes until release.
func (c *coalescingConn) hold() {
	c.mu.Lock()
	c.holding = true
	c.mu.Unlock()
}

// release writes what was kept and goes back to writing straight through.
func (c *coalescingConn) release() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	err := c.flushLocked()
	c.holding = false
	if c.held != nil {
		coalesceBufs.Put(c.held)
		c.held = nil
	}
	return err
}

// switchRaw leaves TLS: from now on the connection's reader takes the
// bytes as they come, and TLS writes nothing more. Nothing may be held.
func (c *coalescingConn) switchRaw() {
	c.rmu.Lock()
	c.mu.Lock()
	c.raw = true
	c.mu.Unlock()
	c.rmu.Unlock()
}

// coalescingListener wraps accepted connections.
type coalescingListener struct{ net.Listener }

func (l coalescingListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &coalescingConn{Conn: nc}, nil
}

// TLSListener is tls.NewListener whose connections, once wrapped by
// NewConn, write a message's TLS records in a few system calls.
func TLSListener(l net.Listener, cfg *tls.Config) net.Listener {
	return tls.NewListener(coalescingListener{l}, cfg)
}

// DialTLS dials addr with d (nil: a zero net.Dialer) and runs the TLS
// client handshake with cfg; the connection, wrapped by NewConn, writes a
// message's TLS records in a few system calls.
func DialTLS(ctx context.Context, d *net.Dialer, addr string, cfg *tls.Config) (net.Conn, error) {
	if d == nil {
		d = &net.Dialer{}
	}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c := cfg
	if c.ServerName == "" {
		// what tls.Dialer does: the name to verify comes from the address
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			nc.Close()
			return nil, fmt.Errorf("dial %s: %w", addr, err)
		}
		c = cfg.Clone()
		c.ServerName = host
	}
	tc := tls.Client(&coalescingConn{Conn: nc}, c)
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		return nil, err
	}
	return tc, nil
}

// coalescer returns the coalescingConn under a TLS connection, if any.
func coalescer(nc net.Conn) (*tls.Conn, *coalescingConn) {
	tc, ok := nc.(*tls.Conn)
	if !ok {
		return nil, nil
	}
	cc, ok := tc.NetConn().(*coalescingConn)
	if !ok {
		return nil, nil
	}
	return tc, cc
}
