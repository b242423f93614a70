package appliance

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// A minimal NBD client (fixed newstyle handshake, NBD_OPT_GO, simple
// replies): enough for the lab's workload to write through a filter's
// exports as any NBD client would, without a Debian package.

const (
	nbdcMagic        = 0x4e42444d41474943 // "NBDMAGIC"
	nbdcOptMagic     = 0x49484156454f5054 // "IHAVEOPT"
	nbdcRepMagic     = 0x0003e889045565a9
	nbdcReqMagic     = 0x25609513
	nbdcSimpleMagic  = 0x67446698
	nbdcFixedNew     = 1 << 0
	nbdcNoZeroes     = 1 << 1
	nbdcOptGo        = 7
	nbdcRepAck       = 1
	nbdcRepInfo      = 3
	nbdcRepErrBit    = 1 << 31
	nbdcInfoExport   = 0
	nbdcCmdRead      = 0
	nbdcCmdWrite     = 1
	nbdcCmdDisc      = 2
	nbdcCmdFlush     = 3
	nbdcTFReadOnly   = 1 << 1
	nbdcMaxOptReply  = 1 << 20
	nbdcIOTimeout    = 30 * time.Second
	nbdcDialTimeout  = 5 * time.Second
	nbdcMaxTransfer  = 32 << 20
	nbdcErrNotExport = "export not found"
)

// nbdClient is one connection to one NBD export. Requests are serialised:
// the workload needs no more.
type nbdClient struct {
	nc     net.Conn
	r      *bufio.Reader
	size   int64
	flags  uint16
	mu     sync.Mutex
	cookie uint64
}

// errNBDExport says the server does not have the export (yet): the filter
// has not received the VM's configuration.
var errNBDExport = errors.New(nbdcErrNotExport)

// dialNBD connects to addr and opens export name.
func dialNBD(ctx context.Context, addr, name string) (*nbdClient, error) {
	d := net.Dialer{Timeout: nbdcDialTimeout}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connect to NBD server %s: %w", addr, err)
	}
	c := &nbdClient{nc: nc, r: bufio.NewReader(nc)}
	if err := c.handshake(name); err != nil {
		nc.Close()
		return nil, fmt.Errorf("open NBD export %q at %s: %w", name, addr, err)
	}
	return c, nil
}

func (c *nbdClient) handshake(name string) error {
	_ = c.nc.SetDeadline(time.Now().Add(nbdcIOTimeout))
	defer func() { _ = c.nc.SetDeadline(time.Time{}) }()
	var hello [18]byte
	if _, err := io.ReadFull(c.r, hello[:]); err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	if binary.BigEndian.Uint64(hello[0:]) != nbdcMagic || binary.BigEndian.Uint64(hello[8:]) != nbdcOptMagic {
		return errors.New("not a newstyle NBD server")
	}
	sflags := binary.BigEndian.Uint16(hello[16:])
	if sflags&nbdcFixedNew == 0 {
		return errors.New("server does not speak fixed newstyle")
	}
	cflags := uint32(nbdcFixedNew)
	if sflags&nbdcNoZeroes != 0 {
		cflags |= nbdcNoZeroes
	}
	// NBD_OPT_GO: export name, then no information requests.
	data := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	data = append(data, name...)
	data = binary.BigEndian.AppendUint16(data, 0)
	msg := binary.BigEndian.AppendUint32(nil, cflags)
	msg = binary.BigEndian.AppendUint64(msg, nbdcOptMagic)
	msg = binary.BigEndian.AppendUint32(msg, nbdcOptGo)
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(data)))
	if _, err := c.nc.Write(append(msg, data...)); err != nil {
		return fmt.Errorf("send NBD_OPT_GO: %w", err)
	}
	gotInfo := false
	for {
		var h [20]byte
		if _, err := io.ReadFull(c.r, h[:]); err != nil {
			return fmt.Errorf("read option reply: %w", err)
		}
		if binary.BigEndian.Uint64(h[0:]) != nbdcRepMagic {
			return errors.New("bad option reply magic")
		}
		typ, n := binary.BigEndian.Uint32(h[12:]), binary.BigEndian.Uint32(h[16:])
		if n > nbdcMaxOptReply {
			return fmt.Errorf("option reply of %d bytes", n)
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(c.r, body); err != nil {
			return fmt.Errorf("read option reply: %w", err)
		}
		switch {
		case typ == nbdcRepAck:
			if !gotInfo {
				return errors.New("server acknowledged without describing the export")
			}
			return nil
		case typ == nbdcRepInfo:
			if len(body) >= 12 && binary.BigEndian.Uint16(body) == nbdcInfoExport {
				c.size = int64(binary.BigEndian.Uint64(body[2:]))
				c.flags = binary.BigEndian.Uint16(body[10:])
				gotInfo = true
			}
		case typ&nbdcRepErrBit != 0:
			if typ == nbdcRepErrBit+6 { // NBD_REP_ERR_UNKNOWN
				return errNBDExport
			}
			return fmt.Errorf("server refused the export (reply %#x): %s", typ, body)
		}
	}
}

