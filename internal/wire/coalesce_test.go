package wire

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/big"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func testTLSConfigs(t testing.TB) (server, client *tls.Config) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: k}}},
		&tls.Config{RootCAs: pool}
}

// countingConn counts the writes that reach the socket.
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

type countingListener struct {
	net.Listener
	conns chan *countingConn
}

func (l countingListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	cc := &countingConn{Conn: nc}
	l.conns <- cc
	return cc, nil
}

// A message's TLS records reach the socket in a few writes instead of one
// per record; the handshake (started by the first Send, not before) is not
// held; both directions carry their messages intact.
func TestTLSWritesCoalesce(t *testing.T) {
	scfg, ccfg := testTLSConfigs(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	counted := countingListener{Listener: l, conns: make(chan *countingConn, 1)}
	tl := TLSListener(counted, scfg)
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB: 64 TLS records
	type result struct {
		err    error
		writes int64
	}
	done := make(chan result, 1)
	go func() {
		nc, err := tl.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		c := NewConn(nc)
		defer c.Close()
		// the server's first act is a write: its handshake runs inside
		// WriteMsg and must not wait in a held buffer
		if err := c.Send(&Heartbeat{}); err != nil {
			done <- result{err: err}
			return
		}
		m, err := c.ReadMsg()
		if err != nil {
			done <- result{err: err}
			return
		}
		sock := <-counted.conns
		before := sock.writes.Load()
		if err := c.Send(m); err != nil { // echo the 1 MiB write
			done <- result{err: err}
			return
		}
		done <- result{writes: sock.writes.Load() - before}
	}()
	nc, err := DialTLS(context.Background(), nil, l.Addr().String(), ccfg)
	if err != nil {
		t.Fatal(err)
	}
	c := NewConn(nc)
	defer c.Close()
	if _, err := Expect[*Heartbeat](c); err != nil {
		t.Fatal(err)
	}
	if err := c.Send(&Write{Seq: 1, Op: OpData, Len: uint32(len(data)), Data: data}); err != nil {
		t.Fatal(err)
	}
	echo, err := Expect[*Write](c)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(echo.Data, data) {
		t.Fatal("the echoed write differs")
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	// 1 MiB in 256 KiB pieces: 4 or 5 writes; one per record would be 64
	if r.writes < 1 || r.writes > 8 {
		t.Fatalf("1 MiB reached the socket in %d writes, want at most 8", r.writes)
	}
}

// DialTLS verifies the server as tls.Dial would.
func TestDialTLSVerifies(t *testing.T) {
	scfg, _ := testTLSConfigs(t)
	_, other := testTLSConfigs(t) // trusts another CA
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	tl := TLSListener(l, scfg)
	go func() {
		if nc, err := tl.Accept(); err == nil {
			nc.(*tls.Conn).Handshake()
			nc.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if nc, err := DialTLS(ctx, nil, l.Addr().String(), other); err == nil {
		nc.Close()
		t.Fatal("a server of an unknown CA was accepted")
	}
}

// Reads smaller than readChunk are served from one larger socket read:
// every byte arrives once, in order, and the socket's EOF comes after
// the bytes read ahead.
func TestCoalescingReadAhead(t *testing.T) {
	a, b := net.Pipe()
	data := make([]byte, 300<<10)
	rand.Read(data)
	go func() {
		b.Write(data)
		b.Close()
	}()
	c := &coalescingConn{Conn: a}
	var got []byte
	sizes := []int{5, 16 << 10, 1, 100 << 10, 3000}
	for i := 0; ; i++ {
		p := make([]byte, sizes[i%len(sizes)])
		n, err := c.Read(p)
		got = append(got, p[:n]...)
		if err != nil {
			if err.Error() != "EOF" {
				t.Fatal(err)
			}
			break
		}
		if i > 1e5 {
			t.Fatal("no EOF")
		}
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, not the %d written", len(got), len(data))
	}
	if c.rbuf != nil {
		t.Fatal("a drained connection still holds its read-ahead buffer")
	}
}

// tlsPair is a TLS connection over an in-memory pipe.
func tlsPair(t *testing.T) (server, client *tls.Conn) {
	scfg, ccfg := testTLSConfigs(t)
	ccfg.ServerName = "127.0.0.1"
	a, b := net.Pipe()
	server, client = tls.Server(a, scfg), tls.Client(b, ccfg)
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

func TestUncheckedFramesOnlyOverTLS(t *testing.T) {
	server, client := tlsPair(t)
	data := bytes.Repeat([]byte("unchecked "), 40000)
	sent := make(chan error, 1)
	go func() {
		c := NewConn(server)
		// the client's announcement lets the server leave out CRCs
		if _, err := Expect[*Hello](c); err != nil {
			sent <- err
			return
		}
		if !c.Unchecked() {
			sent <- errors.New("server: peer announced unchecked frames, still writing checked ones")
			return
		}
		if err := c.Send(&Write{Seq: 7, Op: OpData, Len: uint32(len(data)), Data: data}); err != nil {
			sent <- err
			return
		}
		if err := c.Send(&Ack{Seq: 8}); err != nil {
			sent <- err
			return
		}
		// a checked frame whose CRC is wrong, straight onto the stream
		bad, _ := AppendFrame(nil, &Ack{Seq: 9})
		bad[len(bad)-1] ^= 1
		_, err := server.Write(bad)
		sent <- err
	}()
	if err := NewConn(client).Send(&Hello{Role: RoleSourceFilter}); err != nil {
		t.Fatal(err)
	}
	// a reader of the same TLS stream that does not know it is TLS reads
	// the server's announcement (checked) and refuses the next frame: it
	// was written unchecked
	plain := NewDecoder(client, 0)
	if m, err := plain.Next(); err != nil || m.Type() != TypeFeatures {
		t.Fatalf("first frame: want the Features announcement, got %v, %v", m, err)
	}
	if _, err := plain.Next(); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "without a checksum") {
		t.Fatalf("unchecked frame from a reader that is not TLS-aware: want ErrCorrupt, got %v", err)
	}
	// a Conn over TLS accepts the unchecked frames
	c := NewConn(client)
	ack, err := Expect[*Ack](c)
	if err != nil || ack.Seq != 8 {
		t.Fatalf("unchecked Ack over TLS: %+v, %v", ack, err)
	}
	if _, err := c.ReadMsg(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("checked frame with a bad CRC over TLS: want ErrCorrupt, got %v", err)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
}

// TestFeaturesNegotiated: two Conns of this version over TLS start with
// checked frames and go unchecked each as soon as the other's
// announcement arrives; the announcement never reaches the caller.
func TestFeaturesNegotiated(t *testing.T) {
	server, client := tlsPair(t)
	sc, cc := NewConn(server), NewConn(client)
	done := make(chan error, 1)
	go func() {
		h, err := Expect[*Hello](sc)
		if err == nil && h.VM != "vm-1" {
			err = fmt.Errorf("hello for %q", h.VM)
		}
		if err == nil {
			err = sc.Send(&HelloAck{Resume: 3})
		}
		for err == nil {
			var w *Write
			if w, err = Expect[*Write](sc); err == nil && w.Seq == 2 {
				break
			}
		}
		done <- err
	}()
	if cc.Unchecked() || sc.Unchecked() {
		t.Fatal("unchecked before any announcement")
	}
	if err := cc.Send(&Hello{Role: RoleSourceFilter, VM: "vm-1"}); err != nil {
		t.Fatal(err)
	}
	if ack, err := Expect[*HelloAck](cc); err != nil || ack.Resume != 3 {
		t.Fatalf("hello ack: %+v, %v", ack, err)
	}
	if !cc.Unchecked() {
		t.Fatal("client: the server announced unchecked frames, still checked")
	}
	data := bytes.Repeat([]byte{7}, 300<<10)
	for seq := uint64(1); seq <= 2; seq++ {
		if err := cc.Send(&Write{Seq: seq, Op: OpData, Len: uint32(len(data)), Data: data}); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !sc.Unchecked() {
		t.Fatal("server: the client announced unchecked frames, still checked")
	}
}

// TestOlderPeerGetsCheckedFrames: a peer of the release before unchecked
// frames sends no announcement and refuses unchecked frames. This
// version's Conn must keep writing checked frames to it, and the
// announcement must pass as a skippable frame.
func TestOlderPeerGetsCheckedFrames(t *testing.T) {
	server, client := tlsPair(t)
	done := make(chan error, 1)
	go func() {
		// this version, as the server
		c := NewConn(server)
		if _, err := Expect[*Hello](c); err != nil {
			done <- err
			return
		}
		data := bytes.Repeat([]byte("older "), 60000)
		if err := c.Send(&HelloAck{Resume: 1}); err != nil {
			done <- err
			return
		}
		if err := c.Send(&Write{Seq: 2, Op: OpData, Len: uint32(len(data)), Data: data}); err != nil {
			done <- err
			return
		}
		if c.Unchecked() {
			done <- errors.New("server went unchecked toward a peer that never announced it")
			return
		}
		done <- nil
	}()
	// the older client: frames built without a Conn (no announcement),
	// read by a decoder that refuses unchecked frames and, not knowing
	// the Features type, passes over skippable frames
	hello, err := AppendFrame(nil, &Hello{Role: RoleSourceFilter, VM: "vm-1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Write(hello); err != nil {
		t.Fatal(err)
	}
	old := NewDecoder(client, 0)
	var got []MsgType
	for len(got) < 2 {
		m, err := old.Next()
		if err != nil {
			t.Fatalf("older reader after %v: %v", got, err)
		}
		if m.Type() == TypeFeatures {
			continue // skippable: an older reader drops it unread
		}
		got = append(got, m.Type())
	}
	if got[0] != TypeHelloAck || got[1] != TypeWrite {
		t.Fatalf("older reader got %v", got)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// and an unknown skippable type is what the announcement looks like
	// to that reader: passed over
	f, _ := AppendFrame(nil, &Features{Bits: FeatureUncheckedFrames | FeatureIntegrityFrames})
	f[3] = 250 // a type this version does not know
	binary.BigEndian.PutUint32(f[len(f)-TrailerLen:], crc32.Checksum(f[:len(f)-TrailerLen], castagnoli))
	ack, _ := AppendFrame(nil, &Ack{Seq: 5})
	m, err := NewDecoder(bytes.NewReader(append(f, ack...)), 0).Next()
	if err != nil || m.Type() != TypeAck {
		t.Fatalf("skippable unknown frame: got %v, %v", m, err)
	}
}
