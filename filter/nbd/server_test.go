package nbd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestGoReadWritePipelined(t *testing.T) {
	ex, fb := fileExport(t, "disk0", 4<<20)
	_, addr := startServer(t, nil, ex)
	c := dialExport(t, addr, "disk0")
	if c.size != 4<<20 {
		t.Fatalf("size %d", c.size)
	}
	want := uint16(tfHasFlags | tfSendFlush | tfSendFUA | tfCanMultiConn | tfSendTrim | tfSendWriteZeroes)
	if c.flags != want {
		t.Fatalf("transmission flags %#x, want %#x", c.flags, want)
	}

	// Pipeline many writes with distinct cookies; every cookie comes back once.
	const n = 64
	data := make([][]byte, n)
	go func() {
		for i := range n {
			data[i] = bytes.Repeat([]byte{byte(i + 1)}, 4096+i)
		}
		for i := range n {
			flags := uint16(0)
			if i%7 == 0 {
				flags = cmdFlagFUA
			}
			if err := c.send(cmdWrite, flags, uint64(1000+i), uint64(i)*16384+uint64(i), uint32(len(data[i])), data[i]); err != nil {
				t.Errorf("send: %v", err)
				return
			}
		}
	}()
	seen := map[uint64]bool{}
	for range n {
		cookie, code, err := c.recv()
		if err != nil {
			t.Fatal(err)
		}
		if code != 0 || cookie < 1000 || cookie >= 1000+n || seen[cookie] {
			t.Fatalf("reply cookie %d code %d", cookie, code)
		}
		seen[cookie] = true
	}
	if code := c.do(t, cmdFlush, 0, 0, 0, nil); code != 0 {
		t.Fatalf("flush: %d", code)
	}
	for i := range n {
		got, code := c.read(t, uint64(i)*16384+uint64(i), uint32(len(data[i])))
		if code != 0 || !bytes.Equal(got, data[i]) {
			t.Fatalf("read back %d: code %d", i, code)
		}
	}
	// The backend file holds the same bytes.
	raw, err := os.ReadFile(fb.Path())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw[5*16384+5:5*16384+5+len(data[5])], data[5]) {
		t.Fatal("file content differs from what was written")
	}

	// Trim and write zeroes at unaligned offsets read back as zeroes and
	// leave their neighbours alone.
	if code := c.do(t, cmdTrim, 0, 16384+100, 3000, nil); code != 0 {
		t.Fatalf("trim: %d", code)
	}
	if code := c.do(t, cmdWriteZeroes, cmdFlagNoHole|cmdFlagFUA, 2*16384+2, 4097, nil); code != 0 {
		t.Fatalf("write zeroes: %d", code)
	}
	got, _ := c.read(t, 16384+1, 4097)
	wantB := bytes.Repeat([]byte{2}, 4097)
	clear(wantB[99 : 99+3000])
	if !bytes.Equal(got, wantB) {
		t.Fatal("trim did not zero exactly its range")
	}
	got, _ = c.read(t, 2*16384+2, 4098)
	if !bytes.Equal(got[:4097], make([]byte, 4097)) || got[4097] != 3 {
		t.Fatal("write zeroes did not zero exactly its range")
	}
	if err := c.send(cmdDisc, 0, 1, 0, 0, nil); err != nil {
		t.Fatal(err)
	}
	c.expectClosed(t)
}

