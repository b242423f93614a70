package wire

import (
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
	client, server, _, _ := integrityPair(b, integrity, false, true)
	if client.Integrity() != integrity {
		b.Fatalf("integrity frames %v, want %v", client.Integrity(), integrity)
	}
	n := b.N
	done := make(chan error, 1)
	go func() {
		for range n {
			m, err := server.ReadMsg()
			if err != nil {
				done <- err
				return
			}
			Release(m)
		}
		done <- nil
	}()
	data := make([]byte, 1<<20)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	cpu0 := cpuTime(b)
	for i := range n {
		if err := client.Send(&Write{Seq: uint64(i + 1), Disk: 1, Op: OpData, Len: uint32(len(data)), Data: data}); err != nil {
			b.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(n*len(data)), "cpu-ns/B")
}
