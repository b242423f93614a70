package nbd

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// testClient is a minimal NBD client written from the specification, used
// to send requests that real clients never send.
type testClient struct {
	nc    net.Conn
	r     *bufio.Reader
	size  uint64
	flags uint16
	wmu   sync.Mutex
}

func dialRaw(t testing.TB, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(nc)
	var hello [18]byte
	if _, err := io.ReadFull(r, hello[:]); err != nil {
		t.Fatalf("read greeting: %v", err)
	}
	if binary.BigEndian.Uint64(hello[0:]) != nbdMagic || binary.BigEndian.Uint64(hello[8:]) != optMagic {
		t.Fatalf("bad greeting %x", hello)
	}
	if f := binary.BigEndian.Uint16(hello[16:]); f != flagFixedNewstyle|flagNoZeroes {
		t.Fatalf("handshake flags %#x", f)
	}
	if _, err := nc.Write(binary.BigEndian.AppendUint32(nil, flagCFixedNewstyle|flagCNoZeroes)); err != nil {
		t.Fatalf("send client flags: %v", err)
	}
	return nc, r
}

func sendOption(nc net.Conn, opt uint32, data []byte) error {
	b := binary.BigEndian.AppendUint64(nil, optMagic)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	_, err := nc.Write(append(b, data...))
	return err
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func readOptReply(r *bufio.Reader) (optReply, error) {
	var h [20]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return optReply{}, err
	}
	if binary.BigEndian.Uint64(h[0:]) != repMagic {
		return optReply{}, fmt.Errorf("bad reply magic %x", h[:8])
	}
	rep := optReply{opt: binary.BigEndian.Uint32(h[8:]), typ: binary.BigEndian.Uint32(h[12:])}
	rep.data = make([]byte, binary.BigEndian.Uint32(h[16:]))
	_, err := io.ReadFull(r, rep.data)
	return rep, err
}

func infoPayload(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

// dialExport negotiates NBD_OPT_GO for name.
func dialExport(t testing.TB, addr, name string) *testClient {
	t.Helper()
	nc, r := dialRaw(t, addr)
	if err := sendOption(nc, optGo, infoPayload(name, infoBlockSize)); err != nil {
		t.Fatalf("send GO: %v", err)
	}
	c := &testClient{nc: nc, r: r}
	for {
		rep, err := readOptReply(r)
		if err != nil {
			t.Fatalf("GO reply: %v", err)
		}
		if rep.typ == repAck {
			break
		}
		if rep.typ != repInfo {
			t.Fatalf("GO %q: reply type %#x %q", name, rep.typ, rep.data)
		}
		if binary.BigEndian.Uint16(rep.data) == infoExport {
			c.size = binary.BigEndian.Uint64(rep.data[2:])
			c.flags = binary.BigEndian.Uint16(rep.data[10:])
		}
	}
	nc.SetDeadline(time.Time{})
	return c
}

func (c *testClient) send(typ, flags uint16, cookie, off uint64, length uint32, payload []byte) error {
	b := make([]byte, requestHdrLen, requestHdrLen+len(payload))
	binary.BigEndian.PutUint32(b[0:], requestMagic)
	binary.BigEndian.PutUint16(b[4:], flags)
	binary.BigEndian.PutUint16(b[6:], typ)
	binary.BigEndian.PutUint64(b[8:], cookie)
	binary.BigEndian.PutUint64(b[16:], off)
	binary.BigEndian.PutUint32(b[24:], length)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.nc.Write(append(b, payload...))
	return err
}

// recv reads one simple reply header.
func (c *testClient) recv() (cookie uint64, code uint32, err error) {
	var h [simpleHdrLen]byte
	if _, err := io.ReadFull(c.r, h[:]); err != nil {
		return 0, 0, err
	}
	if m := binary.BigEndian.Uint32(h[0:]); m != simpleMagic {
		return 0, 0, fmt.Errorf("bad reply magic %#x", m)
	}
	return binary.BigEndian.Uint64(h[8:]), binary.BigEndian.Uint32(h[4:]), nil
}

func (c *testClient) do(t testing.TB, typ, flags uint16, off uint64, length uint32, payload []byte) uint32 {
	t.Helper()
	cookie := uint64(time.Now().UnixNano())
	if err := c.send(typ, flags, cookie, off, length, payload); err != nil {
		t.Fatalf("send %s: %v", cmdName(typ), err)
	}
	got, code, err := c.recv()
	if err != nil {
		t.Fatalf("reply to %s: %v", cmdName(typ), err)
	}
	if got != cookie {
		t.Fatalf("reply cookie %d, want %d", got, cookie)
	}
	return code
}

func (c *testClient) read(t testing.TB, off uint64, n uint32) ([]byte, uint32) {
	t.Helper()
	code := c.do(t, cmdRead, 0, off, n, nil)
	if code != 0 {
		return nil, code
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(c.r, b); err != nil {
		t.Fatalf("read data: %v", err)
	}
	return b, 0
}

func (c *testClient) write(t testing.TB, off uint64, p []byte) uint32 {
	t.Helper()
	return c.do(t, cmdWrite, 0, off, uint32(len(p)), p)
}

// expectClosed asserts the server closed the connection.
func (c *testClient) expectClosed(t testing.TB) {
	t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b [1]byte
	_, err := io.ReadFull(c.r, b[:])
	if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !isReset(err) {
		t.Fatalf("connection not closed by the server: %v", err)
	}
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && !op.Timeout()
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// startServer serves exports on a loopback port until the test ends.
func startServer(t testing.TB, opts []Option, exports ...Export) (*Server, string) {
	t.Helper()
	s := NewServer(testLogger(t), opts...)
	for _, e := range exports {
		if err := s.AddExport(e); err != nil {
			t.Fatal(err)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return s, l.Addr().String()
}

// fileExport makes an export backed by a new sparse file.
func fileExport(t testing.TB, name string, size int64) (Export, *FileBackend) {
	t.Helper()
	b, err := OpenFile(filepath.Join(t.TempDir(), name+".img"), size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return Export{Name: name, Description: "disk " + name, Backend: b}, b
}

// needBin returns the path of a client binary; without it the test is
// skipped, except under CI where the binaries must be installed.
func needBin(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is required under CI (scripts/test-deps.sh installs it): %v", name, err)
		}
		t.Skipf("%s not installed", name)
	}
	return p
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(needBin(t, name), args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %q: %v\n%s", name, args, err, out)
	}
	return string(out)
}

func execCommand(name string, args ...string) *exec.Cmd { return exec.Command(name, args...) }

func itoa(n int) string { return strconv.Itoa(n) }