func TestOptionHaggling(t *testing.T) {
	ex, _ := fileExport(t, "a", 1<<20)
	ro, _ := fileExport(t, "b", 2<<20)
	ro.ReadOnly = true
	_, addr := startServer(t, nil, ex, ro)
	nc, r := dialRaw(t, addr)

	expect := func(opt, typ uint32) optReply {
		t.Helper()
		rep, err := readOptReply(r)
		if err != nil {
			t.Fatalf("option %d: %v", opt, err)
		}
		if rep.opt != opt || rep.typ != typ {
			t.Fatalf("option %d: reply opt %d type %#x, want type %#x", opt, rep.opt, rep.typ, typ)
		}
		return rep
	}
	sendOption(nc, optStructuredRepl, nil)
	expect(optStructuredRepl, repErrUnsup)
	sendOption(nc, 4242, []byte("whatever"))
	expect(4242, repErrUnsup)
	sendOption(nc, optStartTLS, nil)
	expect(optStartTLS, repErrUnsup)

	sendOption(nc, optList, nil)
	var names []string
	for {
		rep, err := readOptReply(r)
		if err != nil {
			t.Fatal(err)
		}
		if rep.typ == repAck {
			break
		}
		if rep.typ != repServer {
			t.Fatalf("list reply type %#x", rep.typ)
		}
		n := binary.BigEndian.Uint32(rep.data)
		names = append(names, string(rep.data[4:4+n])+"|"+string(rep.data[4+n:]))
	}
	if strings.Join(names, ",") != "a|disk a,b|disk b" {
		t.Fatalf("list: %v", names)
	}
	sendOption(nc, optList, []byte{1})
	expect(optList, repErrInvalid)

	sendOption(nc, optInfo, infoPayload("nope"))
	expect(optInfo, repErrUnknown)
	sendOption(nc, optInfo, []byte{0, 0, 0, 9, 'x'})
	expect(optInfo, repErrInvalid)
	sendOption(nc, optInfo, bytes.Repeat([]byte{1}, maxOption+1))
	expect(optInfo, repErrTooBig)

	sendOption(nc, optInfo, infoPayload("b", infoName, infoDescription, infoBlockSize, 99))
	got := map[uint16][]byte{}
	for {
		rep, err := readOptReply(r)
		if err != nil {
			t.Fatal(err)
		}
		if rep.typ == repAck {
			break
		}
		got[binary.BigEndian.Uint16(rep.data)] = rep.data[2:]
	}
	if e := got[infoExport]; len(e) != 10 || binary.BigEndian.Uint64(e) != 2<<20 || binary.BigEndian.Uint16(e[8:])&tfReadOnly == 0 {
		t.Fatalf("export info %x", e)
	}
	if string(got[infoName]) != "b" || string(got[infoDescription]) != "disk b" {
		t.Fatalf("name %q description %q", got[infoName], got[infoDescription])
	}
	bs := got[infoBlockSize]
	if len(bs) != 12 || binary.BigEndian.Uint32(bs) != 1 || binary.BigEndian.Uint32(bs[4:]) != 4096 || binary.BigEndian.Uint32(bs[8:]) != MaxRequest {
		t.Fatalf("block size %x", bs)
	}
	if len(got) != 4 {
		t.Fatalf("unexpected infos %v", got)
	}

	sendOption(nc, optAbort, nil)
	expect(optAbort, repAck)
	(&testClient{nc: nc, r: r}).expectClosed(t)
}

func TestExportNameOption(t *testing.T) {
	ex, _ := fileExport(t, "old", 1<<20)
	_, addr := startServer(t, nil, ex)
	nc, r := dialRaw(t, addr)
	sendOption(nc, optExportName, []byte("old"))
	var b [10]byte // NO_ZEROES was negotiated: no 124 zero bytes
	if _, err := io.ReadFull(r, b[:]); err != nil {
		t.Fatal(err)
	}
	if binary.BigEndian.Uint64(b[:]) != 1<<20 {
		t.Fatalf("size %x", b)
	}
	c := &testClient{nc: nc, r: r}
	if code := c.write(t, 10, []byte("hello")); code != 0 {
		t.Fatal(code)
	}
	if got, _ := c.read(t, 10, 5); string(got) != "hello" {
		t.Fatalf("read %q", got)
	}

	// With a single export, the empty name is the default export.
	d := dialExport(t, addr, "")
	if got, _ := d.read(t, 10, 5); string(got) != "hello" {
		t.Fatalf("default export read %q", got)
	}

	// An unknown name can only be answered by closing.
	nc2, r2 := dialRaw(t, addr)
	sendOption(nc2, optExportName, []byte("missing"))
	(&testClient{nc: nc2, r: r2}).expectClosed(t)
}

func TestReadOnlyExportRefusesWrites(t *testing.T) {
	ex, fb := fileExport(t, "ro", 1<<20)
	if err := fb.WriteAt([]byte("keep"), 0, false); err != nil {
		t.Fatal(err)
	}
	ex.ReadOnly = true
	_, addr := startServer(t, nil, ex)
	c := dialExport(t, addr, "ro")
	if c.flags&tfReadOnly == 0 || c.flags&(tfSendTrim|tfSendWriteZeroes) != 0 {
		t.Fatalf("flags %#x", c.flags)
	}
	if code := c.write(t, 0, []byte("oops")); code != errPerm {
		t.Fatalf("write: code %d, want EPERM", code)
	}
	if code := c.do(t, cmdTrim, 0, 0, 4, nil); code != errPerm {
		t.Fatalf("trim: code %d, want EPERM", code)
	}
	if code := c.do(t, cmdWriteZeroes, 0, 0, 4, nil); code != errPerm {
		t.Fatalf("write zeroes: code %d, want EPERM", code)
	}
	if got, code := c.read(t, 0, 4); code != 0 || string(got) != "keep" {
		t.Fatalf("read %q code %d", got, code)
	}
}

