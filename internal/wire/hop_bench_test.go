package wire

import (
	"net"
	"syscall"
	"testing"
	"time"
)

// cpuTime is this process's user and system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkLoopbackHop streams 1 MiB Write frames over one data hop on
// loopback, both ends in this process, after the Hello exchange: over TLS,
// and over integrity frames (what a traffic rule's host_traffic=integrity
// gives the hops between host filters and proxies). cpu-ns/B is both ends'
// CPU per byte.
// Run: go test -run '^$' -bench LoopbackHop -benchtime 1000x ./internal/wire/
func BenchmarkLoopbackHop(b *testing.B) {
	for _, integrity := range []bool{false, true} {
		name := "tls"
		if integrity {
			name = "integrity"
		}
		b.Run(name, func(b *testing.B) { benchHop(b, integrity) })
	}
}

func benchHop(b *testing.B, integrity bool) {
	scfg, ccfg := testTLSConfigs(b)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	tl := TLSListener(l, scfg)
	n := b.N
	done := make(chan error, 1)
	go func() {
		nc, err := tl.Accept()
		if err != nil {
			done <- err
			return
		}
		c := NewConn(nc, WithFrameReuse())
		defer c.Close()
		if _, err := Expect[*Hello](c); err != nil {
			done <- err
			return
		}
		c.AgreeIntegrity(integrity)
		if err := c.Send(&HelloAck{}); err != nil {
			done <- err
			return
		}
		for range n {
			m, err := c.ReadMsg()
			if err != nil {
				done <- err
				return
			}
			Release(m)
		}
		done <- nil
	}()
	cfg := ccfg.Clone()
	cfg.ServerName = "127.0.0.1"
	nc, err := DialTLS(b.Context(), nil, l.Addr().String(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	c := NewConn(nc)
	defer c.Close()
	if _, err := Greet(c, &Hello{Role: RoleSourceFilter, VM: "vm", Disks: []Disk{{Key: 1, Capacity: 1 << 40}}}, 10*time.Second); err != nil {
		b.Fatal(err)
	}
	if c.Integrity() != integrity {
		b.Fatalf("integrity frames %v, want %v", c.Integrity(), integrity)
	}
	data := make([]byte, 1<<20)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	cpu0 := cpuTime(b)
	for i := range n {
		if err := c.Send(&Write{Seq: uint64(i + 1), Disk: 1, Op: OpData, Len: uint32(len(data)), Data: data}); err != nil {
			b.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(n*len(data)), "cpu-ns/B")
}
