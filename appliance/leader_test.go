package appliance

import (
	"context"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

type fakeBarrier struct{ calls atomic.Int32 }

func (f *fakeBarrier) Barrier(ctx context.Context) error {
	// The first barrier fails, as one may right after an election.
	if f.calls.Add(1) == 1 {
		return errors.New("leadership lost")
	}
	return nil
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestLeaderRunnerStartsAndStopsControllers(t *testing.T) {
	changes := make(chan bool)
	fb := &fakeBarrier{}
	lr := NewLeaderRunner(changes, fb, nil)
	var starts, running, flaky atomic.Int32
	lr.Register(Controller{Name: "count", Run: func(ctx context.Context) error {
		starts.Add(1)
		running.Add(1)
		defer running.Add(-1)
		<-ctx.Done()
		return nil
	}})
	// A controller that fails is restarted while leadership lasts.
	lr.Register(Controller{Name: "flaky", Run: func(ctx context.Context) error {
		if flaky.Add(1) < 3 {
			return errors.New("transient")
		}
		<-ctx.Done()
		return nil
	}})
	var changesSeen atomic.Int32
	lr.OnChange = func(bool) { changesSeen.Add(1) }

	before := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { lr.Run(ctx); close(done) }()

	for cycle := 1; cycle <= 3; cycle++ {
		changes <- true
		waitFor(t, "controller running", func() bool { return running.Load() == 1 })
		if got := starts.Load(); got != int32(cycle) {
			t.Fatalf("cycle %d: %d starts", cycle, got)
		}
		changes <- false
		waitFor(t, "controller stopped", func() bool { return running.Load() == 0 })
	}
	if flaky.Load() < 3 {
		t.Fatalf("flaky controller not restarted: %d runs", flaky.Load())
	}
	if fb.calls.Load() < 4 {
		t.Fatalf("barrier not retried / not called each term: %d", fb.calls.Load())
	}
	// Gaining twice in a row restarts, never doubles, the controllers.
	changes <- true
	changes <- true
	waitFor(t, "controller running", func() bool { return running.Load() == 1 })
	time.Sleep(20 * time.Millisecond)
	if running.Load() != 1 {
		t.Fatalf("%d controller instances running", running.Load())
	}
	cancel()
	<-done
	if running.Load() != 0 {
		t.Fatal("controller still running after Run returned")
	}
	if changesSeen.Load() != 8 {
		t.Fatalf("OnChange saw %d changes, want 8", changesSeen.Load())
	}
	waitFor(t, "goroutines to end", func() bool { return runtime.NumGoroutine() <= before+1 })
}