func TestOutOfRangeKeepsConnection(t *testing.T) {
	ex, _ := fileExport(t, "d", 1<<20)
	_, addr := startServer(t, nil, ex)
	c := dialExport(t, addr, "d")
	cases := []struct {
		typ     uint16
		off     uint64
		n       uint32
		payload bool
	}{
		{cmdRead, 1<<20 - 10, 11, false},
		{cmdRead, 1 << 40, 1, false},
		{cmdRead, ^uint64(0) - 2, 8, false},
		{cmdWrite, 1<<20 - 1, 2, true},
		{cmdTrim, 1 << 20, 1, false},
		{cmdWriteZeroes, 1<<20 - 4096, 8192, false},
		{cmdRead, 0, MaxRequest + 1, false}, // oversized read: no payload, an error is enough
		{99, 0, 0, false},                   // unknown command
		{cmdRead, 0, 1, false},              // unknown flag below
	}
	for i, tc := range cases {
		var p []byte
		if tc.payload {
			p = make([]byte, tc.n)
		}
		flags := uint16(0)
		if i == len(cases)-1 {
			flags = 1 << 9
		}
		if code := c.do(t, tc.typ, flags, tc.off, tc.n, p); code != errInval {
			t.Fatalf("case %d: code %d, want EINVAL", i, code)
		}
	}
	// Still usable.
	if code := c.write(t, 1<<20-3, []byte("end")); code != 0 {
		t.Fatal(code)
	}
	if got, _ := c.read(t, 1<<20-3, 3); string(got) != "end" {
		t.Fatalf("read %q", got)
	}
}

func TestBadMagicAndOversizedWriteCloseConnection(t *testing.T) {
	ex, _ := fileExport(t, "d", 1<<20)
	s, addr := startServer(t, nil, ex)

	c := dialExport(t, addr, "d")
	bad := make([]byte, requestHdrLen)
	binary.BigEndian.PutUint32(bad, 0xdeadbeef)
	c.nc.Write(bad)
	c.expectClosed(t)

	c = dialExport(t, addr, "d")
	if err := c.send(cmdWrite, 0, 7, 0, MaxRequest+1, nil); err != nil {
		t.Fatal(err)
	}
	c.expectClosed(t)

	nc, r := dialRaw(t, addr)
	nc.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	(&testClient{nc: nc, r: r}).expectClosed(t)

	// The server is fine and serves the next client.
	c = dialExport(t, addr, "d")
	if code := c.write(t, 0, []byte("ok")); code != 0 {
		t.Fatal(code)
	}
	var m dtoCounter
	if got := m.value(t, s, "continuum_nbd_protocol_errors_total"); got != 3 {
		t.Fatalf("protocol errors %v, want 3", got)
	}
}

func TestRemoveExportClosesConnections(t *testing.T) {
	ex, _ := fileExport(t, "x", 1<<20)
	ex2, _ := fileExport(t, "y", 1<<20)
	s, addr := startServer(t, nil, ex, ex2)
	if err := s.AddExport(ex); !errors.Is(err, ErrDuplicateExport) {
		t.Fatalf("duplicate add: %v", err)
	}
	if err := s.AddExport(Export{Name: "z"}); err == nil {
		t.Fatal("export without backend accepted")
	}
	cx := dialExport(t, addr, "x")
	cy := dialExport(t, addr, "y")
	if err := s.RemoveExport("x"); err != nil {
		t.Fatal(err)
	}
	cx.expectClosed(t)
	if code := cy.write(t, 0, []byte("y")); code != 0 {
		t.Fatalf("other export broken: %d", code)
	}
	if err := s.RemoveExport("x"); !errors.Is(err, ErrUnknownExport) {
		t.Fatalf("second remove: %v", err)
	}
	if got := s.Exports(); len(got) != 1 || got[0] != "y" {
		t.Fatalf("exports %v", got)
	}
	nc, r := dialRaw(t, addr)
	sendOption(nc, optGo, infoPayload("x"))
	if rep, err := readOptReply(r); err != nil || rep.typ != repErrUnknown {
		t.Fatalf("GO on removed export: %+v %v", rep, err)
	}
	// Two exports: no default.
	s.AddExport(ex)
	sendOption(nc, optGo, infoPayload(""))
	if rep, err := readOptReply(r); err != nil || rep.typ != repErrUnknown {
		t.Fatalf("GO on the default export among two: %+v %v", rep, err)
	}
}

