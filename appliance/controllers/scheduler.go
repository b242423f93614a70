package controllers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/raftstore"
)

// SchedulerConfig configures the long-term point scheduler.
type SchedulerConfig struct {
	Store      Store
	Components Components
	Metrics    *Metrics
	Logger     *slog.Logger
	Clock      Clock
	// Tick is how often schedules are checked (default 10s).
	Tick time.Duration
	// HookTimeout bounds a pre-point hook (default 5m).
	HookTimeout time.Duration
	// RunHook runs a pre-point hook command and returns its combined
	// output; nil runs it with /bin/sh -c.
	RunHook func(ctx context.Context, p *model.Policy, command string) ([]byte, error)
}

// Scheduler forms a long-term point per policy every LongTermEvery and
// removes catalog entries past their retention. It is a leader-only
// controller: without quorum it stops, and long-term points pause.
type Scheduler struct {
	cfg     SchedulerConfig
	log     *slog.Logger
	metrics *Metrics

	mu sync.Mutex
	// passed is when each policy's last pass succeeded: a policy whose VMs
	// had nothing new keeps its older points and is not asked again
	// before its next period.
	passed map[string]time.Time
}

// NewScheduler checks cfg and fills its defaults.
func NewScheduler(cfg SchedulerConfig) (*Scheduler, error) {
	if cfg.Store == nil || cfg.Components == nil {
		return nil, fmt.Errorf("scheduler: %w: Store and Components are required", model.ErrInvalid)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if cfg.Tick <= 0 {
		cfg.Tick = 10 * time.Second
	}
	if cfg.HookTimeout <= 0 {
		cfg.HookTimeout = 5 * time.Minute
	}
	if cfg.RunHook == nil {
		cfg.RunHook = runShellHook
	}
	m := cfg.Metrics
	if m == nil {
		m, _ = NewMetrics(nil)
	}
	return &Scheduler{cfg: cfg, log: cfg.Logger.With("controller", "long-term"), metrics: m, passed: map[string]time.Time{}}, nil
}

// runShellHook runs command with /bin/sh -c; the policy is named in the
// environment so that one script can serve several policies.
func runShellHook(ctx context.Context, p *model.Policy, command string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", command)
	cmd.Env = append(cmd.Environ(), "CONTINUUM_POLICY="+p.Name, "CONTINUUM_POLICY_ID="+p.ID)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// A hook that leaves a child holding its output must not hang us.
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	return out.Bytes(), err
}

// Run checks the schedules every Tick until ctx ends. It returns the error
// when the state cannot be read with quorum: the leader runner restarts it
// while this node leads, and nothing is scheduled meanwhile.
func (s *Scheduler) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.Tick)
	defer t.Stop()
	for {
		if err := s.Tick(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var nl *raftstore.NotLeaderError
			if errors.Is(err, model.ErrNoLeader) || errors.As(err, &nl) {
				return fmt.Errorf("long-term scheduler stopped: %w", err)
			}
			s.log.Warn("long-term schedule pass failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// dataPathRunning reports whether a task's data path is past the initial
// sync, so that a long-term point of it can be formed.
func dataPathRunning(t *model.VMTask) bool {
	switch t.Status {
	case model.StatusSyncing:
		return true
	case model.StatusWarning, model.StatusError:
		return strings.HasPrefix(t.Reason, lagReasonPrefix)
	}
	return false
}

type duePolicy struct {
	policy model.Policy
	tasks  []model.VMTask
}

// Tick runs one pass: forms the points that are due and removes expired
// catalog entries. Its outcome is counted like a reconcile.
func (s *Scheduler) Tick(ctx context.Context) error {
	err := s.tick(ctx)
	result := ResultSuccess
	if err != nil {
		result = ResultError
	}
	s.metrics.Reconciles.WithLabelValues("long-term", result).Inc()
	return err
}

func (s *Scheduler) tick(ctx context.Context) error {
	now := s.cfg.Clock.Now()
	var due []duePolicy
	var expired []string
	s.mu.Lock()
	passed := maps.Clone(s.passed)
	s.mu.Unlock()
	err := s.cfg.Store.ReadConsistent(ctx, func(st *model.State) {
		last := map[string]time.Time{}
		for _, rp := range st.RestorePoints {
			if rp.Kind == model.PointLongTerm && rp.Time.After(last[rp.PolicyID]) {
				last[rp.PolicyID] = rp.Time
			}
			if !rp.ExpiresAt.IsZero() && !now.Before(rp.ExpiresAt) {
				expired = append(expired, rp.ID)
			}
		}
		for _, p := range st.Policies {
			if !p.Enabled || p.LongTermEvery <= 0 {
				continue
			}
			if l, ok := last[p.ID]; ok && now.Sub(l) < p.LongTermEvery.D() {
				continue
			}
			if l, ok := passed[p.ID]; ok && now.Sub(l) < p.LongTermEvery.D() {
				continue
			}
			d := duePolicy{policy: *p}
			for _, t := range st.Tasks {
				if t.PolicyID == p.ID && dataPathRunning(t) {
					d.tasks = append(d.tasks, *t)
				}
			}
			if len(d.tasks) > 0 {
				sort.Slice(d.tasks, func(i, j int) bool { return d.tasks[i].ID < d.tasks[j].ID })
				due = append(due, d)
			}
		}
	})
	if err != nil {
		return fmt.Errorf("read schedules: %w", err)
	}
	sort.Slice(due, func(i, j int) bool { return due[i].policy.ID < due[j].policy.ID })
	sort.Strings(expired)
	var errs []error
	for _, d := range due {
		err := s.point(ctx, &d.policy, d.tasks, now)
		if err == nil {
			s.mu.Lock()
			s.passed[d.policy.ID] = now
			s.mu.Unlock()
		}
		errs = append(errs, err)
	}
	for _, id := range expired {
		if _, err := s.cfg.Store.Apply(ctx, raftstore.DeleteRestorePoint{ID: id}); err != nil && !errors.Is(err, model.ErrNotFound) {
			errs = append(errs, fmt.Errorf("remove expired restore point %s: %w", id, err))
			continue
		}
		s.metrics.Points.WithLabelValues("expired").Inc()
	}
	return errors.Join(errs...)
}

// point runs the policy's hook and forms a long-term point of each task.
func (s *Scheduler) point(ctx context.Context, p *model.Policy, tasks []model.VMTask, now time.Time) error {
	status, reason := model.StatusSuccess, ""
	if p.PrePointHook != "" {
		hctx, cancel := context.WithTimeout(ctx, s.cfg.HookTimeout)
		out, err := s.cfg.RunHook(hctx, p, p.PrePointHook)
		cancel()
		if err != nil {
			status = model.StatusWarning
			reason = fmt.Sprintf("pre-point hook failed (%v): %s", err, strings.TrimSpace(truncate(string(out), 512)))
			s.log.Warn("pre-point hook failed; point formed crash-consistent", "policy", p.Name, "err", err)
		}
	}
	var errs []error
	for _, t := range tasks {
		at, err := s.cfg.Components.CreateLongTerm(ctx, t)
		if err != nil {
			s.metrics.Points.WithLabelValues(ResultError).Inc()
			errs = append(errs, fmt.Errorf("form long-term point of %s: %w", t.VMName, err))
			continue
		}
		if at.IsZero() {
			at = now
		}
		rp := model.RestorePoint{
			ID: t.ID + "@" + at.UTC().Format(time.RFC3339Nano), PolicyID: p.ID, VMMoRef: t.VMMoRef,
			Kind: model.PointLongTerm, Time: at, ExpiresAt: at.Add(p.LongTermRetention.D()),
			Status: status, Reason: reason,
		}
		// A VM with nothing new answers with its newest point: recorded
		// already, or past its retention.
		var known bool
		s.cfg.Store.Read(func(st *model.State) { _, known = st.RestorePoints[rp.ID] })
		if known || (p.LongTermRetention > 0 && !rp.ExpiresAt.After(now)) {
			continue
		}
		if _, err := s.cfg.Store.Apply(ctx, raftstore.PutRestorePoint{RestorePoint: rp}); err != nil {
			errs = append(errs, fmt.Errorf("record long-term point of %s: %w", t.VMName, err))
			continue
		}
		s.metrics.Points.WithLabelValues(strings.ToLower(string(status))).Inc()
	}
	return errors.Join(errs...)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
