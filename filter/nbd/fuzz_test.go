package nbd

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// memBackend is an in-memory disk.
type memBackend struct {
	mu   sync.Mutex
	data []byte
}

func (m *memBackend) Size() int64 { return int64(len(m.data)) }
func (m *memBackend) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(p, m.data[off:]), nil
}
func (m *memBackend) WriteAt(p []byte, off int64, fua bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.data[off:], p)
	return nil
}
func (m *memBackend) WriteZeroes(off, length int64, fua bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.data[off : off+length])
	return nil
}
func (m *memBackend) Trim(off, length int64) error { return m.WriteZeroes(off, length, false) }
func (m *memBackend) Flush() error                 { return nil }

// scriptConn plays a fixed client byte stream and swallows the replies.
type scriptConn struct {
	mu     sync.Mutex
	r      *bytes.Reader
	closed bool
	out    int
}

func (c *scriptConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	return c.r.Read(p)
}
func (c *scriptConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	c.out += len(p)
	return len(p), nil
}
func (c *scriptConn) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	return nil
}
func (c *scriptConn) LocalAddr() net.Addr                { return &net.TCPAddr{} }
func (c *scriptConn) RemoteAddr() net.Addr               { return &net.TCPAddr{} }
func (c *scriptConn) SetDeadline(t time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(t time.Time) error { return nil }

func reqBytes(typ, flags uint16, cookie, off uint64, length uint32, payload []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, requestMagic)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	return append(b, payload...)
}

func optBytes(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, optMagic)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// FuzzRequestParser feeds arbitrary client streams (client flags, options,
// then requests) to a server connection and the parsers on their own: no
// panic, no hang, allocation bounded by the protocol limits.
func FuzzRequestParser(f *testing.F) {
	flags := binary.BigEndian.AppendUint32(nil, flagCFixedNewstyle|flagCNoZeroes)
	goDisk := optBytes(optGo, infoPayload("disk", infoBlockSize, infoName))
	session := func(parts ...[]byte) []byte {
		b := append([]byte{}, flags...)
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	f.Add(session(goDisk, reqBytes(cmdWrite, cmdFlagFUA, 1, 10, 5, []byte("hello")), reqBytes(cmdRead, 0, 2, 8, 16, nil), reqBytes(cmdDisc, 0, 3, 0, 0, nil)))
	f.Add(session(optBytes(optList, nil), optBytes(optStructuredRepl, nil), optBytes(optInfo, infoPayload("disk", 0, 1, 2, 3)), goDisk,
		reqBytes(cmdTrim, 0, 1, 100, 1000, nil), reqBytes(cmdWriteZeroes, cmdFlagNoHole, 2, 4000, 200, nil), reqBytes(cmdFlush, 0, 3, 0, 0, nil)))
	f.Add(session(optBytes(optExportName, []byte("disk")), reqBytes(cmdRead, 0, 1, 1<<40, 1, nil), reqBytes(cmdWrite, 0, 1, 0, MaxRequest+1, nil)))
	f.Add(session(optBytes(optAbort, nil)))
	f.Add(session(goDisk, reqBytes(77, 1<<15, 9, 0, 0, nil), []byte{0x25, 0x60, 0x95}))
	f.Add([]byte{0, 0, 0, 0, 'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T', 0, 0, 0, 7, 0xff, 0xff, 0xff, 0xff})
	f.Add(session(optBytes(optInfo, []byte{0, 0, 0, 4, 'd', 'i', 's', 'k', 0, 3, 0, 1})))

	log := testLogger(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) >= requestHdrLen {
			if req, err := parseRequest(in); err == nil {
				if b := reqBytes(req.typ, req.flags, req.cookie, req.off, req.length, nil); !bytes.Equal(b, in[:requestHdrLen]) {
					t.Fatalf("request header %x parsed as %+v", in[:requestHdrLen], req)
				}
			}
		}
		if len(in) >= 16 {
			parseOptionHeader(in)
		}
		if r, err := parseInfoRequest(in); err == nil && (len(r.name) > maxString || 4+len(r.name)+2+2*len(r.infos) != len(in)) {
			t.Fatalf("info request %q with %d infos from %d bytes", r.name, len(r.infos), len(in))
		}

		s := NewServer(log)
		if err := s.AddExport(Export{Name: "disk", Backend: &memBackend{data: make([]byte, 64<<10)}}); err != nil {
			t.Fatal(err)
		}
		nc := &scriptConn{r: bytes.NewReader(in)}
		c, ok := s.track(nc)
		if !ok {
			t.Fatal("server closed")
		}
		c.serve() // returns at the end of the script
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, nc.r)
	})
}
