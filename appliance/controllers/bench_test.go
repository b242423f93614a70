package controllers

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/raftstore"
	"github.com/continuum-cdp/continuum/vcsim"
)

// benchVMs is the policy size (CONTINUUM_BENCH_VMS overrides 1,000).
func benchVMs() int {
	if n, err := strconv.Atoi(os.Getenv("CONTINUUM_BENCH_VMS")); err == nil && n > 0 {
		return n
	}
	return 1000
}

// BenchmarkReconcilePolicy1000 configures a policy of every lab VM (small
// disks) from nothing to every task in Initial sync, once with the VMs
// configured concurrently and once with the same operations one VM at a
// time, in the same run and against the same simulator. The sequential run
// goes first, so the concurrent one reads the larger inventory.
func BenchmarkReconcilePolicy1000(b *testing.B) {
	n := benchVMs()
	l := startLab(b, vcsim.Options{ProtectedVMs: n, ProxyVMs: -1, Workers: 8, DiskSizesMB: []int64{1, 2}}, true, 30*time.Minute)
	st := newMemStore()
	comps := newFakeComponents()
	base := l.setup(st, n)
	var seq, par time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, workers := range []int{1, 16} {
			p := base
			p.ID, p.Name = fmt.Sprintf("bench-%d-%d", i, workers), fmt.Sprintf("bench %d %d", i, workers)
			p.Target.ReplicaSuffix = fmt.Sprintf("_r%d_%d", i, workers)
			mustApply(b, st, raftstore.PutPolicy{Policy: p, Create: true})
			r := newReconciler(b, st, l, comps)
			r.cfg.Workers = workers
			start := time.Now()
			if _, err := r.Reconcile(l.ctx, p.ID); err != nil {
				b.Fatal(err)
			}
			took := time.Since(start)
			// Disabled, its VMs no longer belong to it for the next policy.
			mustApply(b, st, raftstore.SetPolicyEnabled{ID: p.ID, Enabled: false})
			for _, tk := range tasksOf(st, p.ID) {
				if tk.Status != model.StatusInitialSync {
					b.Fatalf("task %s: %s %s", tk.ID, tk.Status, tk.Reason)
				}
			}
			if workers == 1 {
				seq += took
			} else {
				par += took
			}
		}
	}
	b.ReportMetric(seq.Seconds()/float64(b.N), "s/policy-sequential")
	b.ReportMetric(par.Seconds()/float64(b.N), "s/policy-concurrent")
	b.ReportMetric(seq.Seconds()/par.Seconds(), "speedup")
}
