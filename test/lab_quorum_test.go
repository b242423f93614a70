package test

import (
	"context"
	"fmt"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
)

// TestLabQuorumLoss stops two of the lab's three coordinators for a minute:
// the filters and proxies keep their last configuration, so short-term
// points go on being created; long-term points, which the coordinator
// schedules, pause, and resume once the coordinators are back.
func TestLabQuorumLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	bin := continuumBinary(t)
	t0 := time.Now()
	dir := filepath.Join(t.TempDir(), "lab")
	lab := startLab(t, bin, dir, "--no-table")
	cl := labClient(t, dir)
	ctx := context.Background()
	waitDemoSyncing(t, cl, 4*time.Minute)
	t.Logf("demo syncing after %s", time.Since(t0))

	// Long-term points every 15s, so that their pause shows within the
	// minute without quorum.
	p, err := cl.GetPolicy(ctx, "demo")
	if err != nil {
		t.Fatal(err)
	}
	p.LongTermEvery, p.LongTermRetention = model.Duration(15*time.Second), model.Duration(time.Hour)
	if _, err := cl.UpdatePolicy(ctx, p.ID, p); err != nil {
		t.Fatal(err)
	}
	edited, err := readDemo(ctx, cl)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "long-term points every 15s", 2*time.Minute, func() error {
		d, err := readDemo(ctx, cl)
		if err != nil {
			return err
		}
		for vm := range d.points {
			if d.long[vm] <= edited.long[vm] {
				return fmt.Errorf("%s: %d long-term points, %d at the edit", vm, d.long[vm], edited.long[vm])
			}
		}
		return nil
	})

	// Freeze the leader and one follower: the survivor, a follower, can
	// never win an election alone.
	st, err := cl.ClusterStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var frozen []int
	var survivor string
	for _, m := range st.Members {
		if m.PID == 0 {
			t.Fatalf("member without a PID: %+v", m)
		}
		switch {
		case m.Leader:
			frozen = append(frozen, m.PID)
		case survivor == "":
			survivor = "https://" + m.APIAddr
		default:
			frozen = append(frozen, m.PID)
		}
	}
	if len(frozen) != 2 || survivor == "" {
		t.Fatalf("cannot pick two coordinators to stop: %+v", st.Members)
	}
	thaw := func() {
		for _, pid := range frozen {
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	}
	t.Cleanup(thaw)
	// The survivor answers from its own state and asks the filters.
	alone := cl.WithEndpoints([]string{survivor})
	alone.RetryFor, alone.Stale = 0, true

	at, err := readDemo(ctx, cl)
	if err != nil {
		t.Fatal(err)
	}
	for _, pid := range frozen {
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
	}
	stopped := time.Now()
	t.Logf("coordinators %v stopped after %s", frozen, time.Since(t0))
	// A long-term point already under way when quorum went may still land;
	// none may start after that.
	time.Sleep(10 * time.Second)
	mid, err := readDemo(ctx, alone)
	if err != nil {
		t.Fatalf("the surviving coordinator does not list restore points: %v", err)
	}
	time.Sleep(time.Until(stopped.Add(60 * time.Second)))
	end, err := readDemo(ctx, alone)
	if err != nil {
		t.Fatalf("the surviving coordinator does not list restore points: %v", err)
	}
	for vm := range at.points {
		short := func(d *demoState) int { return d.points[vm] - d.long[vm] }
		t.Logf("%s without quorum: short-term points %d -> %d, long-term %d -> %d -> %d", vm,
			short(at), short(end), at.long[vm], mid.long[vm], end.long[vm])
		// RPO 2s: some 30 short-term points a minute; ask for a third.
		if short(end)-short(at) < 10 {
			t.Errorf("%s: %d short-term points without quorum (from %d to %d)", vm, short(end)-short(at), short(at), short(end))
		}
		if end.long[vm] != mid.long[vm] {
			t.Errorf("%s: long-term points went on without quorum: %d, then %d", vm, mid.long[vm], end.long[vm])
		}
	}
	if st, err := alone.PolicyStatus(ctx, p.ID); err == nil {
		t.Logf("status without quorum: %s %s", st.Status, st.Reason)
	}

	thaw()
	resumed := time.Now()
	t.Logf("coordinators resumed after %s", time.Since(t0))
	cl.RetryFor = time.Minute
	waitFor(t, "long-term points resume", 2*time.Minute, func() error {
		d, err := readDemo(ctx, cl)
		if err != nil {
			return err
		}
		for vm := range end.long {
			if d.long[vm] <= end.long[vm] {
				return fmt.Errorf("%s: %d long-term points, %d when quorum came back", vm, d.long[vm], end.long[vm])
			}
		}
		return nil
	})
	// No component failed meanwhile: once the leader has heard from them
	// again, the data paths are those of before.
	time.Sleep(time.Until(resumed.Add(15 * time.Second)))
	after, err := readDemo(ctx, cl)
	if err != nil {
		t.Fatal(err)
	}
	was := map[string][2]string{}
	for _, tk := range at.status.Tasks {
		was[tk.VMName] = [2]string{tk.SourceProxy, tk.TargetProxy}
	}
	for _, tk := range after.status.Tasks {
		if now := [2]string{tk.SourceProxy, tk.TargetProxy}; now != was[tk.VMName] {
			t.Errorf("%s: proxies %v after the coordinators came back, %v before", tk.VMName, now, was[tk.VMName])
		}
	}
	lab.stop()
	t.Logf("done after %s", time.Since(t0))
}
