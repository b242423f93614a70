package controllers

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/raftstore"
	"github.com/continuum-cdp/continuum/vsphere"
)

// Config configures the policy reconciler.
type Config struct {
	Store       Store
	Inventories Inventories
	Components  Components
	Metrics     *Metrics // nil: unregistered collectors
	Logger      *slog.Logger
	Clock       Clock // nil: the system clock

	// HeartbeatTimeout: a proxy not heard from for longer is dead
	// (default 15s).
	HeartbeatTimeout time.Duration
	// Settle bounds how long a new term waits for the components in use to
	// report before anything is judged dead (default HeartbeatTimeout;
	// negative: no wait, for components that never report).
	Settle time.Duration
	// Resync is how long after a success a policy is reconciled again
	// (default 30s); PollEvery is how often the state is checked for
	// edited policies and dead proxies (default 500ms).
	Resync, PollEvery time.Duration
	// BackoffBase and BackoffMax bound the retry delay after an error
	// (defaults 200ms and 30s).
	BackoffBase, BackoffMax time.Duration
	// Workers is how many VMs of one policy are configured at once
	// (default 16); PolicyWorkers how many policies (default 2).
	Workers, PolicyWorkers int
	// KeyFor returns the data-path key of a task; nil: no key is pushed.
	KeyFor func(taskID string) []byte
}

// Result is the outcome of one reconcile.
type Result struct {
	// RequeueAfter, when positive, asks for another reconcile after it.
	RequeueAfter time.Duration
}

// ErrTerminal marks a reconcile error that retrying cannot fix; the policy
// is looked at again only when it changes or at the next resync.
var ErrTerminal = errors.New("terminal")

type ctxKey struct{}

// ReconcileID returns the reconcile ID carried by ctx, or "".
func ReconcileID(ctx context.Context) string {
	s, _ := ctx.Value(ctxKey{}).(string)
	return s
}

// PolicyReconciler runs the configuration algorithm for each policy.
type PolicyReconciler struct {
	cfg     Config
	log     *slog.Logger
	metrics *Metrics

	mu     sync.Mutex
	pushed map[string]string // task ID → fingerprint of the last pushed configuration
	q      *queue            // the running loop's queue, nil when not running

	// slotMu orders proxy selection across the policies reconciled at
	// once (PolicyWorkers): each selection counts the tasks stored now
	// plus claims, the proxies a running reconcile chose for a task (by
	// task ID) and may not have stored yet. A claim is dropped when its
	// reconcile ends, when its tasks are stored or given up. Without it,
	// two policies could both take a proxy's last slot.
	slotMu sync.Mutex
	claims map[string]proxyClaim
	// claimsVer counts changes to claims: a reconcile's count of tasks
	// per proxy stays valid while no other reconcile changed them
	claimsVer uint64
}

// proxyClaim is the proxies chosen for one task by a running reconcile.
type proxyClaim struct{ source, target string }

// NewPolicyReconciler checks cfg and fills its defaults.
func NewPolicyReconciler(cfg Config) (*PolicyReconciler, error) {
	if cfg.Store == nil || cfg.Inventories == nil || cfg.Components == nil {
		return nil, fmt.Errorf("policy reconciler: %w: Store, Inventories and Components are required", model.ErrInvalid)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.HeartbeatTimeout, 15*time.Second)
	if cfg.Settle == 0 {
		cfg.Settle = cfg.HeartbeatTimeout
	}
	def(&cfg.Resync, 30*time.Second)
	def(&cfg.PollEvery, 500*time.Millisecond)
	def(&cfg.BackoffBase, 200*time.Millisecond)
	def(&cfg.BackoffMax, 30*time.Second)
	if cfg.Workers <= 0 {
		cfg.Workers = 16
	}
	if cfg.PolicyWorkers <= 0 {
		cfg.PolicyWorkers = 2
	}
	m := cfg.Metrics
	if m == nil {
		m, _ = NewMetrics(nil)
	}
	return &PolicyReconciler{cfg: cfg, log: cfg.Logger.With("controller", "policy"), metrics: m, pushed: map[string]string{}, claims: map[string]proxyClaim{}}, nil
}

// Enqueue asks for a reconcile of a policy (the API calls it after a write
// so that nothing waits for the poll); a no-op when not running.
func (r *PolicyReconciler) Enqueue(policyID string) {
	r.mu.Lock()
	q := r.q
	r.mu.Unlock()
	if q != nil {
		q.Add(policyID)
	}
}

// Run reconciles policies until ctx ends: every policy at start, then each
// one when it changes, when a proxy it uses dies, when vCenter reports a
// change to one of its VMs, after a backoff on error and at every resync.
func (r *PolicyReconciler) Run(ctx context.Context) error {
	q := newQueue(r.cfg.BackoffBase, r.cfg.BackoffMax)
	r.mu.Lock()
	r.q = q
	// A new term re-pushes every configuration once: the components may
	// have missed the previous leader's last pushes.
	r.pushed = map[string]string{}
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.q = nil
		r.mu.Unlock()
	}()
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer q.ShutDown()
	defer cancel()

	r.settle(ctx)
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.poll(ctx, q)
	}()
	for i := 0; i < r.cfg.PolicyWorkers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				id, ok := q.Get()
				if !ok {
					return
				}
				r.process(ctx, q, id)
				q.Done(id)
			}
		}()
	}
	<-ctx.Done()
	return nil
}

// settle waits, at the start of a term, until the components in use that
// were reporting before it have reported to this leader, or a heartbeat
// timeout has passed. Heartbeats are raft writes: while there was no
// leader nobody could record one, so after a loss of quorum every
// heartbeat in the state is old, and judging liveness by them would move
// healthy data paths. "Reporting before" is measured from the newest
// heartbeat in the state, when the outage began as far as the state knows.
func (r *PolicyReconciler) settle(ctx context.Context) {
	if r.cfg.Settle < 0 {
		return
	}
	start := r.cfg.Clock.Now()
	timeout := r.cfg.HeartbeatTimeout
	var ref time.Time
	r.cfg.Store.Read(func(s *model.State) { ref = newestHeartbeat(s) })
	limit := time.NewTimer(r.cfg.Settle)
	defer limit.Stop()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		waiting := ""
		r.cfg.Store.Read(func(s *model.State) {
			waiting = awaitedComponent(s, start, ref, timeout)
		})
		if waiting == "" || !r.cfg.Clock.Now().Before(start.Add(r.cfg.Settle)) {
			return
		}
		r.log.Debug("new term: waiting for the components in use to report", "waiting_for", waiting)
		select {
		case <-ctx.Done():
			return
		case <-limit.C:
			return
		case <-tick.C:
		}
	}
}

