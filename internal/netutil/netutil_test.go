package netutil

import (
	"net"
	"strconv"
	"testing"
)

func TestFreeLoopbackAddrBelowEphemeralRange(t *testing.T) {
	seen := map[string]bool{}
	for range 20 {
		addr, err := FreeLoopbackAddr()
		if err != nil {
			t.Fatal(err)
		}
		host, port, err := net.SplitHostPort(addr)
		if err != nil || host != "127.0.0.1" {
			t.Fatalf("address %q", addr)
		}
		p, _ := strconv.Atoi(port)
		if low := ephemeralLow(); low-1-lowest >= 1000 && (p < lowest || p >= low) {
			t.Fatalf("port %d not in [%d, %d)", p, lowest, low)
		}
		// The port is free: it can be bound.
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("picked port not free: %v", err)
		}
		ln.Close()
		seen[addr] = true
	}
	if len(seen) < 15 {
		t.Fatalf("only %d distinct ports in 20 picks", len(seen))
	}
}
