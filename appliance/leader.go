package appliance

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Controller is a leader-only loop. It runs until ctx is canceled, which
// happens when this node loses leadership or shuts down; it is started again
// on the next gain.
type Controller struct {
	Name string
	Run  func(ctx context.Context) error
}

// Barrierer waits until everything committed before is applied locally.
type Barrierer interface {
	Barrier(ctx context.Context) error
}

// LeaderRunner starts the registered controllers when this node becomes
// leader and stops them when it stops being leader.
type LeaderRunner struct {
	changes <-chan bool
	store   Barrierer
	log     *slog.Logger

	// OnChange, when set, is told every leadership change (metrics).
	OnChange func(leader bool)

	mu          sync.Mutex
	controllers []Controller
}

// NewLeaderRunner consumes changes (true: became leader, false: lost it).
func NewLeaderRunner(changes <-chan bool, store Barrierer, log *slog.Logger) *LeaderRunner {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &LeaderRunner{changes: changes, store: store, log: log}
}

// Register adds a controller; registrations after Run starts take effect at
// the next leadership gain.
func (l *LeaderRunner) Register(c Controller) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.controllers = append(l.controllers, c)
}

// Run blocks until ctx ends, then stops every controller and returns once
// they have all returned.
func (l *LeaderRunner) Run(ctx context.Context) {
	stop := func() {}
	defer func() { stop() }()
	for {
		select {
		case <-ctx.Done():
			return
		case leader, ok := <-l.changes:
			if !ok {
				return
			}
			if l.OnChange != nil {
				l.OnChange(leader)
			}
			stop()
			stop = func() {}
			if !leader {
				l.log.Info("lost leadership: controllers stopped")
				continue
			}
			stop = l.startTerm(ctx)
		}
	}
}

// startTerm starts the controllers for one leadership term and returns the
// function that stops them and waits for them to return.
func (l *LeaderRunner) startTerm(ctx context.Context) func() {
	lctx, cancel := context.WithCancel(ctx)
	l.mu.Lock()
	ctrls := append([]Controller(nil), l.controllers...)
	l.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.lead(lctx, ctrls)
	}()
	return func() {
		cancel()
		<-done
	}
}

// lead waits for the barrier (so controllers see everything the previous
// leader committed), then runs the controllers until lctx ends.
func (l *LeaderRunner) lead(ctx context.Context, ctrls []Controller) {
	for attempt := 0; ; attempt++ {
		bctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := l.store.Barrier(bctx)
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		l.log.Warn("barrier after gaining leadership failed; retrying", "err", err, "attempt", attempt)
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
	l.log.Info("gained leadership: starting controllers", "count", len(ctrls))
	var wg sync.WaitGroup
	for _, c := range ctrls {
		wg.Add(1)
		go func(c Controller) {
			defer wg.Done()
			l.runController(ctx, c)
		}(c)
	}
	wg.Wait()
}

// runController restarts a controller that returns early (an error or a
// panic-free early exit) with backoff while leadership lasts.
func (l *LeaderRunner) runController(ctx context.Context, c Controller) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := c.Run(ctx)
		if ctx.Err() != nil {
			return
		}
		l.log.Warn("controller stopped while leader; restarting", "controller", c.Name, "err", err, "after", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		if backoff < 5*time.Second {
			backoff *= 2
		}
	}
}
