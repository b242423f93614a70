package appliance

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"testing"

	"github.com/continuum-cdp/continuum/filter/nbd"
)

func serveNBD(t *testing.T, name string, size int64) (string, *nbd.FileBackend) {
	t.Helper()
	b, err := nbd.OpenFile(filepath.Join(t.TempDir(), "disk.img"), size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	s := nbd.NewServer(slog.New(slog.DiscardHandler))
	if err := s.AddExport(nbd.Export{Name: name, Backend: b}); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() { s.Close(); <-done })
	return l.Addr().String(), b
}

func TestLabNBDClientWritesReachTheExport(t *testing.T) {
	addr, b := serveNBD(t, "app-001/2000", 1<<20)
	c, err := dialNBD(context.Background(), addr, "app-001/2000")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Size() != 1<<20 {
		t.Fatalf("size %d", c.Size())
	}
	p := bytes.Repeat([]byte("continuum"), 1000)
	if err := c.WriteAt(p, 4096); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(p))
	if _, err := b.ReadAt(got, 4096); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, p) {
		t.Fatal("backend does not hold what was written")
	}
	back := make([]byte, len(p))
	if err := c.ReadAt(back, 4096); err != nil || !bytes.Equal(back, p) {
		t.Fatalf("read back: %v", err)
	}
	// Out of range writes are refused before anything is sent.
	if err := c.WriteAt(p, 1<<20-10); err == nil {
		t.Fatal("write past the end accepted")
	}
	if err := c.WriteAt([]byte("x"), 0); err != nil {
		t.Fatalf("connection unusable after a refused write: %v", err)
	}
}

func TestLabNBDClientUnknownExport(t *testing.T) {
	addr, _ := serveNBD(t, "app-001/2000", 1<<20)
	_, err := dialNBD(context.Background(), addr, "app-002/2000")
	if !errors.Is(err, errNBDExport) {
		t.Fatalf("unknown export: %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		if nc, err := l.Accept(); err == nil {
			nc.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
			nc.Close()
		}
	}()
	defer l.Close()
	if _, err := dialNBD(context.Background(), l.Addr().String(), "x"); err == nil {
		t.Fatal("a server that is not NBD accepted")
	}
}
