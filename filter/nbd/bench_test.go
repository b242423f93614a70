package nbd

import (
	"bufio"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"
)

// discardBackend accepts everything and stores nothing.
type discardBackend struct{ size int64 }

func (d discardBackend) Size() int64                                   { return d.size }
func (d discardBackend) ReadAt(p []byte, off int64) (int, error)       { clear(p); return len(p), nil }
func (d discardBackend) WriteAt(p []byte, off int64, fua bool) error   { return nil }
func (d discardBackend) WriteZeroes(off, length int64, fua bool) error { return nil }
func (d discardBackend) Trim(off, length int64) error                  { return nil }
func (d discardBackend) Flush() error                                  { return nil }

const (
	benchChunk = 1 << 20
	benchDepth = 8
)

// rawTCPMBps measures the baseline: n chunks copied over a loopback TCP
// connection with nothing else done to them.
func rawTCPMBps(b *testing.B, payload []byte, n int) float64 {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	done := make(chan int64, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- 0
			return
		}
		defer c.Close()
		// Read whole chunks, as the server does with a write payload.
		buf := make([]byte, len(payload))
		var got int64
		for {
			n, err := io.ReadFull(c, buf)
			got += int64(n)
			if err != nil {
				break
			}
		}
		done <- got
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	for range n {
		if _, err := c.Write(payload); err != nil {
			b.Fatal(err)
		}
	}
	c.Close()
	if got := <-done; got != int64(n*len(payload)) {
		b.Fatalf("baseline copied %d bytes, want %d", got, n*len(payload))
	}
	return float64(n*len(payload)) / 1e6 / time.Since(start).Seconds()
}

// BenchmarkNBDWrite writes 1 MiB requests, benchDepth in flight, through the
// server to a discard backend, and reports the rate as a ratio of a raw
// loopback TCP copy measured in the same run.
func BenchmarkNBDWrite(b *testing.B) {
	payload := make([]byte, benchChunk)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range payload {
		payload[i] = byte(rng.Uint32())
	}
	baseline := rawTCPMBps(b, payload, max(b.N, 64))

	const size = 1 << 30
	_, addr := startServer(b, nil, Export{Name: "null", Backend: discardBackend{size: size}})
	c := dialExport(b, addr, "null")
	slots := make(chan struct{}, benchDepth)
	sendErr := make(chan error, 1)
	b.SetBytes(benchChunk)
	b.ResetTimer()
	start := time.Now()
	go func() {
		var h [requestHdrLen]byte
		binary.BigEndian.PutUint32(h[0:], requestMagic)
		binary.BigEndian.PutUint16(h[6:], cmdWrite)
		binary.BigEndian.PutUint32(h[24:], benchChunk)
		for i := range b.N {
			slots <- struct{}{}
			binary.BigEndian.PutUint64(h[8:], uint64(i))
			binary.BigEndian.PutUint64(h[16:], uint64(i)*benchChunk%size)
			bufs := net.Buffers{h[:], payload}
			if _, err := bufs.WriteTo(c.nc); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- nil
	}()
	for range b.N {
		_, code, err := c.recv()
		if err != nil || code != 0 {
			b.Fatalf("reply: code %d, %v", code, err)
		}
		<-slots
	}
	elapsed := time.Since(start)
	b.StopTimer()
	if err := <-sendErr; err != nil {
		b.Fatal(err)
	}
	nbd := float64(b.N) * benchChunk / 1e6 / elapsed.Seconds()
	b.ReportMetric(baseline, "baseline-MB/s")
	b.ReportMetric(nbd/baseline, "ratio")
}

// BenchmarkNBDWrite4K is the small-request case (many replies per second),
// 32 requests in flight.
func BenchmarkNBDWrite4K(b *testing.B) {
	const chunk, depth, size = 4096, 32, 1 << 30
	payload := make([]byte, chunk)
	_, addr := startServer(b, nil, Export{Name: "null", Backend: discardBackend{size: size}})
	c := dialExport(b, addr, "null")
	slots := make(chan struct{}, depth)
	sendErr := make(chan error, 1)
	b.SetBytes(chunk)
	b.ResetTimer()
	go func() {
		w := bufio.NewWriterSize(c.nc, 64<<10)
		var h [requestHdrLen]byte
		binary.BigEndian.PutUint32(h[0:], requestMagic)
		binary.BigEndian.PutUint16(h[6:], cmdWrite)
		binary.BigEndian.PutUint32(h[24:], chunk)
		for i := range b.N {
			select {
			case slots <- struct{}{}:
			default:
				// Only wait with nothing left unsent.
				if err := w.Flush(); err != nil {
					sendErr <- err
					return
				}
				slots <- struct{}{}
			}
			binary.BigEndian.PutUint64(h[8:], uint64(i))
			binary.BigEndian.PutUint64(h[16:], uint64(i)*chunk%size)
			w.Write(h[:])
			w.Write(payload)
		}
		sendErr <- w.Flush()
	}()
	for range b.N {
		_, code, err := c.recv()
		if err != nil || code != 0 {
			b.Fatalf("reply: code %d, %v", code, err)
		}
		<-slots
	}
	b.StopTimer()
	if err := <-sendErr; err != nil {
		b.Fatal(err)
	}
}