// newestHeartbeat is the newest heartbeat of any component in s.
func newestHeartbeat(s *model.State) time.Time {
	var newest time.Time
	for _, px := range s.Proxies {
		if px.LastHeartbeat.After(newest) {
			newest = px.LastHeartbeat
		}
	}
	for _, h := range s.Hosts {
		if h.LastHeartbeat.After(newest) {
			newest = h.LastHeartbeat
		}
	}
	return newest
}

// awaitedComponent names a component that a task of an enabled policy
// uses, that was alive at ref (the newest heartbeat when the term began)
// and has not reported since start; "" when there is none.
func awaitedComponent(s *model.State, start, ref time.Time, timeout time.Duration) string {
	awaited := func(hb time.Time) bool {
		return !hb.IsZero() && hb.Before(start) && ref.Sub(hb) <= timeout
	}
	for _, t := range s.Tasks {
		if p, ok := s.Policies[t.PolicyID]; !ok || !p.Enabled {
			continue
		}
		for _, id := range []string{t.SourceProxy, t.TargetProxy} {
			if px, ok := s.Proxies[id]; ok && awaited(px.LastHeartbeat) {
				return "proxy " + px.Name
			}
		}
		for _, id := range []string{t.SourceHost, t.TargetHost} {
			if h, ok := s.Hosts[id]; ok && awaited(h.LastHeartbeat) {
				return "filter of host " + h.Name
			}
		}
	}
	return ""
}

func (r *PolicyReconciler) process(ctx context.Context, q *queue, id string) {
	res, err := r.Reconcile(ctx, id)
	if ctx.Err() != nil {
		return
	}
	switch {
	case errors.Is(err, ErrTerminal):
		q.Forget(id)
		q.AddAfter(id, r.cfg.Resync)
	case err != nil:
		d := q.Backoff(id)
		r.log.Info("reconcile failed; retrying", "policy", id, "err", err, "after", d)
	case res.RequeueAfter > 0:
		q.Forget(id)
		q.AddAfter(id, res.RequeueAfter)
	default:
		q.Forget(id)
	}
}

