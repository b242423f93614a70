package controllers

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/raftstore"
)

func schedFixture(t *testing.T, hook string) (*memStore, *fakeComponents, *fakeClock, *Scheduler) {
	t.Helper()
	st := newMemStore()
	clock := &fakeClock{now: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)}
	comps := newFakeComponents()
	comps.clock = clock
	mustApply(t, st, raftstore.PutPolicy{Policy: model.Policy{ID: "p", Name: "p", Enabled: true,
		LongTermEvery: model.Duration(time.Hour), LongTermRetention: model.Duration(2 * time.Hour), PrePointHook: hook}})
	mustApply(t, st, raftstore.PutTask{Task: model.VMTask{ID: "p/vm-1", PolicyID: "p", VMMoRef: "vm-1", VMName: "one", Status: model.StatusSyncing}})
	mustApply(t, st, raftstore.PutTask{Task: model.VMTask{ID: "p/vm-2", PolicyID: "p", VMMoRef: "vm-2", VMName: "two", Status: model.StatusInitialSync}})
	s, err := NewScheduler(SchedulerConfig{Store: st, Components: comps, Clock: clock, HookTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return st, comps, clock, s
}

func points(st Store) []model.RestorePoint {
	var out []model.RestorePoint
	st.Read(func(s *model.State) {
		for _, p := range s.RestorePoints {
			out = append(out, *p)
		}
	})
	return out
}

func TestSchedulerCreatesAndExpiresPoints(t *testing.T) {
	st, comps, clock, s := schedFixture(t, "")
	ctx := context.Background()
	if err := s.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	ps := points(st)
	if len(ps) != 1 || ps[0].VMMoRef != "vm-1" || ps[0].Kind != model.PointLongTerm || ps[0].Status != model.StatusSuccess {
		t.Fatalf("first pass: %+v (only the syncing VM gets a point)", ps)
	}
	if !ps[0].ExpiresAt.Equal(clock.Now().Add(2 * time.Hour)) {
		t.Fatalf("expires %s", ps[0].ExpiresAt)
	}
	clock.Advance(30 * time.Minute)
	if err := s.Tick(ctx); err != nil || len(points(st)) != 1 {
		t.Fatalf("not due yet: %v %d points", err, len(points(st)))
	}
	clock.Advance(31 * time.Minute)
	if err := s.Tick(ctx); err != nil || len(points(st)) != 2 {
		t.Fatalf("due: %v %d points", err, len(points(st)))
	}
	// Past the first point's retention: it is removed, a new one formed.
	clock.Advance(65 * time.Minute)
	if err := s.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	ps = points(st)
	if len(ps) != 2 {
		t.Fatalf("after expiry %d points: %+v", len(ps), ps)
	}
	for _, p := range ps {
		if !p.ExpiresAt.After(clock.Now()) {
			t.Fatalf("expired point kept: %+v", p)
		}
	}
	if len(comps.longTerm) != 3 {
		t.Fatalf("%d long-term requests", len(comps.longTerm))
	}
	if got := counter(t, s.metrics.Reconciles.WithLabelValues("long-term", ResultSuccess)); got != 4 {
		t.Fatalf("%v passes counted, want 4", got)
	}
	if got := counter(t, s.metrics.Points.WithLabelValues("expired")); got != 1 {
		t.Fatalf("%v expiries counted", got)
	}

	// A disabled policy forms no points.
	mustApply(t, st, raftstore.SetPolicyEnabled{ID: "p", Enabled: false})
	clock.Advance(2 * time.Hour)
	if err := s.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if len(comps.longTerm) != 3 {
		t.Fatal("a disabled policy formed a point")
	}
}

func TestSchedulerPrePointHook(t *testing.T) {
	st, _, _, s := schedFixture(t, "echo quiesced; exit 0")
	if err := s.Tick(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ps := points(st); len(ps) != 1 || ps[0].Status != model.StatusSuccess || ps[0].Reason != "" {
		t.Fatalf("hook success: %+v", ps)
	}

	st, _, _, s = schedFixture(t, `echo "database refused to freeze" >&2; exit 3`)
	if err := s.Tick(context.Background()); err != nil {
		t.Fatal(err)
	}
	ps := points(st)
	if len(ps) != 1 || ps[0].Status != model.StatusWarning || !strings.Contains(ps[0].Reason, "database refused to freeze") {
		t.Fatalf("hook failure: %+v", ps)
	}

	st, _, _, s = schedFixture(t, "sleep 30")
	s.cfg.HookTimeout = 100 * time.Millisecond
	start := time.Now()
	if err := s.Tick(context.Background()); err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatal("the hook timeout was not applied")
	}
	if ps := points(st); len(ps) != 1 || ps[0].Status != model.StatusWarning {
		t.Fatalf("hook timeout: %+v", ps)
	}
}

func TestSchedulerStopsWithoutQuorum(t *testing.T) {
	st, comps, _, s := schedFixture(t, "")
	s.cfg.Tick = 10 * time.Millisecond
	st.setQuorum(false)
	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background()) }()
	select {
	case err := <-done:
		if !errors.Is(err, model.ErrNoLeader) {
			t.Fatalf("run ended with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the scheduler kept running without quorum")
	}
	if len(comps.longTerm) != 0 || len(points(st)) != 0 {
		t.Fatal("a point was formed without quorum")
	}
	st.setQuorum(true)
	if err := s.Tick(context.Background()); err != nil || len(points(st)) != 1 {
		t.Fatalf("after quorum returns: %v %d", err, len(points(st)))
	}
}

func TestSchedulerComponentFailure(t *testing.T) {
	st, comps, _, s := schedFixture(t, "")
	comps.fail = errors.New("target proxy down")
	if err := s.Tick(context.Background()); err == nil || !strings.Contains(err.Error(), "target proxy down") {
		t.Fatalf("tick: %v", err)
	}
	if len(points(st)) != 0 {
		t.Fatal("a point that was not formed was recorded")
	}
}

// idleComponents answers every long-term request with the same newest
// point, as a target filter does for a VM with nothing new.
type idleComponents struct {
	fakeComponents
	at    time.Time
	calls int
}

func (c *idleComponents) CreateLongTerm(ctx context.Context, t model.VMTask) (time.Time, error) {
	c.calls++
	return c.at, nil
}

func TestSchedulerIdleVMKeepsItsPoint(t *testing.T) {
	st, _, clock, _ := schedFixture(t, "")
	idle := &idleComponents{at: clock.Now().Add(-10 * time.Minute)}
	s, err := NewScheduler(SchedulerConfig{Store: st, Components: idle, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.Tick(ctx); err != nil || len(points(st)) != 1 || idle.calls != 1 {
		t.Fatalf("first pass: %v, %d points, %d calls", err, len(points(st)), idle.calls)
	}
	// The catalog's newest point is older than the period, yet the pass
	// is not repeated before the period is over.
	clock.Advance(55 * time.Minute)
	if err := s.Tick(ctx); err != nil || idle.calls != 1 {
		t.Fatalf("asked again within the period: %v, %d calls", err, idle.calls)
	}
	clock.Advance(10 * time.Minute)
	if err := s.Tick(ctx); err != nil || idle.calls != 2 || len(points(st)) != 1 {
		t.Fatalf("next period: %v, %d calls, %d points", err, idle.calls, len(points(st)))
	}
	// Once that point is past its retention it is removed and not
	// recorded again.
	clock.Advance(2 * time.Hour)
	if err := s.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if ps := points(st); len(ps) != 0 || idle.calls != 3 {
		t.Fatalf("after retention: %+v, %d calls", ps, idle.calls)
	}
}
