package bufpool

import (
	"runtime"
	"sync"
	"testing"
)

func TestReuseSurvivesGC(t *testing.T) {
	p := New(64<<20, nil)
	b := p.Get(1 << 20)
	if len(b) != 1<<20 || cap(b) != 1<<20 {
		t.Fatalf("len %d cap %d", len(b), cap(b))
	}
	b[0] = 7
	p.Put(b)
	runtime.GC()
	runtime.GC()
	c := p.Get(1<<20 - 100)
	if &c[0] != &b[0] {
		t.Fatal("a released buffer was not reused after a collection")
	}
	if st := p.Stats(); st.Reused != 1 || st.Gets != 2 || st.Held != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestBound(t *testing.T) {
	p := New(3<<20, nil)
	var bufs [][]byte
	for i := 0; i < 5; i++ {
		bufs = append(bufs, p.Get(1<<20))
	}
	for _, b := range bufs {
		p.Put(b)
	}
	st := p.Stats()
	if st.Held != 3<<20 || st.Dropped != 2 {
		t.Fatalf("held %d dropped %d, want 3 MiB and 2", st.Held, st.Dropped)
	}
}

func TestForeignBuffersNotKept(t *testing.T) {
	p := New(64<<20, nil)
	p.Put(make([]byte, 100, 1000)) // not a class capacity
	p.Put(nil)
	if st := p.Stats(); st.Held != 0 {
		t.Fatalf("kept a foreign buffer: %+v", st)
	}
	p.Put(make([]byte, 10, 8192)) // a class capacity: kept
	if st := p.Stats(); st.Held != 8192 {
		t.Fatalf("a class-sized buffer was not kept: %+v", st)
	}
}

func TestClasses(t *testing.T) {
	for _, f := range []func(int) int{PowerOfTwo, Sixteenths} {
		for _, n := range []int{1, 4095, 4096, 4097, 65535, 1 << 20, 1<<20 + 1, 7 << 20, 17<<20 + 3, 64 << 20} {
			c := f(n)
			if c < n || f(c) != c {
				t.Fatalf("class(%d) = %d, class of that %d", n, c, f(c))
			}
		}
	}
	if c := Sixteenths(17<<20 + 3); c > 17<<20*9/8 {
		t.Fatalf("Sixteenths wastes too much: %d for %d", c, 17<<20+3)
	}
}

func TestConcurrent(t *testing.T) {
	p := New(16<<20, Sixteenths)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				b := p.Get(64<<10 + (g*i)%(1<<20))
				b[len(b)-1] = byte(g)
				p.Put(b)
			}
		}(g)
	}
	wg.Wait()
	if st := p.Stats(); st.Held > 16<<20 || st.Gets != 4000 {
		t.Fatalf("stats %+v", st)
	}
}

func TestLargerClassServes(t *testing.T) {
	p := New(64<<20, Sixteenths)
	big := p.Get(4<<20 + 600<<10) // of the 5 MiB class
	huge := p.Get(8 << 20)
	if cap(big) != 5<<20 {
		t.Fatalf("cap %d", cap(big))
	}
	p.Put(big)
	p.Put(huge)
	// 4 MiB + 1 is of the 4.5 MiB class: the free 5 MiB buffer serves
	b := p.Get(4<<20 + 1)
	if len(b) != 4<<20+1 || &b[:1][0] != &big[:1][0] {
		t.Fatalf("a free buffer of the next class was not reused (len %d cap %d)", len(b), cap(b))
	}
	// a buffer more than a quarter bigger is not handed out: 5 MiB + 1
	// is of the 5.5 MiB class, too far below the 8 MiB one
	c := p.Get(5<<20 + 1)
	if &c[:1][0] == &huge[:1][0] {
		t.Fatal("an 8 MiB buffer served a 5 MiB request")
	}
	if st := p.Stats(); st.Reused != 1 || st.Held != 8<<20 {
		t.Fatalf("stats %+v", st)
	}
}
