// Package netutil picks loopback listen addresses for processes that are
// started later (the lab's coordinators, tests' child processes). It imports
// nothing of ours.
package netutil

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
)

// A port taken from the kernel's ephemeral range (what "listen on :0"
// returns) can be handed to an outgoing connection of any process between
// the moment it is picked and the moment the child binds it. Ports below
// that range are only ever taken by an explicit bind, so the window is
// harmless there.
const lowest = 10000

// FreeLoopbackAddr returns "127.0.0.1:PORT" for a port that is free now and
// lies outside the ephemeral range.
func FreeLoopbackAddr() (string, error) {
	lo, hi := lowest, ephemeralLow()-1
	if hi-lo >= 1000 {
		for range 100 {
			addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(lo+rand.IntN(hi-lo+1)))
			if ln, err := net.Listen("tcp", addr); err == nil {
				ln.Close()
				return addr, nil
			}
		}
	}
	// No usable range below the ephemeral ports: let the kernel choose.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("pick a free loopback port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// ephemeralLow reads the start of the kernel's ephemeral port range
// (32768 when it cannot be read, the Linux default).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 32768
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return 32768
	}
	return n
}