// poll watches the state for policies to reconcile and keeps a vCenter
// change feed running for every source vCenter in use.
func (r *PolicyReconciler) poll(ctx context.Context, q *queue) {
	seen := map[string]string{}
	dead := map[string]bool{}
	reaping := map[string]bool{} // deleted policies with replicas to delete
	watching := map[string]context.CancelFunc{}
	var wg sync.WaitGroup
	defer wg.Wait()
	t := time.NewTicker(r.cfg.PollEvery)
	defer t.Stop()
	for {
		now := r.cfg.Clock.Now()
		var add []string
		vcs := map[string]bool{}
		r.cfg.Store.Read(func(s *model.State) {
			for id, p := range s.Policies {
				fp := fmt.Sprint(p.Generation, p.Enabled)
				if seen[id] != fp {
					seen[id] = fp
					add = append(add, id)
				}
				if p.Enabled {
					vcs[p.VCenterID] = true
				}
			}
			for id := range seen {
				if _, ok := s.Policies[id]; !ok {
					delete(seen, id)
				}
			}
			nowReaping := map[string]bool{}
			for _, rp := range s.Replicas {
				if (rp.Deleting || rp.DetachSource) && !nowReaping[rp.PolicyID] {
					nowReaping[rp.PolicyID] = true
					if !reaping[rp.PolicyID] {
						add = append(add, rp.PolicyID)
					}
				}
			}
			reaping = nowReaping
			nowDead := map[string]bool{}
			for id, px := range s.Proxies {
				if !Alive(px, now, r.cfg.HeartbeatTimeout) {
					nowDead[id] = true
				}
			}
			for id, h := range s.Hosts {
				nowDead["host:"+id] = !HostAlive(h, now, r.cfg.HeartbeatTimeout)
			}
			for _, tk := range s.Tasks {
				for _, px := range []string{tk.SourceProxy, tk.TargetProxy} {
					if px == "" {
						continue
					}
					if _, known := s.Proxies[px]; (!known || nowDead[px]) && !dead[px] {
						add = append(add, tk.PolicyID)
					}
				}
				// A filter that stops or starts reporting changes what
				// its VMs can do.
				for _, h := range []string{tk.SourceHost, tk.TargetHost} {
					d, known := nowDead["host:"+h]
					was, wasKnown := dead["host:"+h]
					if known && (d != was || !wasKnown) {
						add = append(add, tk.PolicyID)
					}
				}
			}
			dead = nowDead
		})
		for _, id := range add {
			q.Add(id)
		}
		for vc := range vcs {
			if _, ok := watching[vc]; !ok {
				wctx, cancel := context.WithCancel(ctx)
				watching[vc] = cancel
				wg.Add(1)
				go func() {
					defer wg.Done()
					r.watch(wctx, q, vc)
				}()
			}
		}
		for vc, cancel := range watching {
			if !vcs[vc] {
				cancel()
				delete(watching, vc)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// newReconcileID is a short random ID that ties the log lines of one
// reconcile together.
func newReconcileID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// snapshot is what one reconcile reads from the state.
type snapshot struct {
	policy  *model.Policy
	tasks   map[string]*model.VMTask
	replica map[string]*model.Replica
	proxies map[string]*model.Proxy
	rules   []model.TrafficRule
	// claimed lists the tasks this reconcile claimed proxies for
	claimed []string
	// load is the count of tasks per proxy (loadLocked), kept up to date
	// with this reconcile's own choices; loadVer is claimsVer then
	load    map[string]int
	loadVer uint64
	// claims lists, per VM MoRef, the other enabled policies that have a
	// task for it: a VM is protected by one policy only.
	claims map[string][]*model.Policy
}

func (r *PolicyReconciler) read(ctx context.Context, id string) (*snapshot, error) {
	sn := &snapshot{tasks: map[string]*model.VMTask{}, replica: map[string]*model.Replica{}, proxies: map[string]*model.Proxy{}, claims: map[string][]*model.Policy{}}
	err := r.cfg.Store.ReadConsistent(ctx, func(s *model.State) {
		p, ok := s.Policies[id]
		if !ok {
			return
		}
		cp := *p
		sn.policy = &cp
		for tid, t := range s.Tasks {
			if op, ok := s.Policies[t.PolicyID]; ok && t.PolicyID != id && op.Enabled && t.VMMoRef != "" {
				c := *op
				sn.claims[t.VMMoRef] = append(sn.claims[t.VMMoRef], &c)
			}
			if t.PolicyID == id {
				ct := *t
				ct.Disks = slices.Clone(t.Disks)
				sn.tasks[tid] = &ct
			}
		}
		for rid, rp := range s.Replicas {
			if rp.PolicyID == id {
				c := *rp
				sn.replica[rid] = &c
			}
		}
		for pid, px := range s.Proxies {
			c := *px
			sn.proxies[pid] = &c
		}
		for _, tr := range s.TrafficRules {
			sn.rules = append(sn.rules, *tr)
		}
	})
	sort.Slice(sn.rules, func(i, j int) bool { return sn.rules[i].ID < sn.rules[j].ID })
	return sn, err
}

// Reconcile brings one policy to its desired state. It is safe to call
// again at any time, by this leader or the next.
func (r *PolicyReconciler) Reconcile(ctx context.Context, policyID string) (res Result, err error) {
	rid := newReconcileID()
	ctx = context.WithValue(ctx, ctxKey{}, rid)
	log := r.log.With("policy", policyID, "reconcile_id", rid)
	start := time.Now()
	defer func() {
		result := ResultSuccess
		switch {
		case errors.Is(err, ErrTerminal):
			result = ResultTerminal
		case err != nil:
			result = ResultError
		case res.RequeueAfter > 0 && res.RequeueAfter < r.cfg.Resync:
			result = ResultRequeueAfter
		}
		r.metrics.Reconciles.WithLabelValues("policy", result).Inc()
		log.Debug("reconciled", "result", result, "err", err, "took", time.Since(start))
	}()

	sn, err := r.read(ctx, policyID)
	if err != nil {
		return Result{}, fmt.Errorf("read policy %s: %w", policyID, err)
	}
	if sn.policy == nil {
		// deleted: its tasks went with it, and its replicas too if the
		// admin asked for that
		return Result{}, r.reap(ctx, log, policyID)
	}
	if !sn.policy.Enabled {
		return Result{}, r.disable(ctx, sn)
	}
	defer r.dropClaims(sn)
	return r.configure(ctx, log, sn)
}

// reap finishes what a deleted policy leaves behind: the CDP storage
// policy comes off the disks of its source VMs (replicas marked
// DetachSource), and for each replica marked Deleting the journal on the
// target filter goes, then the replica VM, then the record. Each step is
// idempotent, so a failure is retried from the start (with backoff) and a
// new leader finishes what the last one began.
func (r *PolicyReconciler) reap(ctx context.Context, log *slog.Logger, policyID string) error {
	var reps []model.Replica
	r.cfg.Store.Read(func(s *model.State) {
		for _, rp := range s.Replicas {
			if rp.PolicyID == policyID && (rp.Deleting || rp.DetachSource) {
				reps = append(reps, *rp)
			}
		}
	})
	sort.Slice(reps, func(i, j int) bool { return reps[i].ID < reps[j].ID })
	var errs []error
	for _, rep := range reps {
		if rep.DetachSource {
			if err := r.detachSource(ctx, log, rep); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		if !rep.Deleting {
			continue
		}
		if err := r.reapReplica(ctx, rep); err != nil {
			errs = append(errs, fmt.Errorf("delete replica %s: %w", rep.Name, err))
			continue
		}
		log.Info("replica deleted with its policy", "replica", rep.Name, "moref", rep.MoRef, "journal", rep.JournalVM)
	}
	return errors.Join(errs...)
}

// detachSource takes the CDP storage policy off the disks of the source VM
// of a replica marked DetachSource, unless a policy protects the VM again
// (its reconcile keeps the storage policy on), then clears the mark.
func (r *PolicyReconciler) detachSource(ctx context.Context, log *slog.Logger, rep model.Replica) error {
	protected := false
	r.cfg.Store.Read(func(s *model.State) {
		for _, t := range s.Tasks {
			if p := s.Policies[t.PolicyID]; p != nil && t.VMMoRef == rep.SourceVM && p.VCenterID == rep.SourceVCenterID {
				protected = true
			}
		}
		// a policy that names the VM but has no task for it yet
		for _, p := range s.Policies {
			if p.VCenterID == rep.SourceVCenterID && slices.ContainsFunc(p.VMs, func(v model.VMRef) bool { return v.MoRef == rep.SourceVM }) {
				protected = true
			}
		}
	})
	if !protected && rep.SourceVCenterID != "" {
		inv, err := r.cfg.Inventories(ctx, rep.SourceVCenterID)
		if err != nil {
			return fmt.Errorf("take the CDP storage policy off %s: %w", rep.SourceVM, err)
		}
		if err := inv.RemoveCDPPolicy(ctx, rep.SourceVM); err != nil {
			return fmt.Errorf("take the CDP storage policy off %s: %w", rep.SourceVM, err)
		}
		log.Info("CDP storage policy taken off a VM that left protection", "vm", rep.SourceVM, "replica", rep.Name)
	}
	if _, err := r.cfg.Store.Apply(ctx, raftstore.SourceDetached{ReplicaID: rep.ID}); err != nil && !errors.Is(err, model.ErrNotFound) {
		return fmt.Errorf("note the CDP storage policy off %s: %w", rep.SourceVM, err)
	}
	return nil
}

func (r *PolicyReconciler) reapReplica(ctx context.Context, rep model.Replica) error {
	// the journal first: the filter refuses while it still replicates the
	// VM, so nothing is deleted under a running data path
	if rep.JournalVM != "" && rep.TargetHost != "" {
		if err := r.cfg.Components.PurgeJournal(ctx, rep.TargetHost, rep.JournalVM); err != nil {
			return fmt.Errorf("purge journal %s: %w", rep.JournalVM, err)
		}
	}
	inv, err := r.cfg.Inventories(ctx, rep.VCenterID)
	if err != nil {
		return err
	}
	if err := inv.DeleteReplica(ctx, rep.MoRef); err != nil {
		return err
	}
	if _, err := r.cfg.Store.Apply(ctx, raftstore.DeleteReplica{ID: rep.ID}); err != nil && !errors.Is(err, model.ErrNotFound) {
		return fmt.Errorf("drop its record: %w", err)
	}
	return nil
}

// dropClaims ends the claims of a reconcile whose tasks are stored (or
// given up): from now on the stored tasks count.
func (r *PolicyReconciler) dropClaims(sn *snapshot) {
	r.slotMu.Lock()
	defer r.slotMu.Unlock()
	for _, id := range sn.claimed {
		delete(r.claims, id)
	}
	if len(sn.claimed) > 0 {
		r.claimsVer++
	}
}

// loadLocked counts the tasks on each proxy: the stored ones, where no
// running reconcile has claimed other proxies for them, and the claims.
// Called with slotMu held. Every choice of a proxy is a claim, so a
// count kept while claimsVer stays the same can only be too high (a task
// deleted meanwhile), never too low.
func (r *PolicyReconciler) loadLocked() map[string]int {
	load := map[string]int{}
	r.cfg.Store.Read(func(s *model.State) {
		for id, t := range s.Tasks {
			if _, ok := r.claims[id]; ok {
				continue
			}
			if t.SourceProxy != "" {
				load[t.SourceProxy]++
			}
			if t.TargetProxy != "" {
				load[t.TargetProxy]++
			}
		}
	})
	for _, c := range r.claims {
		if c.source != "" {
			load[c.source]++
		}
		if c.target != "" {
			load[c.target]++
		}
	}
	return load
}

// disable turns every task's status into the outcome of the CDP process and
// releases its proxy choice, so that enabling the policy again selects
// proxies afresh. Nothing is reconfigured.
func (r *PolicyReconciler) disable(ctx context.Context, sn *snapshot) error {
	var errs []error
	for _, t := range sortedTasks(sn.tasks) {
		st, reason := DisabledStatus(t)
		if t.Status == st && t.Reason == reason && t.Generation == 0 {
			continue
		}
		nt := *t
		nt.Status, nt.Reason, nt.Generation, nt.UpdatedAt = st, reason, 0, r.cfg.Clock.Now()
		if err := r.putTask(ctx, &nt); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func sortedTasks(m map[string]*model.VMTask) []*model.VMTask {
	out := slices.Collect(maps.Values(m))
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (r *PolicyReconciler) putTask(ctx context.Context, t *model.VMTask) error {
	// A canceled reconcile (leadership lost, shutdown) records nothing: its
	// failure is ours, not the VM's.
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("write task %s: %w", t.ID, err)
	}
	if _, err := r.cfg.Store.Apply(ctx, raftstore.PutTask{Task: *t}); err != nil {
		return fmt.Errorf("write task %s: %w", t.ID, err)
	}
	return nil
}

// TaskID is the ID of the task of a VM under a policy.
func TaskID(policyID, vmKey string) string { return policyID + "/" + vmKey }

// failAll records reason on every task and returns err for a retry. A VM
// named only by name has no task before vCenter resolved it; it gets one
// under its name so that the policy's status shows the reason (the task
// moves to the VM's MoRef once vCenter answers).
func (r *PolicyReconciler) failAll(ctx context.Context, sn *snapshot, err error) error {
	var errs []error
	for _, ref := range sn.policy.VMs {
		if hasTask(sn, ref) {
			continue
		}
		if _, e := r.ensureTask(ctx, sn, TaskID(sn.policy.ID, ref.Key()), ref.MoRef, ref.Name); e != nil {
			errs = append(errs, e)
		}
	}
	for _, t := range sortedTasks(sn.tasks) {
		errs = append(errs, r.failTask(ctx, t, err.Error()))
	}
	return errors.Join(append([]error{err}, errs...)...)
}

func (r *PolicyReconciler) failTask(ctx context.Context, t *model.VMTask, reason string) error {
	if t.Status == model.StatusError && t.Reason == reason {
		return nil
	}
	nt := *t
	nt.Status, nt.Reason, nt.UpdatedAt = model.StatusError, reason, r.cfg.Clock.Now()
	err := r.putTask(ctx, &nt)
	if err == nil {
		*t = nt
	}
	return err
}

// hasTask reports whether a VM of the policy has a task already.
func hasTask(sn *snapshot, ref model.VMRef) bool {
	for _, t := range sn.tasks {
		if (ref.MoRef != "" && t.VMMoRef == ref.MoRef) || (ref.MoRef == "" && ref.Name != "" && t.VMName == ref.Name) {
			return true
		}
	}
	return false
}

// failPlanned records w.err on a VM whose replica is ready: the task keeps
// what was planned (replica, disks, hosts), so the next reconcile finds the
// replica without asking vCenter and the status shows where it stands.
func (r *PolicyReconciler) failPlanned(ctx context.Context, w *work) error {
	nt := w.next
	nt.Status, nt.Reason = model.StatusError, w.err.Error()
	nt.UpdatedAt = w.task.UpdatedAt
	if reflect.DeepEqual(nt, *w.task) {
		return nil
	}
	nt.UpdatedAt = r.cfg.Clock.Now()
	if err := r.putTask(ctx, &nt); err != nil {
		return err
	}
	*w.task = nt
	return nil
}

// ensureTask creates the task of a VM if it has none (step one of the
// algorithm) and returns the stored or new task.
func (r *PolicyReconciler) ensureTask(ctx context.Context, sn *snapshot, id, moref, name string) (*model.VMTask, error) {
	if t, ok := sn.tasks[id]; ok {
		return t, nil
	}
	t := &model.VMTask{ID: id, PolicyID: sn.policy.ID, VMMoRef: moref, VMName: name, Status: model.StatusPending, UpdatedAt: r.cfg.Clock.Now()}
	if err := r.putTask(ctx, t); err != nil {
		return nil, err
	}
	sn.tasks[id] = t
	return t, nil
}

// taskRef names a task to create if missing.
type taskRef struct{ id, moref, name string }

// ensureTasks creates the missing tasks of refs, in one log entry per
// batch: a policy of a thousand VMs gets its tasks at once.
func (r *PolicyReconciler) ensureTasks(ctx context.Context, sn *snapshot, refs []taskRef) error {
	var missing []model.VMTask
	seen := map[string]bool{}
	now := r.cfg.Clock.Now()
	for _, tr := range refs {
		if _, ok := sn.tasks[tr.id]; ok || seen[tr.id] {
			continue
		}
		seen[tr.id] = true
		missing = append(missing, model.VMTask{ID: tr.id, PolicyID: sn.policy.ID, VMMoRef: tr.moref, VMName: tr.name, Status: model.StatusPending, UpdatedAt: now})
	}
	// Batches bound an entry's size (a task is a few hundred bytes).
	const batch = 500
	for start := 0; start < len(missing); start += batch {
		part := missing[start:min(start+batch, len(missing))]
		// A canceled reconcile (leadership lost, shutdown) records nothing.
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("write %d tasks: %w", len(part), err)
		}
		if _, err := r.cfg.Store.Apply(ctx, raftstore.PutTasks{Tasks: part}); err != nil {
			return fmt.Errorf("write %d tasks: %w", len(part), err)
		}
		for i := range part {
			sn.tasks[part[i].ID] = &part[i]
		}
	}
	return nil
}

// placement is where a policy's replicas go, resolved in the target vCenter.
type placement struct {
	cluster   *vsphere.Cluster
	clusterID string
	datastore string
	hosts     []string // hosts of the cluster that mount the datastore
	pool      string
	folder    string
}

func byNameOrMoRef[T any](items []T, key string, name, moref func(T) string) *T {
	for i := range items {
		if moref(items[i]) == key {
			return &items[i]
		}
	}
	for i := range items {
		if name(items[i]) == key {
			return &items[i]
		}
	}
	return nil
}

func resolvePlacement(inv *vsphere.Inventory, vcID string, t model.Target) (*placement, error) {
	cl := byNameOrMoRef(inv.Clusters, t.Cluster, func(c vsphere.Cluster) string { return c.Name }, func(c vsphere.Cluster) string { return c.MoRef })
	if cl == nil {
		return nil, fmt.Errorf("target cluster %q not found in vCenter %s", t.Cluster, vcID)
	}
	ds := byNameOrMoRef(inv.Datastores, t.Datastore, func(d vsphere.Datastore) string { return d.Name }, func(d vsphere.Datastore) string { return d.MoRef })
	if ds == nil {
		return nil, fmt.Errorf("target datastore %q not found in vCenter %s", t.Datastore, vcID)
	}
	pl := &placement{cluster: cl, clusterID: vcID + "/" + cl.MoRef, datastore: ds.MoRef, pool: cl.ResourcePool}
	for _, h := range cl.Hosts {
		if slices.Contains(ds.Hosts, h) && (t.Host == "" || t.Host == h || hostName(inv, h) == t.Host) {
			pl.hosts = append(pl.hosts, h)
		}
	}
	if len(pl.hosts) == 0 {
		if t.Host != "" {
			return nil, fmt.Errorf("target host %q is not in cluster %s or does not mount datastore %s", t.Host, cl.Name, ds.Name)
		}
		return nil, fmt.Errorf("no host of target cluster %s mounts datastore %s", cl.Name, ds.Name)
	}
	if t.ResourcePool != "" {
		rp := byNameOrMoRef(inv.ResourcePools, t.ResourcePool, func(p vsphere.ResourcePool) string { return p.Name }, func(p vsphere.ResourcePool) string { return p.MoRef })
		if rp == nil {
			return nil, fmt.Errorf("target resource pool %q not found", t.ResourcePool)
		}
		pl.pool = rp.MoRef
	}
	if t.Folder != "" {
		f := byNameOrMoRef(inv.Folders, t.Folder, func(f vsphere.Folder) string { return f.Name }, func(f vsphere.Folder) string { return f.MoRef })
		if f == nil {
			return nil, fmt.Errorf("target folder %q not found", t.Folder)
		}
		pl.folder = f.MoRef
	} else if len(inv.Datacenters) > 0 {
		pl.folder = inv.Datacenters[0].VMFolder
	}
	return pl, nil
}

func hostName(inv *vsphere.Inventory, moref string) string {
	for _, h := range inv.Hosts {
		if h.MoRef == moref {
			return h.Name
		}
	}
	return ""
}

// spread picks a host for a VM's replica, stable for the VM.
func (pl *placement) host(vm string) string {
	h := fnv.New32a()
	h.Write([]byte(vm))
	return pl.hosts[int(h.Sum32()%uint32(len(pl.hosts)))]
}

// work is one VM's share of a reconcile.
type work struct {
	task *model.VMTask
	vm   *vsphere.VM
	next model.VMTask // the task as it should be stored
	rep  *model.Replica
	err  error
	// prepared: the replica and the storage policy are ready (next holds
	// the plan); planned: the error came from proxy selection.
	prepared, planned bool
}

func (r *PolicyReconciler) configure(ctx context.Context, log *slog.Logger, sn *snapshot) (Result, error) {
	p := sn.policy
	now := r.cfg.Clock.Now()

	// 1. A task per VM: VMs named by MoRef get theirs before anything
	// else; VMs named by name once vCenter has resolved the name.
	var byRef []taskRef
	for _, ref := range p.VMs {
		if ref.MoRef != "" {
			byRef = append(byRef, taskRef{id: TaskID(p.ID, ref.MoRef), moref: ref.MoRef, name: ref.Name})
		}
	}
	if err := r.ensureTasks(ctx, sn, byRef); err != nil {
		return Result{}, err
	}

	// 2. Components available: proxies first (known without vCenter).
	for _, role := range []model.ProxyRole{model.RoleSource, model.RoleTarget} {
		sel := Selection{Role: role, Manual: p.SourceProxies, Now: now, HeartbeatTimeout: r.cfg.HeartbeatTimeout}
		if role == model.RoleTarget {
			sel.Manual = p.TargetProxies
		}
		if !r.anyAlive(sn.proxies, sel) {
			return Result{}, r.failAll(ctx, sn, fmt.Errorf("%w: no %s proxy is alive", ErrNoProxy, role))
		}
	}
	if p.VCenterID != p.Target.VCenterID {
		return Result{}, r.failAll(ctx, sn, fmt.Errorf("%w: replication between two vCenters (%s to %s) is not supported", ErrTerminal, p.VCenterID, p.Target.VCenterID))
	}

	// 3. Query the VMs and hosts.
	vc, err := r.cfg.Inventories(ctx, p.VCenterID)
	if err != nil {
		return Result{}, r.failAll(ctx, sn, fmt.Errorf("connect to vCenter %s: %w", p.VCenterID, err))
	}
	inv, err := vc.Inventory(ctx)
	if err != nil {
		return Result{}, r.failAll(ctx, sn, fmt.Errorf("read inventory of vCenter %s: %w", p.VCenterID, err))
	}
	pl, err := resolvePlacement(inv, p.Target.VCenterID, p.Target)
	if err != nil {
		return Result{}, r.failAll(ctx, sn, err)
	}
	byMoRef := map[string]*vsphere.VM{}
	for i := range inv.VMs {
		byMoRef[inv.VMs[i].MoRef] = &inv.VMs[i]
	}

	// Resolve every VM of the policy; the desired task IDs follow.
	var works []*work
	want := map[string]bool{}
	var errs []error
	vms := make([]*vsphere.VM, len(p.VMs))
	refs := make([]taskRef, len(p.VMs))
	for i, ref := range p.VMs {
		if ref.MoRef != "" {
			vms[i] = byMoRef[ref.MoRef]
		} else if v := inv.VMByName(ref.Name); v != nil && v.Replica == nil {
			vms[i] = v
		}
		key := ref.Key()
		if vms[i] != nil {
			key = vms[i].MoRef
		}
		refs[i] = taskRef{id: TaskID(p.ID, key), moref: ref.MoRef, name: ref.Name}
	}
	if err := r.ensureTasks(ctx, sn, refs); err != nil {
		return Result{}, err
	}
	for i := range p.VMs {
		vm, id := vms[i], refs[i].id
		key := p.VMs[i].Key()
		if vm != nil {
			key = vm.MoRef
		}
		want[id] = true
		t := sn.tasks[id]
		if vm == nil {
			errs = append(errs, r.failTask(ctx, t, fmt.Sprintf("VM %q not found in vCenter %s", key, p.VCenterID)))
			errs = append(errs, fmt.Errorf("VM %q of policy %s not found", key, p.Name))
			continue
		}
		if other := firstClaim(p, sn.claims[vm.MoRef]); other != nil {
			errs = append(errs, r.failTask(ctx, t, fmt.Sprintf("VM %s is already protected by policy %s", vm.Name, other.Name)))
			errs = append(errs, fmt.Errorf("%w: VM %s overlaps policy %s", ErrTerminal, vm.Name, other.Name))
			continue
		}
		if vm.Replica != nil {
			errs = append(errs, r.failTask(ctx, t, fmt.Sprintf("VM %s is itself a replica", vm.Name)))
			errs = append(errs, fmt.Errorf("%w: VM %s is a replica", ErrTerminal, vm.Name))
			continue
		}
		works = append(works, &work{task: t, vm: vm})
	}
	// VMs taken out of the policy lose their tasks and the CDP storage
	// policy on their disks; their replicas stay.
	for id := range sn.tasks {
		if !want[id] {
			if _, err := r.cfg.Store.Apply(ctx, raftstore.DeleteTask{ID: id, DetachSource: true}); err != nil && !errors.Is(err, model.ErrNotFound) {
				errs = append(errs, fmt.Errorf("delete task %s: %w", id, err))
			}
			delete(sn.tasks, id)
		}
	}
	var leaving []model.Replica
	r.cfg.Store.Read(func(s *model.State) {
		for _, rp := range s.Replicas {
			if rp.PolicyID == p.ID && rp.DetachSource {
				leaving = append(leaving, *rp)
			}
		}
	})
	for _, rep := range leaving {
		if err := r.detachSource(ctx, log, rep); err != nil {
			errs = append(errs, err)
		}
	}

	// 2 (cont.). The filter on the target cluster and every source cluster.
	if ok, err := vc.FilterInstalled(ctx, pl.cluster.MoRef); err != nil {
		return Result{}, r.failAll(ctx, sn, fmt.Errorf("check filter on target cluster %s: %w", pl.cluster.Name, err))
	} else if !ok {
		return Result{}, r.failAll(ctx, sn, fmt.Errorf("the filter is not installed on target cluster %s", pl.cluster.Name))
	}
	srcFilter := map[string]error{}
	for _, w := range works {
		cl := w.vm.Cluster
		if _, done := srcFilter[cl]; done {
			continue
		}
		ok, err := vc.FilterInstalled(ctx, cl)
		switch {
		case err != nil:
			srcFilter[cl] = fmt.Errorf("check filter on source cluster %s: %w", cl, err)
		case !ok:
			srcFilter[cl] = fmt.Errorf("the filter is not installed on source cluster %s", clusterName(inv, cl))
		default:
			srcFilter[cl] = nil
		}
	}
	profile, err := vc.EnsureProfile(ctx)
	if err != nil {
		return Result{}, r.failAll(ctx, sn, fmt.Errorf("find the CDP storage profile: %w", err))
	}

	// 4-7. Replicas and the storage policy, then proxies and the
	// configuration, one VM after the other in a pipeline: a VM's data
	// path starts as soon as its replica is ready instead of after the
	// last replica of the policy, so the data path's work overlaps the
	// replica creations in vCenter.
	for _, w := range works {
		if e := srcFilter[w.vm.Cluster]; e != nil {
			w.err = e
		}
	}
	ready := r.pipeline(works,
		func(w *work) {
			if w.err == nil {
				w.err = r.prepareVM(ctx, vc, p, pl, sn, profile, w)
			}
		},
		// 6. Proxies, one VM at a time in the policy's order, so that load
		// counts are exact and the choice does not depend on timing.
		func(w *work) {
			if err := r.selectProxies(sn, p, pl, inv, w, now); err != nil {
				w.err = err
				w.planned = true
			}
		},
		// 7. The configuration, and the outcome recorded.
		func(w *work) {
			if w.err == nil {
				w.err = r.push(ctx, sn, w)
			}
		})
	for _, w := range works {
		switch {
		case w.err == nil:
		case !w.prepared:
			errs = append(errs, r.failTask(ctx, w.task, w.err.Error()), w.err)
		case w.planned || !errors.Is(w.err, ErrNoProxy):
			errs = append(errs, r.failPlanned(ctx, w), w.err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		log.Info("policy partly configured", "vms", len(p.VMs), "configured", ready, "err", err)
		if onlyTerminal(errs) {
			return Result{}, fmt.Errorf("%w: %w", ErrTerminal, err)
		}
		return Result{}, err
	}
	return Result{RequeueAfter: r.cfg.Resync}, nil
}

func onlyTerminal(errs []error) bool {
	for _, e := range errs {
		if e != nil && !errors.Is(e, ErrTerminal) {
			return false
		}
	}
	return true
}

func clusterName(inv *vsphere.Inventory, moref string) string {
	for _, c := range inv.Clusters {
		if c.MoRef == moref {
			return c.Name
		}
	}
	return moref
}

func (r *PolicyReconciler) anyAlive(proxies map[string]*model.Proxy, s Selection) bool {
	s.Load = nil
	manual := map[string]bool{}
	for _, id := range s.Manual {
		manual[id] = true
	}
	for _, px := range proxies {
		if px.Role.Serves(s.Role) && Alive(px, s.Now, s.HeartbeatTimeout) && (len(manual) == 0 || manual[px.ID]) {
			return true
		}
	}
	return false
}

// pipeline runs prepare on the work items with at most Workers at once;
// as each item is prepared, in the order of ws, it runs sequential (one
// item at a time, in order) and then finish (again Workers at once). It
// returns how many items ended without an error.
func (r *PolicyReconciler) pipeline(ws []*work, prepare, sequential, finish func(*work)) int {
	prepared := make([]chan struct{}, len(ws))
	for i := range prepared {
		prepared[i] = make(chan struct{})
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, r.cfg.Workers)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i, w := range ws {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				prepare(w)
				w.prepared = w.err == nil
				close(prepared[i])
			}()
		}
	}()
	fin := make(chan struct{}, r.cfg.Workers)
	for i, w := range ws {
		<-prepared[i]
		if w.err != nil {
			continue
		}
		sequential(w)
		if w.err != nil {
			continue
		}
		fin <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-fin; wg.Done() }()
			finish(w)
		}()
	}
	wg.Wait()
	n := 0
	for _, w := range ws {
		if w.err == nil {
			n++
		}
	}
	return n
}

// upToDate reports whether the stored task already describes the VM as it
// is: replica known, every disk paired with equal capacity and profiled.
func upToDate(t *model.VMTask, vm *vsphere.VM, profile string, rep *model.Replica) bool {
	if t.ReplicaID == "" || rep == nil || t.TargetHost == "" || len(t.Disks) != len(vm.Disks) {
		return false
	}
	for _, d := range vm.Disks {
		i := slices.IndexFunc(t.Disks, func(m model.DiskMap) bool { return m.Key == d.Key })
		if i < 0 || t.Disks[i].CapacityBytes != d.CapacityBytes || t.Disks[i].SourceFile != d.FileName || !t.Disks[i].ProfileApplied || d.ProfileID != profile {
			return false
		}
	}
	return true
}

// prepareVM creates the replica (found by its marker if it exists), gives
// it any disk added to the source, and applies the storage profile to the
// source disks.
func (r *PolicyReconciler) prepareVM(ctx context.Context, vc Inventory, p *model.Policy, pl *placement, sn *snapshot, profile string, w *work) error {
	vm := w.vm
	w.next = *w.task
	w.next.VMMoRef, w.next.VMName, w.next.InstanceUUID = vm.MoRef, vm.Name, vm.InstanceUUID
	w.next.SourceHost = p.VCenterID + "/" + vm.Host
	if upToDate(w.task, vm, profile, sn.replica[w.task.ReplicaID]) {
		return nil // found as desired: no vCenter call
	}
	spec := vsphere.ReplicaSpec{
		SourceVM: vm.MoRef, PolicyID: p.ID, Name: vm.Name + p.Target.ReplicaSuffix,
		Host: pl.host(vm.MoRef), Datastore: pl.datastore, Pool: pl.pool, Folder: pl.folder,
	}
	if p.Target.ReplicaSuffix == "" {
		spec.Name = vm.Name + "_replica"
	}
	rvm, err := vc.EnsureReplica(ctx, spec)
	if err != nil {
		return fmt.Errorf("create replica of %s on %s: %w", vm.Name, spec.Host, err)
	}
	for _, d := range vm.Disks {
		if rvm.Disk(d.Key) == nil {
			rd, err := vc.EnsureReplicaDisk(ctx, rvm.MoRef, vm.MoRef, d.Key)
			if err != nil {
				return fmt.Errorf("create replica disk %d of %s: %w", d.Key, vm.Name, err)
			}
			rvm.Disks = append(rvm.Disks, *rd)
		}
	}
	var missing []int32
	for _, d := range vm.Disks {
		if d.ProfileID != profile {
			missing = append(missing, d.Key)
		}
	}
	if len(missing) > 0 {
		if err := vc.ApplyPolicy(ctx, vm.MoRef, profile, missing...); err != nil {
			return fmt.Errorf("apply the CDP storage policy to disks %v of %s: %w", missing, vm.Name, err)
		}
	}
	disks := make([]model.DiskMap, 0, len(vm.Disks))
	var total int64
	for _, d := range vm.Disks {
		rd := rvm.Disk(d.Key)
		if rd.CapacityBytes != d.CapacityBytes {
			return fmt.Errorf("replica disk %d of %s has %d bytes, source %d", d.Key, vm.Name, rd.CapacityBytes, d.CapacityBytes)
		}
		disks = append(disks, model.DiskMap{Key: d.Key, CapacityBytes: d.CapacityBytes, SourceFile: d.FileName, ReplicaFile: rd.FileName, ProfileApplied: true})
		total += d.CapacityBytes
	}
	rep := model.Replica{
		ID: p.Target.VCenterID + "/" + rvm.MoRef, PolicyID: p.ID, SourceVM: vm.MoRef, SourceUUID: vm.InstanceUUID,
		VCenterID: p.Target.VCenterID, MoRef: rvm.MoRef, Name: rvm.Name, Disks: disks, CreatedAt: r.cfg.Clock.Now(),
		SourceVCenterID: p.VCenterID,
	}
	if old := sn.replica[rep.ID]; old != nil {
		rep.CreatedAt = old.CreatedAt
		rep.FailedOver = old.FailedOver
	}
	if old := sn.replica[rep.ID]; old == nil || !reflect.DeepEqual(*old, rep) {
		if _, err := r.cfg.Store.Apply(ctx, raftstore.PutReplica{Replica: rep}); err != nil {
			return fmt.Errorf("record replica %s: %w", rep.ID, err)
		}
	}
	w.rep = &rep
	w.next.ReplicaID, w.next.Disks, w.next.SyncTotalBytes = rep.ID, disks, total
	// The replica's host runs the target filter that keeps its journal.
	if rvm.Host != "" {
		w.next.TargetHost = p.Target.VCenterID + "/" + rvm.Host
	}
	return nil
}

// selectProxies keeps a task's proxies while the policy is unchanged and
// they are alive; otherwise it selects again. A vMotion to another cluster
// re-plans the source side.
func (r *PolicyReconciler) selectProxies(sn *snapshot, p *model.Policy, pl *placement, inv *vsphere.Inventory, w *work, now time.Time) error {
	srcCluster := p.VCenterID + "/" + w.vm.Cluster
	movedCluster := w.task.SourceHost != "" && w.task.SourceHost != w.next.SourceHost &&
		clusterOfHost(inv, trimVC(w.task.SourceHost)) != w.vm.Cluster
	var load map[string]int // read once a side must select, under slotMu
	for _, side := range []struct {
		role    model.ProxyRole
		cluster string
		manual  []string
		cur     *string
		replan  bool
	}{
		{model.RoleSource, srcCluster, p.SourceProxies, &w.next.SourceProxy, movedCluster},
		{model.RoleTarget, pl.clusterID, p.TargetProxies, &w.next.TargetProxy, false},
	} {
		sel := Selection{Role: side.role, Cluster: side.cluster, Manual: side.manual, Now: now, HeartbeatTimeout: r.cfg.HeartbeatTimeout}
		if p.ProxySelection != model.SelectManual {
			sel.Manual = nil
		}
		if !side.replan && keepProxy(sn.proxies, *side.cur, w.task.Generation, p.Generation, sel) {
			continue
		}
		if load == nil {
			// what other policies' reconciles chose a moment ago counts
			r.slotMu.Lock()
			defer r.slotMu.Unlock()
			if sn.load == nil || sn.loadVer != r.claimsVer {
				sn.load = r.loadLocked()
			}
			load = sn.load
		}
		sel.Load = load
		if *side.cur != "" {
			load[*side.cur]--
		}
		px, err := SelectProxy(sn.proxies, sel)
		if err != nil {
			*side.cur = ""
			return fmt.Errorf("select %s proxy for %s: %w", side.role, w.vm.Name, err)
		}
		*side.cur = px.ID
		load[px.ID]++
	}
	if load != nil {
		if _, ok := r.claims[w.next.ID]; !ok {
			sn.claimed = append(sn.claimed, w.next.ID)
		}
		r.claims[w.next.ID] = proxyClaim{source: w.next.SourceProxy, target: w.next.TargetProxy}
		r.claimsVer++
		sn.loadVer = r.claimsVer // load already holds this choice
	}
	w.next.Generation = p.Generation
	return nil
}

func trimVC(id string) string {
	for i := len(id) - 1; i >= 0; i-- {
		if id[i] == '/' {
			return id[i+1:]
		}
	}
	return id
}

func clusterOfHost(inv *vsphere.Inventory, moref string) string {
	for _, h := range inv.Hosts {
		if h.MoRef == moref {
			return h.Cluster
		}
	}
	return ""
}

// push sends the data-path configuration when it differs from the last
// one pushed in this term, then stores the task.
func (r *PolicyReconciler) push(ctx context.Context, sn *snapshot, w *work) error {
	p := sn.policy
	dp := DataPath{
		Task: w.next, Policy: *p, SourceHost: w.vm.Host, TargetHost: trimVC(w.next.TargetHost),
		SourceProxy: *sn.proxies[w.next.SourceProxy], TargetProxy: *sn.proxies[w.next.TargetProxy],
		Rules: sn.rules,
	}
	if r.cfg.KeyFor != nil {
		dp.Key = r.cfg.KeyFor(w.next.ID)
	}
	fp := fingerprint(dp)
	r.mu.Lock()
	same := r.pushed[w.next.ID] == fp
	r.mu.Unlock()
	if same {
		// Nothing to push, but a filter of the path that stopped reporting
		// fails the VM until it is back.
		if err := r.deadFilter(&w.next); err != nil {
			return err
		}
	} else {
		if err := r.cfg.Components.Configure(ctx, dp); err != nil {
			return fmt.Errorf("push configuration of %s to proxies %s and %s: %w", w.vm.Name, dp.SourceProxy.Name, dp.TargetProxy.Name, err)
		}
		r.mu.Lock()
		r.pushed[w.next.ID] = fp
		r.mu.Unlock()
	}
	if configOwned(&w.next) {
		w.next.Status, w.next.Reason = model.StatusInitialSync, ""
		if w.next.SyncTotalBytes > 0 && w.next.SyncDoneBytes >= w.next.SyncTotalBytes {
			w.next.Status = model.StatusSyncing
		}
	} else {
		// The data path owns the status, and its heartbeats may have
		// moved it on since the snapshot: carry the stored report, not
		// the snapshot's older one.
		r.cfg.Store.Read(func(s *model.State) {
			if cur, ok := s.Tasks[w.next.ID]; ok && !configOwned(cur) {
				w.next.Status, w.next.Reason, w.next.SyncDoneBytes = cur.Status, cur.Reason, cur.SyncDoneBytes
				w.next.LagSeconds, w.next.LastPointAt, w.next.UpdatedAt = cur.LagSeconds, cur.LastPointAt, cur.UpdatedAt
				w.task.Status, w.task.Reason, w.task.SyncDoneBytes = cur.Status, cur.Reason, cur.SyncDoneBytes
				w.task.LagSeconds, w.task.LastPointAt, w.task.UpdatedAt = cur.LagSeconds, cur.LastPointAt, cur.UpdatedAt
			}
		})
	}
	if reflect.DeepEqual(w.next, *w.task) {
		return nil
	}
	w.next.UpdatedAt = r.cfg.Clock.Now()
	if err := r.putTask(ctx, &w.next); err != nil {
		return err
	}
	*w.task = w.next
	return nil
}

// deadFilter says which filter of the task's path has stopped reporting.
// A host with no record is left to Components.Configure. The heartbeats
// are read from the state now, not from the reconcile's snapshot: a
// reconcile of a large policy runs for longer than a heartbeat timeout,
// and its snapshot would make every filter look silent.
func (r *PolicyReconciler) deadFilter(t *model.VMTask) error {
	now := r.cfg.Clock.Now()
	for _, side := range []struct{ name, id string }{{"source", t.SourceHost}, {"target", t.TargetHost}} {
		var h model.Host
		ok := false
		r.cfg.Store.Read(func(s *model.State) {
			if p, found := s.Hosts[side.id]; found {
				h, ok = *p, true
			}
		})
		if !ok || HostAlive(&h, now, r.cfg.HeartbeatTimeout) {
			continue
		}
		name := h.Name
		if name == "" {
			name = side.id
		}
		return fmt.Errorf("the filter of %s host %s has not reported for %s", side.name, name, now.Sub(h.LastHeartbeat).Round(time.Second))
	}
	return nil
}

// fingerprint identifies a configuration without its volatile fields.
func fingerprint(dp DataPath) string {
	t := dp.Task
	t.Status, t.Reason, t.SyncDoneBytes, t.LagSeconds, t.LastPointAt, t.UpdatedAt = "", "", 0, 0, time.Time{}, time.Time{}
	dp.Task = t
	dp.SourceProxy.LastHeartbeat, dp.TargetProxy.LastHeartbeat = time.Time{}, time.Time{}
	dp.Policy.UpdatedAt = time.Time{}
	h := fnv.New128a()
	fmt.Fprintf(h, "%+v", dp)
	return hex.EncodeToString(h.Sum(nil))
}

// ReportStatus records a data-path status reported by a component:
// Initial sync with its progress, Syncing with its lag (the policy's RPO
// thresholds turn a large lag into Warning or Error), or CBT mode.
func (r *PolicyReconciler) ReportStatus(ctx context.Context, taskID string, status model.VMStatus, doneBytes int64, lag time.Duration) error {
	switch status {
	case model.StatusInitialSync, model.StatusSyncing, model.StatusCBT:
	default:
		return model.Invalid("status", "a component reports Initial sync, Syncing or CBT mode, not %q", status)
	}
	if doneBytes < 0 || lag < 0 {
		return model.Invalid("progress", "progress and lag must not be negative")
	}
	var t model.VMTask
	var p model.Policy
	found := false
	err := r.cfg.Store.ReadConsistent(ctx, func(s *model.State) {
		if tk, ok := s.Tasks[taskID]; ok {
			if pol, ok := s.Policies[tk.PolicyID]; ok {
				t, p, found = *tk, *pol, true
			}
		}
	})
	if err != nil {
		return fmt.Errorf("read task %s: %w", taskID, err)
	}
	if !found {
		return model.NotFound("task_id", "task", taskID)
	}
	t.SyncDoneBytes, t.LagSeconds = doneBytes, lag.Seconds()
	t.Status, t.Reason = status, ""
	switch status {
	case model.StatusSyncing:
		t.Status, t.Reason = LagStatus(&p, lag)
		if t.SyncTotalBytes > 0 {
			t.SyncDoneBytes = t.SyncTotalBytes
		}
	case model.StatusCBT:
		t.Reason = "changes could not be delivered in time; dirty blocks are tracked and will be resent"
	}
	t.UpdatedAt = r.cfg.Clock.Now()
	return r.putTask(ctx, &t)
}

// firstClaim returns the policy that protects a VM before p does (the
// older one, then the smaller ID), or nil when p is first.
func firstClaim(p *model.Policy, others []*model.Policy) *model.Policy {
	var first *model.Policy
	for _, o := range others {
		if o.CreatedAt.Before(p.CreatedAt) || (o.CreatedAt.Equal(p.CreatedAt) && o.ID < p.ID) {
			if first == nil || o.CreatedAt.Before(first.CreatedAt) || (o.CreatedAt.Equal(first.CreatedAt) && o.ID < first.ID) {
				first = o
			}
		}
	}
	return first
}