// Size is the export's size in bytes.
func (c *nbdClient) Size() int64 { return c.size }

// WriteAt writes p at off and waits for the server's reply.
func (c *nbdClient) WriteAt(p []byte, off int64) error {
	if c.flags&nbdcTFReadOnly != 0 {
		return errors.New("export is read-only")
	}
	if off < 0 || off+int64(len(p)) > c.size || len(p) > nbdcMaxTransfer {
		return fmt.Errorf("write of %d bytes at %d outside the export (%d bytes)", len(p), off, c.size)
	}
	_, err := c.do(nbdcCmdWrite, off, uint32(len(p)), p, nil)
	return err
}

// ReadAt fills p from off.
func (c *nbdClient) ReadAt(p []byte, off int64) error {
	if off < 0 || off+int64(len(p)) > c.size || len(p) > nbdcMaxTransfer {
		return fmt.Errorf("read of %d bytes at %d outside the export (%d bytes)", len(p), off, c.size)
	}
	_, err := c.do(nbdcCmdRead, off, uint32(len(p)), nil, p)
	return err
}

// Flush asks the server to make written data durable.
func (c *nbdClient) Flush() error {
	_, err := c.do(nbdcCmdFlush, 0, 0, nil, nil)
	return err
}

func (c *nbdClient) do(typ uint16, off int64, length uint32, payload, into []byte) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cookie++
	cookie := c.cookie
	_ = c.nc.SetDeadline(time.Now().Add(nbdcIOTimeout))
	defer func() { _ = c.nc.SetDeadline(time.Time{}) }()
	h := make([]byte, 28, 28+len(payload))
	binary.BigEndian.PutUint32(h[0:], nbdcReqMagic)
	binary.BigEndian.PutUint16(h[6:], typ)
	binary.BigEndian.PutUint64(h[8:], cookie)
	binary.BigEndian.PutUint64(h[16:], uint64(off))
	binary.BigEndian.PutUint32(h[24:], length)
	if _, err := c.nc.Write(append(h, payload...)); err != nil {
		return cookie, fmt.Errorf("send NBD request: %w", err)
	}
	var rh [16]byte
	if _, err := io.ReadFull(c.r, rh[:]); err != nil {
		return cookie, fmt.Errorf("read NBD reply: %w", err)
	}
	if binary.BigEndian.Uint32(rh[0:]) != nbdcSimpleMagic {
		return cookie, errors.New("bad NBD reply magic")
	}
	if got := binary.BigEndian.Uint64(rh[8:]); got != cookie {
		return cookie, fmt.Errorf("NBD reply for request %d, want %d", got, cookie)
	}
	if code := binary.BigEndian.Uint32(rh[4:]); code != 0 {
		return cookie, fmt.Errorf("NBD request failed with error %d", code)
	}
	if into != nil {
		if _, err := io.ReadFull(c.r, into); err != nil {
			return cookie, fmt.Errorf("read NBD data: %w", err)
		}
	}
	return cookie, nil
}

// Close disconnects politely.
func (c *nbdClient) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
	h := make([]byte, 28)
	binary.BigEndian.PutUint32(h[0:], nbdcReqMagic)
	binary.BigEndian.PutUint16(h[6:], nbdcCmdDisc)
	_, _ = c.nc.Write(h)
	return c.nc.Close()
}
