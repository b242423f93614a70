package proxy

import (
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/filter/journal"
	"github.com/continuum-cdp/continuum/filter/target"
	"github.com/continuum-cdp/continuum/internal/wire"
)

// TestTargetRoutesByVM sends each VM to its configured target filter over
// TLS: a per-VM address first, the default otherwise.
func TestTargetRoutesByVM(t *testing.T) {
	conf := targetTLS(t)
	start := func() *target.Service {
		s, err := target.New(target.Config{JournalDir: t.TempDir(), ListenAddr: "127.0.0.1:0", TLS: conf})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- s.Run(context.Background()) }()
		t.Cleanup(func() { s.Close(); <-done })
		return s
	}
	f1, f2 := start(), start()
	tp, err := NewTarget(TargetConfig{TLS: conf, FilterTLS: conf, FilterAddr: f2.Addr(), FilterAddrs: map[string]string{"vm-a": f1.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- tp.Serve(ctx, l) }()
	t.Cleanup(func() { cancel(); <-served })

	for _, vm := range []string{"vm-a", "vm-b"} {
		d := tls.Dialer{Config: conf}
		nc, err := d.DialContext(ctx, "tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c := wire.NewConn(nc)
		defer c.Close()
		if err := c.Send(&wire.Hello{Role: wire.RoleSourceProxy, VM: vm, Disks: targetTestDisks}); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if ack, err := wire.Expect[*wire.HelloAck](c); err != nil || ack.Err != "" {
			t.Fatalf("%s: %+v %v", vm, ack, err)
		}
	}
	if _, ok := f1.Store().VM("vm-a"); !ok {
		t.Fatal("vm-a did not reach its own target filter")
	}
	if _, ok := f2.Store().VM("vm-b"); !ok {
		t.Fatal("vm-b did not reach the default target filter")
	}
	if _, ok := f1.Store().VM("vm-b"); ok {
		t.Fatal("vm-b reached vm-a's target filter")
	}
}

// TestTargetRequiresClientCertificate refuses a source proxy whose
// certificate comes from another CA before any frame is read.
func TestTargetRequiresClientCertificate(t *testing.T) {
	rig := newTargetRig(t, nil, journal.Options{})
	stranger := targetTLS(t) // another CA
	d := tls.Dialer{Config: stranger}
	nc, err := d.DialContext(context.Background(), "tcp", rig.addr)
	if err == nil {
		c := wire.NewConn(nc)
		defer c.Close()
		_ = c.Send(&wire.Hello{Role: wire.RoleSourceProxy, VM: "vm-a", Disks: targetTestDisks})
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if ack, err := wire.Expect[*wire.HelloAck](c); err == nil {
			t.Fatalf("a foreign certificate got a hello ack: %+v", ack)
		}
	}
	if len(rig.filter.Load().Store().VMs()) != 0 {
		t.Fatal("a foreign source reached the journal")
	}
}

func TestTargetCloseStopsServe(t *testing.T) {
	tp, err := NewTarget(TargetConfig{FilterAddr: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- tp.Serve(context.Background(), l) }()
	// A session whose target filter is unreachable is refused, not hung.
	nc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := wire.NewConn(nc)
	defer c.Close()
	_ = c.Send(&wire.Hello{Role: wire.RoleSourceProxy, VM: "vm", Disks: targetTestDisks})
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if ack, err := wire.Expect[*wire.HelloAck](c); err != nil || ack.Err == "" {
		t.Fatalf("unreachable filter: %+v %v", ack, err)
	}
	tp.Close()
	select {
	case err := <-served:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after Close")
	}
}
