package nbd

import (
	"sync"
	"testing"
	"time"
)

// gateBackend blocks writes until released and records what it was asked.
type gateBackend struct {
	memBackend
	gate chan struct{}

	mu              sync.Mutex
	inside, maxSeen int
	fua             []bool
	flushes         int
}

func (g *gateBackend) WriteAt(p []byte, off int64, fua bool) error {
	g.mu.Lock()
	g.inside++
	g.maxSeen = max(g.maxSeen, g.inside)
	g.fua = append(g.fua, fua)
	g.mu.Unlock()
	<-g.gate
	g.mu.Lock()
	g.inside--
	g.mu.Unlock()
	return g.memBackend.WriteAt(p, off, fua)
}

func (g *gateBackend) Flush() error {
	g.mu.Lock()
	g.flushes++
	g.mu.Unlock()
	return nil
}

func (g *gateBackend) waitInside(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		g.mu.Lock()
		in := g.inside
		g.mu.Unlock()
		if in >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d writes in flight, waited for %d", in, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestInFlightIsConcurrentAndBounded(t *testing.T) {
	for _, tc := range []struct {
		name     string
		reqs     int
		bytes    int64
		writeLen int
		want     int
	}{
		{"by count", 4, 64 << 20, 4096, 4},
		{"by bytes", 100, 3 << 20, 1 << 20, 3},
		{"one larger than the budget", 100, 1 << 20, 2 << 20, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := &gateBackend{memBackend: memBackend{data: make([]byte, 32<<20)}, gate: make(chan struct{})}
			_, addr := startServer(t, []Option{WithInFlight(tc.reqs, tc.bytes)}, Export{Name: "g", Backend: g})
			// Runs before the server's cleanup, so a failed test cannot
			// leave writes blocked forever.
			t.Cleanup(func() { close(g.gate) })
			c := dialExport(t, addr, "g")
			const total = 10
			go func() {
				p := make([]byte, tc.writeLen)
				for i := range total {
					if err := c.send(cmdWrite, cmdFlagFUA, uint64(i), uint64(i*tc.writeLen), uint32(len(p)), p); err != nil {
						return
					}
				}
			}()
			g.waitInside(t, tc.want)
			for range total {
				g.gate <- struct{}{}
			}
			for range total {
				if _, code, err := c.recv(); err != nil || code != 0 {
					t.Fatalf("reply: %d %v", code, err)
				}
			}
			g.mu.Lock()
			defer g.mu.Unlock()
			if g.maxSeen != tc.want {
				t.Fatalf("at most %d writes in flight, want %d", g.maxSeen, tc.want)
			}
			for _, f := range g.fua {
				if !f {
					t.Fatal("FUA flag not passed to the backend")
				}
			}
		})
	}
}

func TestTrimWithFUAFlushes(t *testing.T) {
	g := &gateBackend{memBackend: memBackend{data: make([]byte, 1<<20)}, gate: make(chan struct{})}
	_, addr := startServer(t, nil, Export{Name: "g", Backend: g})
	c := dialExport(t, addr, "g")
	if code := c.do(t, cmdTrim, 0, 0, 4096, nil); code != 0 {
		t.Fatal(code)
	}
	if code := c.do(t, cmdTrim, cmdFlagFUA, 0, 4096, nil); code != 0 {
		t.Fatal(code)
	}
	if code := c.do(t, cmdFlush, 0, 0, 0, nil); code != 0 {
		t.Fatal(code)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.flushes != 2 {
		t.Fatalf("%d flushes, want 2 (trim with FUA, then flush)", g.flushes)
	}
}
