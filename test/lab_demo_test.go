package test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/client"
	"github.com/continuum-cdp/continuum/internal/model"
)

// labClient reads DIR/lab.env and returns a client of the lab's
// coordinators.
func labClient(t *testing.T, dir string) *client.Client {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "lab.env"))
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(strings.TrimPrefix(line, "export "), "="); ok {
			env[k] = strings.Trim(v, "'")
		}
	}
	ca, err := os.ReadFile(env["CONTINUUM_CACERT"])
	if err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(env["CONTINUUM_API"], env["CONTINUUM_TOKEN"], ca)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// waitFor polls cond every second until it returns nil or d passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("%s: not after %s: %v", what, d, err)
}

// childPIDs lists the processes whose parent is pid.
func childPIDs(t *testing.T, pid int) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so cut at
		// the last parenthesis.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, n)
		}
	}
	return out
}

// demoState is what the test reads of the demo policy at one moment.
type demoState struct {
	status *client.PolicyStatus
	points map[string]int // VM -> restore points listed
	long   map[string]int // VM -> long-term points among them
	newest map[string]time.Time
}

func readDemo(ctx context.Context, cl *client.Client) (*demoState, error) {
	p, err := cl.GetPolicy(ctx, "demo")
	if err != nil {
		return nil, err
	}
	st, err := cl.PolicyStatus(ctx, p.ID)
	if err != nil {
		return nil, err
	}
	d := &demoState{status: st, points: map[string]int{}, long: map[string]int{}, newest: map[string]time.Time{}}
	for _, tk := range st.Tasks {
		pts, err := cl.RestorePoints(ctx, tk.VMName)
		if err != nil {
			return d, fmt.Errorf("restore points of %s: %w", tk.VMName, err)
		}
		d.points[tk.VMName] = len(pts)
		for _, p := range pts {
			if p.Kind == model.PointLongTerm {
				d.long[tk.VMName]++
			}
			if p.Time.After(d.newest[tk.VMName]) {
				d.newest[tk.VMName] = p.Time
			}
		}
	}
	return d, nil
}

// waitDemoSyncing waits until every demo VM is Syncing (or Warning for
// lag) with restore points listed.
func waitDemoSyncing(t *testing.T, cl *client.Client, d time.Duration) *demoState {
	t.Helper()
	var last *demoState
	waitFor(t, "every demo VM syncing with restore points", d, func() error {
		d, err := readDemo(context.Background(), cl)
		if err != nil {
			return err
		}
		last = d
		if len(d.status.Tasks) == 0 {
			return fmt.Errorf("no tasks yet (%s %s)", d.status.Status, d.status.Reason)
		}
		for _, tk := range d.status.Tasks {
			ok := tk.Status == model.StatusSyncing || (tk.Status == model.StatusWarning && tk.LagSeconds > 0)
			if !ok || d.points[tk.VMName] == 0 {
				return fmt.Errorf("%s: %s %q, %d points", tk.VMName, tk.Status, tk.Reason, d.points[tk.VMName])
			}
		}
		return nil
	})
	return last
}

