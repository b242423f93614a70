package wire

import (
	"hash/crc32"
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

// BenchmarkDataPass is one pass over the bytes of 1 MiB frames: a copy, a
// CRC-32C (what a checked frame and a journal record cost) and a GMAC tag
// (what an integrity frame costs), over data still in the CPU's caches
// ("hot": the same 1 MiB again and again) and over data that has left them
// ("cold": each frame in turn of 256 MiB, as a stream of writes arrives).
// The cold figures lie much closer together than the hot ones: once the
// bytes have to come from memory, that traffic weighs more than what a
// pass computes, and the data path's cost follows the number of passes it
// makes over each byte more than the kind of each.
// Run: go test -run '^$' -bench DataPass ./internal/wire/
func BenchmarkDataPass(b *testing.B) {
	const frame = 1 << 20
	mac, err := newFrameMAC(make([]byte, 16))
	if err != nil {
		b.Fatal(err)
	}
	crc := crc32.MakeTable(crc32.Castagnoli)
	for _, c := range []struct {
		name string
		size int
	}{{"hot", frame}, {"cold", 256 << 20}} {
		src := make([]byte, c.size)
		dst := make([]byte, frame)
		for i := range src {
			src[i] = byte(i*7 + i>>12)
		}
		passes := map[string]func(p []byte){
			"copy":   func(p []byte) { copy(dst, p) },
			"crc32c": func(p []byte) { crc32.Checksum(p, crc) },
			"gmac":   func(p []byte) { mac.next(nil, p) },
		}
		for _, name := range []string{"copy", "crc32c", "gmac"} {
			pass := passes[name]
			b.Run(c.name+"/"+name, func(b *testing.B) {
				b.SetBytes(frame)
				off := 0
				for b.Loop() {
					pass(src[off : off+frame])
					if off += frame; off == len(src) {
						off = 0
					}
				}
			})
		}
	}
}