func TestConcurrentClients(t *testing.T) {
	ex, fb := fileExport(t, "shared", 8<<20)
	_, addr := startServer(t, []Option{WithInFlight(4, 1<<20)}, ex)
	var wg sync.WaitGroup
	for k := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := dialExport(t, addr, "shared")
			rng := rand.New(rand.NewPCG(uint64(k), 1))
			base := uint64(k) * 4 << 20
			for i := range 40 {
				p := make([]byte, 1+rng.IntN(256<<10))
				for j := range p {
					p[j] = byte(k*7 + i)
				}
				off := base + uint64(rng.IntN(4<<20-len(p)))
				if code := c.write(t, off, p); code != 0 {
					t.Errorf("client %d write: %d", k, code)
					return
				}
				got, code := c.read(t, off, uint32(len(p)))
				if code != 0 || !bytes.Equal(got, p) {
					t.Errorf("client %d read back differs", k)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := fb.Flush(); err != nil {
		t.Fatal(err)
	}
}

func TestMetrics(t *testing.T) {
	ex, _ := fileExport(t, "m", 1<<20)
	reg := prometheus.NewRegistry()
	s, addr := startServer(t, []Option{WithRegisterer(reg)}, ex)
	c := dialExport(t, addr, "m")
	c.write(t, 0, make([]byte, 1000))
	c.read(t, 0, 300)
	c.read(t, 1<<20, 1)
	var m dtoCounter
	if got := m.value(t, s, "continuum_nbd_written_bytes_total"); got != 1000 {
		t.Fatalf("written %v", got)
	}
	if got := m.value(t, s, "continuum_nbd_read_bytes_total"); got != 300 {
		t.Fatalf("read %v", got)
	}
	if got := m.value(t, s, `continuum_nbd_requests_total{op="read"}`); got != 2 {
		t.Fatalf("reads %v", got)
	}
	if got := m.value(t, s, `continuum_nbd_request_errors_total{op="read"}`); got != 1 {
		t.Fatalf("read errors %v", got)
	}
	mfs, err := reg.Gather()
	if err != nil || len(mfs) == 0 {
		t.Fatalf("registry: %d families, %v", len(mfs), err)
	}
}

// dtoCounter reads one series from the server's collectors.
type dtoCounter struct{}

func (dtoCounter) value(t *testing.T, s *Server, series string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	for _, c := range s.Collectors() {
		reg.MustRegister(c)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	name, label, _ := strings.Cut(strings.TrimSuffix(series, "}"), "{")
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, lp := range m.GetLabel() {
				ls = append(ls, lp.GetName()+`="`+lp.GetValue()+`"`)
			}
			if strings.Join(ls, ",") != label {
				continue
			}
			if m.Counter != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

func TestIdleNegotiationIsDropped(t *testing.T) {
	ex, _ := fileExport(t, "d", 1<<20)
	_, addr := startServer(t, []Option{WithHandshakeTimeout(200 * time.Millisecond)}, ex)
	nc, r := dialRaw(t, addr) // sends its flags, then no option
	(&testClient{nc: nc, r: r}).expectClosed(t)
	// A client that negotiated in time is not bound by the deadline.
	c := dialExport(t, addr, "d")
	time.Sleep(400 * time.Millisecond)
	if code := c.write(t, 0, []byte("late")); code != 0 {
		t.Fatal(code)
	}
}

func TestServeAfterClose(t *testing.T) {
	s := NewServer(nil)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(l); err != nil {
		t.Fatalf("serve after close: %v", err)
	}
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("listener left open: %v", err)
	}
	ex, _ := fileExport(t, "late", 4096)
	if err := s.AddExport(ex); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("add export after close: %v", err)
	}
}
