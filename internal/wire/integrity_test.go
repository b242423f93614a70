package wire

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// relay forwards one TCP connection both ways on loopback, records what
// crosses it, and may alter the client's bytes on their way.
type relay struct {
	addr string
	mu   sync.Mutex
	up   bytes.Buffer // client to server, as sent
	down bytes.Buffer // server to client
	// tamper, when set, may change a chunk from the client before it is
	// forwarded (once it returns true it is not called again)
	tamper func([]byte) bool
}

func startRelay(t testing.TB, target string) *relay {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{addr: l.Addr().String()}
	t.Cleanup(func() { l.Close() })
	go func() {
		in, err := l.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", target)
		if err != nil {
			in.Close()
			return
		}
		t.Cleanup(func() { in.Close(); out.Close() })
		go r.pipe(out, in, &r.down, nil)
		r.pipe(in, out, &r.up, &r.tamper)
	}()
	return r
}

func (r *relay) pipe(from, to net.Conn, rec *bytes.Buffer, tamper *func([]byte) bool) {
	defer to.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := from.Read(buf)
		if n > 0 {
			r.mu.Lock()
			rec.Write(buf[:n])
			if tamper != nil && *tamper != nil && (*tamper)(buf[:n]) {
				*tamper = nil
			}
			r.mu.Unlock()
			if _, werr := to.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (r *relay) seen(dir *bytes.Buffer, s []byte) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Contains(dir.Bytes(), s)
}

// integrityPair connects a client Conn to a server Conn (reading
// WithFrameReuse), both over TLS as the data path's hops are, through a
// recording relay unless direct; ask is the client's request, want the
// server's own rule. The server answers the Hello with a HelloAck
// immediately followed by an Ack, so the client has bytes after the switch
// in flight while it reads the answer.
func integrityPair(t testing.TB, ask, want, direct bool) (client, server *Conn, r *relay, agreed bool) {
	t.Helper()
	scfg, ccfg := testTLSConfigs(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	tl := TLSListener(l, scfg)
	addr := l.Addr().String()
	if !direct {
		r = startRelay(t, addr)
		addr = r.addr
	}
	type result struct {
		c      *Conn
		agreed bool
		err    error
	}
	done := make(chan result, 1)
	go func() {
		nc, err := tl.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		c := NewConn(nc, WithFrameReuse())
		if _, err := Expect[*Hello](c); err != nil {
			done <- result{err: err}
			return
		}
		ok := c.AgreeIntegrity(want)
		if err := c.Send(&HelloAck{Resume: 7}); err != nil {
			done <- result{err: err}
			return
		}
		done <- result{c: c, agreed: ok, err: c.Send(&Ack{Seq: 8})}
	}()
	cfg := ccfg.Clone()
	cfg.ServerName = "127.0.0.1"
	nc, err := DialTLS(t.Context(), nil, addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	client = NewConn(nc)
	t.Cleanup(func() { client.Close() })
	if ask && !client.RequestIntegrity() {
		t.Fatal("a TLS connection from DialTLS cannot ask for integrity frames")
	}
	ack, err := Greet(client, &Hello{Role: RoleSourceFilter, VM: "vm-secret-name", Disks: []Disk{{Key: 1, Capacity: 1 << 20}}}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	t.Cleanup(func() { res.c.Close() })
	if ack.Resume != 7 {
		t.Fatalf("hello ack %+v", ack)
	}
	if m, err := Expect[*Ack](client); err != nil || m.Seq != 8 {
		t.Fatalf("ack right after the answer: %+v, %v", m, err)
	}
	return client, res.c, r, res.agreed
}

func pattern(n int) []byte {
	return bytes.Repeat([]byte("integrity-frames-carry-this-in-clear/"), n/37+1)[:n]
}

// exchange sends writes of data both ways and checks they arrive whole.
func exchange(t *testing.T, client, server *Conn, data []byte) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		for i := range 4 {
			if err := client.Send(&Write{Seq: uint64(i + 1), Disk: 1, Off: 0, Op: OpData, Len: uint32(len(data)), Data: data}); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	for i := range 4 {
		w, err := Expect[*Write](server)
		if err != nil {
			t.Fatalf("server reads write %d: %v", i+1, err)
		}
		if w.Seq != uint64(i+1) || !bytes.Equal(w.Data, data) {
			t.Fatalf("write %d arrived as seq %d, %d bytes", i+1, w.Seq, len(w.Data))
		}
		if err := server.Send(&Ack{Seq: w.Seq}); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if a, err := Expect[*Ack](client); err != nil || a.Seq != uint64(i+1) {
			t.Fatalf("client reads ack %d: %+v, %v", i+1, a, err)
		}
	}
}

// Asked for by the side that sends Hello and granted by the answer: after
// the HelloAck both directions carry integrity frames, the data in clear on
// the wire, the Hello still inside TLS.
func TestIntegrityFramesAfterHello(t *testing.T) {
	client, server, r, agreed := integrityPair(t, true, false, false)
	if !agreed || !client.Integrity() || !server.Integrity() {
		t.Fatalf("agreed %v, client %v, server %v: want integrity frames on both sides", agreed, client.Integrity(), server.Integrity())
	}
	data := pattern(300 << 10)
	exchange(t, client, server, data)
	if !r.seen(&r.up, data[:4096]) {
		t.Fatal("the client's data is not in clear on the wire")
	}
	if r.seen(&r.up, []byte("vm-secret-name")) {
		t.Fatal("the Hello crossed the wire in clear")
	}
	// big and small frames keep flowing, and the reader hands back buffers
	exchange(t, client, server, pattern(3<<20))
	exchange(t, client, server, pattern(100))
}

// The answering side's own rule is enough when the asking side can switch.
func TestIntegrityGrantedByAnswer(t *testing.T) {
	client, server, _, agreed := integrityPair(t, false, true, false)
	if !agreed || !client.Integrity() || !server.Integrity() {
		t.Fatalf("agreed %v, client %v, server %v", agreed, client.Integrity(), server.Integrity())
	}
	exchange(t, client, server, pattern(64<<10))
}

// Neither side wants it: the connection stays TLS and nothing is in clear.
func TestIntegrityNotAgreedStaysTLS(t *testing.T) {
	client, server, r, agreed := integrityPair(t, false, false, false)
	if agreed || client.Integrity() || server.Integrity() {
		t.Fatalf("agreed %v, client %v, server %v: want TLS", agreed, client.Integrity(), server.Integrity())
	}
	data := pattern(300 << 10)
	exchange(t, client, server, data)
	if r.seen(&r.up, data[:64]) {
		t.Fatal("data in clear on a TLS connection")
	}
}

// A byte changed on the wire after the switch is caught by the tag: the
// reader fails and takes nothing of the frame.
func TestIntegrityTamperingDetected(t *testing.T) {
	client, server, r, _ := integrityPair(t, true, false, false)
	needle := []byte("carry-this")
	r.mu.Lock()
	r.tamper = func(b []byte) bool {
		i := bytes.Index(b, needle)
		if i < 0 {
			return false
		}
		b[i] ^= 0x20
		return true
	}
	r.mu.Unlock()
	data := pattern(128 << 10)
	go client.Send(&Write{Seq: 1, Disk: 1, Op: OpData, Len: uint32(len(data)), Data: data})
	_ = server.SetReadDeadline(time.Now().Add(5 * time.Second))
	m, err := server.ReadMsg()
	if err == nil || !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "integrity tag") {
		t.Fatalf("tampered frame: got %v, %v; want a corrupt-frame error naming the tag", m, err)
	}
}

// A peer of an earlier release announces nothing: the answer cannot agree
// and the connection stays TLS, readable by that peer.
func TestIntegrityOlderPeerStaysTLS(t *testing.T) {
	scfg, ccfg := testTLSConfigs(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	tl := TLSListener(l, scfg)
	done := make(chan error, 1)
	go func() {
		nc, err := tl.Accept()
		if err != nil {
			done <- err
			return
		}
		c := NewConn(nc)
		defer c.Close()
		if _, err := Expect[*Hello](c); err != nil {
			done <- err
			return
		}
		if c.AgreeIntegrity(true) {
			done <- errors.New("agreed with a peer that never offered integrity frames")
			return
		}
		done <- c.Send(&HelloAck{Resume: 3})
	}()
	cfg := ccfg.Clone()
	cfg.ServerName = "127.0.0.1"
	tc, err := tls.Dial("tcp", l.Addr().String(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	hello, _ := AppendFrame(nil, &Hello{Role: RoleSourceFilter, VM: "vm"})
	if _, err := tc.Write(hello); err != nil {
		t.Fatal(err)
	}
	old := NewDecoder(tc, 0)
	for {
		m, err := old.Next()
		if err != nil {
			t.Fatalf("older peer: %v", err)
		}
		if m.Type() == TypeFeatures {
			continue
		}
		if a, ok := m.(*HelloAck); !ok || a.Resume != 3 {
			t.Fatalf("older peer got %v", m)
		}
		break
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// tagged writes messages as integrity frames with key into a buffer.
func tagged(t testing.TB, key []byte, msgs ...Msg) []byte {
	t.Helper()
	var buf bytes.Buffer
	c := NewConn(bufConn{&buf})
	mac, err := newFrameMAC(key)
	if err != nil {
		t.Fatal(err)
	}
	c.wmac = mac
	for _, m := range msgs {
		if err := c.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

// bufConn is a net.Conn that only writes into a buffer.
type bufConn struct{ *bytes.Buffer }

func (bufConn) Close() error                     { return nil }
func (bufConn) LocalAddr() net.Addr              { return nil }
func (bufConn) RemoteAddr() net.Addr             { return nil }
func (bufConn) SetDeadline(time.Time) error      { return nil }
func (bufConn) SetReadDeadline(time.Time) error  { return nil }
func (bufConn) SetWriteDeadline(time.Time) error { return nil }

func readTagged(t *testing.T, key, stream []byte) ([]Msg, error) {
	t.Helper()
	d := NewDecoder(bytes.NewReader(stream), 0)
	mac, err := newFrameMAC(key)
	if err != nil {
		t.Fatal(err)
	}
	d.mac = mac
	var out []Msg
	for {
		m, err := d.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, m)
	}
}

// Every frame's tag binds its bytes, its key and its place in the stream:
// any change, a replay, a reordering, a dropped frame, another key, or a
// frame without a tag is refused; a stream that is intact reads back.
func TestIntegrityFrameChecks(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 16)
	data := pattern(5000)
	msgs := []Msg{&Write{Seq: 1, Disk: 2, Off: 4096, Op: OpData, Len: uint32(len(data)), Data: data},
		&Ack{Seq: 1}, &Point{ID: 9, Kind: PointShortTerm, Payload: data[:100]}, &Heartbeat{}}
	stream := tagged(t, key, msgs...)
	got, err := readTagged(t, key, stream)
	if err != nil || len(got) != len(msgs) {
		t.Fatalf("intact stream: %d messages, %v", len(got), err)
	}
	if w := got[0].(*Write); !bytes.Equal(w.Data, data) || w.Off != 4096 {
		t.Fatalf("write read back as %+v", w)
	}
	frames := splitFrames(t, stream)
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	cases := map[string][]byte{
		"replayed":  cat(frames[0], frames[0]),
		"reordered": cat(frames[1], frames[0]),
		"dropped":   cat(frames[0], frames[2]),
	}
	for i := 0; i < len(frames[0]); i += 97 {
		b := bytes.Clone(stream)
		b[i] ^= 1
		cases[fmt.Sprintf("byte %d changed", i)] = b
	}
	for name, b := range cases {
		if _, err := readTagged(t, key, b); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: got %v, want ErrCorrupt", name, err)
		}
	}
	if _, err := readTagged(t, bytes.Repeat([]byte{8}, 16), stream); !errors.Is(err, ErrCorrupt) {
		t.Errorf("another key: got %v", err)
	}
	plain, _ := AppendFrame(nil, &Ack{Seq: 1})
	if _, err := readTagged(t, key, plain); err == nil || !strings.Contains(err.Error(), "without an integrity tag") {
		t.Errorf("untagged frame on an integrity stream: %v", err)
	}
	if _, err := NewDecoder(bytes.NewReader(frames[1]), 0).Next(); err == nil || !strings.Contains(err.Error(), "did not agree") {
		t.Errorf("tagged frame on a checked stream: %v", err)
	}
}

// splitFrames cuts a stream of integrity frames at frame boundaries.
func splitFrames(t *testing.T, b []byte) [][]byte {
	t.Helper()
	var out [][]byte
	for len(b) > 0 {
		n := HeaderLen + int(be.Uint32(b[5:])) + TagLen
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}