// TestLabDemo runs "continuum lab" with its demo: every demo VM reaches
// Syncing (or Warning for lag) with restore points listed, the automatic
// selection uses proxies of more than one rank, the workload writes, Ctrl-C
// stops every process the lab started, and the lab restarts.
func TestLabDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	bin := continuumBinary(t)
	t0 := time.Now()
	dir := filepath.Join(t.TempDir(), "lab")
	if d := os.Getenv("CONTINUUM_TEST_KEEP"); d != "" {
		dir = d
	}
	t.Cleanup(func() {
		if t.Failed() {
			logWarnings(t, filepath.Join(dir, "logs"))
		}
	})
	lab := startLab(t, bin, dir)
	t.Logf("lab ready after %s", time.Since(t0))
	cl := labClient(t, dir)
	ctx := context.Background()

	// vcsim, 3 coordinators, 6 proxies, 5 filters.
	children := childPIDs(t, lab.cmd.Process.Pid)
	if len(children) < 15 {
		t.Errorf("lab runs %d processes, want at least 15", len(children))
	}

	last := waitDemoSyncing(t, cl, 4*time.Minute)
	t.Logf("demo syncing after %s: %d VMs", time.Since(t0), len(last.status.Tasks))
	if len(last.status.Tasks) < 2 {
		t.Fatalf("the demo protects %d VMs", len(last.status.Tasks))
	}

	// The proxies chosen span more than one selection rank.
	proxies, err := cl.ListProxies(ctx)
	if err != nil {
		t.Fatal(err)
	}
	clusters, err := cl.ListClusters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	clusterOf := map[string]string{} // name -> ID
	for _, c := range clusters {
		clusterOf[c.Name] = c.ID
	}
	byID := map[string]*model.Proxy{}
	for _, p := range proxies {
		byID[p.ID] = p
	}
	rank := func(id, near string) string {
		p := byID[id]
		switch {
		case p == nil:
			return "unknown"
		case p.Kind == model.KindPhysical:
			return "physical"
		case p.ClusterID == near:
			return "vm-same-cluster"
		default:
			return "vm-other-cluster"
		}
	}
	ranks := map[string]bool{}
	for _, tk := range last.status.Tasks {
		if tk.SourceProxy == "" || tk.TargetProxy == "" {
			t.Fatalf("%s has no proxies: %+v", tk.VMName, tk)
		}
		ranks["source "+rank(tk.SourceProxy, clusterOf["src-cluster"])] = true
		ranks["target "+rank(tk.TargetProxy, clusterOf["dst-cluster"])] = true
	}
	var seen []string
	for r := range ranks {
		seen = append(seen, r)
	}
	sort.Strings(seen)
	t.Logf("selection ranks used: %v", seen)
	if !ranks["source physical"] || !ranks["source vm-same-cluster"] {
		t.Errorf("source proxies of fewer than two ranks: %v", seen)
	}

	// The workload writes, as the table's last line says, and keeps the
	// journal growing.
	waitFor(t, "the workload writes", 30*time.Second, func() error {
		out := lab.output()
		for i := len(out) - 1; i >= 0; i-- {
			var n int
			if _, err := fmt.Sscanf(out[i], "workload: %d writes", &n); err == nil {
				if n == 0 {
					return fmt.Errorf("%q", out[i])
				}
				t.Logf("%s", out[i])
				return nil
			}
		}
		return fmt.Errorf("no workload line in %d lines", len(out))
	})
	before := last.points
	waitFor(t, "restore points keep coming", time.Minute, func() error {
		d, err := readDemo(ctx, cl)
		if err != nil {
			return err
		}
		for vm, n := range before {
			if d.points[vm] <= n {
				return fmt.Errorf("%s: %d points, was %d", vm, d.points[vm], n)
			}
		}
		return nil
	})

	// Ctrl-C stops everything, each process on its SIGTERM.
	children = childPIDs(t, lab.cmd.Process.Pid)
	stopAt := time.Now()
	if err := lab.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-lab.done:
		if err != nil {
			t.Errorf("lab exit after Ctrl-C: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("lab did not stop on Ctrl-C")
	}
	for _, pid := range children {
		if err := syscall.Kill(pid, 0); err == nil {
			b, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
			t.Errorf("process %d left running: %s", pid, strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	t.Logf("stopped in %s", time.Since(stopAt))
	if b, _ := os.ReadFile(dir + ".log"); strings.Contains(string(b), "did not stop on SIGTERM") {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "did not stop on SIGTERM") {
				t.Errorf("not a clean stop: %s", line)
			}
		}
	}

	// The same lab again: its simulator starts afresh, the coordinators
	// keep the policy, and the demo syncs again.
	t1 := time.Now()
	lab = startLab(t, bin, dir, "--no-table")
	waitDemoSyncing(t, cl, 3*time.Minute)
	var again *demoState
	waitFor(t, "restore points made by the restarted lab", 2*time.Minute, func() error {
		d, err := readDemo(ctx, cl)
		if err != nil {
			return err
		}
		again = d
		for vm, at := range d.newest {
			if !at.After(t1) {
				return fmt.Errorf("%s: newest point %s, lab restarted at %s", vm, at, t1)
			}
		}
		return nil
	})
	t.Logf("restarted lab syncing after %s", time.Since(t1))
	if again.status.PolicyID != last.status.PolicyID || len(again.status.Tasks) != len(last.status.Tasks) {
		t.Errorf("after a restart: policy %s with %d VMs, was %s with %d", again.status.PolicyID, len(again.status.Tasks),
			last.status.PolicyID, len(last.status.Tasks))
	}
	lab.stop()
}

// logWarnings prints the last warnings and errors of every process log
// of a lab, so that a failure says what the components saw.
func logWarnings(t *testing.T, logDir string) {
	files, _ := filepath.Glob(filepath.Join(logDir, "*"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var hits []string
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
				hits = append(hits, line)
			}
		}
		if len(hits) > 20 {
			hits = hits[len(hits)-20:]
		}
		if len(hits) > 0 {
			t.Logf("%s, last warnings:\n%s", filepath.Base(f), strings.Join(hits, "\n"))
		}
	}
}
