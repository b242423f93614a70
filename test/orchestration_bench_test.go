package test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/client"
	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/vcsim"
)

// benchLab is a `continuum lab` process started by a benchmark.
type benchLab struct {
	cmd  *exec.Cmd
	done chan struct{}
	dir  string
	env  map[string]string
	cl   *client.Client
}

// startBenchLab runs `continuum lab --no-demo` with vms source VMs of one
// small disk each and waits for "lab ready".
func startBenchLab(b *testing.B, vms int) *benchLab {
	b.Helper()
	dir := b.TempDir()
	l := &benchLab{dir: dir, done: make(chan struct{})}
	l.cmd = exec.Command(continuumBinary(b), "lab", "--dir", dir, "--no-demo", "--no-table",
		"--vms", fmt.Sprint(vms), "--disk-sizes-mb", "1")
	l.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	logf, err := os.Create(filepath.Join(dir, "lab.log"))
	if err != nil {
		b.Fatal(err)
	}
	l.cmd.Stderr = logf
	out, err := l.cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := l.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "lab ready" {
				ready <- true
			}
		}
		ready <- false
	}()
	go func() { l.cmd.Wait(); logf.Close(); close(l.done) }()
	b.Cleanup(func() {
		// SIGTERM lets the lab stop its children in order; SIGKILL of the
		// group if it does not.
		_ = l.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-l.done:
		case <-time.After(30 * time.Second):
			_ = syscall.Kill(-l.cmd.Process.Pid, syscall.SIGKILL)
			<-l.done
		}
	})
	select {
	case ok := <-ready:
		if !ok {
			b.Fatalf("lab exited before it was ready:\n%s", benchTail(filepath.Join(dir, "lab.log")))
		}
	case <-time.After(3 * time.Minute):
		b.Fatalf("lab not ready after 3m:\n%s", benchTail(filepath.Join(dir, "lab.log")))
	}
	body, err := os.ReadFile(filepath.Join(dir, "lab.env"))
	if err != nil {
		b.Fatal(err)
	}
	l.env = map[string]string{}
	for _, line := range strings.Split(string(body), "\n") {
		if k, v, ok := strings.Cut(strings.TrimPrefix(line, "export "), "="); ok {
			l.env[k] = strings.Trim(v, "'\"")
		}
	}
	ca, err := os.ReadFile(l.env["CONTINUUM_CACERT"])
	if err != nil {
		b.Fatal(err)
	}
	if l.cl, err = client.New(l.env["CONTINUUM_API"], l.env["CONTINUUM_TOKEN"], ca); err != nil {
		b.Fatal(err)
	}
	l.cl.RetryFor = 30 * time.Second
	b.Cleanup(l.cl.Close)
	return l
}

func benchTail(path string) string {
	body, _ := os.ReadFile(path)
	if len(body) > 4000 {
		body = body[len(body)-4000:]
	}
	return string(body)
}

// cli runs a client command against the lab.
func (l *benchLab) cli(b *testing.B, args ...string) string {
	b.Helper()
	cmd := exec.Command(continuumBinary(b), args...)
	for k, v := range l.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Env = append(os.Environ(), cmd.Env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("continuum %s: %v\n%s", args[0], err, out)
	}
	return string(out)
}

// BenchmarkPolicyToSyncing measures, in the lab, the time from `policy
// create` over every source VM to every VM in Syncing (replica created,
// storage policy applied, proxies selected, configuration pushed, initial
// sync of a 1 MB disk done).
func BenchmarkPolicyToSyncing(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprintf("vms=%d", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				l := startBenchLab(b, n)
				ctx := context.Background()
				// The lab's proxies have small capacities so that its
				// demo shows every rank; here any proxy takes any number.
				pxs, err := l.cl.ListProxies(ctx)
				if err != nil {
					b.Fatal(err)
				}
				for _, px := range pxs {
					up := *px
					up.MaxTasks = 0
					if _, err := l.cl.UpdateProxy(ctx, px.ID, &up); err != nil {
						b.Fatal(err)
					}
				}
				args := []string{"policy", "create", "bench", "--target-cluster", vcsim.TargetClusterName,
					"--target-datastore", vcsim.TargetDatastoreName(0), "--rpo", "15s", "--vcenter", "lab"}
				for v := range n {
					args = append(args, "--vm", vcsim.ProtectedVMName(v))
				}
				b.StartTimer()
				start := time.Now()
				l.cli(b, args...)
				p, err := l.cl.GetPolicy(ctx, "bench")
				if err != nil {
					b.Fatal(err)
				}
				deadline := start.Add(15 * time.Minute)
				// A configuration that stops moving for minutes is stuck,
				// not slow: fail early and say where it stopped.
				var last, progress string
				moved := time.Now()
				phases := newBenchPhases(start, "tasks", "replicas", "configured", "syncing")
				cpu0 := labCPU(l.cmd.Process.Pid)
				for {
					st, err := l.cl.PolicyStatus(ctx, p.ID)
					if err == nil {
						syncing, placed, configured := 0, 0, 0
						for _, tk := range st.Tasks {
							if tk.ReplicaID != "" {
								placed++
							}
							switch tk.Status {
							case model.StatusInitialSync, model.StatusSyncing, model.StatusWarning:
								configured++
							}
							if tk.Status == model.StatusSyncing || tk.Status == model.StatusWarning {
								syncing++
							} else {
								last = fmt.Sprintf("%s: %s %s", tk.VMName, tk.Status, tk.Reason)
							}
						}
						phases.reach("tasks", len(st.Tasks) == n)
						phases.reach("replicas", placed == n)
						phases.reach("configured", configured == n)
						phases.reach("syncing", syncing == n && len(st.Tasks) == n)
						if syncing == n && len(st.Tasks) == n {
							break
						}
						if now := fmt.Sprint(len(st.Tasks), placed, syncing); now != progress {
							progress, moved = now, time.Now()
						}
						last = fmt.Sprintf("%d tasks, %d with a replica, %d of %d syncing; e.g. %s", len(st.Tasks), placed, syncing, n, last)
					} else {
						last = err.Error()
					}
					if time.Now().After(deadline) || time.Since(moved) > 3*time.Minute {
						b.Fatalf("%d VMs not all syncing after %v (no progress for %v): %s\n%s", n, time.Since(start).Round(time.Second),
							time.Since(moved).Round(time.Second), last, benchTail(filepath.Join(l.dir, "logs", "coord-1.log")))
					}
					time.Sleep(250 * time.Millisecond)
				}
				took := time.Since(start)
				b.StopTimer()
				b.ReportMetric(took.Seconds(), "s-to-syncing")
				b.ReportMetric(float64(took.Milliseconds())/float64(n), "ms/vm")
				b.Logf("%d VMs: policy create to every VM syncing in %v; every VM had %s", n, took.Round(100*time.Millisecond), phases)
				b.Logf("%d VMs: CPU seconds per process from policy create to syncing: %s", n, cpuDelta(cpu0, labCPU(l.cmd.Process.Pid)))
				_ = l.cmd.Process.Signal(syscall.SIGTERM)
				<-l.done
				b.StartTimer()
			}
		})
	}
}

// benchPhases records when a configuration first reached each phase for
// every VM, as seen through the policy's status.
type benchPhases struct {
	start time.Time
	order []string
	at    map[string]time.Duration
}

func newBenchPhases(start time.Time, order ...string) *benchPhases {
	return &benchPhases{start: start, order: order, at: map[string]time.Duration{}}
}

func (p *benchPhases) reach(name string, done bool) {
	if _, ok := p.at[name]; !ok && done {
		p.at[name] = time.Since(p.start)
	}
}

func (p *benchPhases) String() string {
	var parts []string
	for _, name := range p.order {
		if d, ok := p.at[name]; ok {
			parts = append(parts, fmt.Sprintf("%s at %v", name, d.Round(100*time.Millisecond)))
		}
	}
	return strings.Join(parts, ", ")
}

// labCPU returns the CPU time (user+system) of every process under the lab
// process, by its role (the first two arguments), read from /proc.
func labCPU(root int) map[string]time.Duration {
	children := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	stats := map[int][]string{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		body, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// The command name may hold spaces; the fields follow its ")".
		i := strings.LastIndexByte(string(body), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(body)[i+1:])
		if len(f) < 13 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		children[ppid] = append(children[ppid], pid)
		stats[pid] = f
	}
	out := map[string]time.Duration{}
	var walk func(pid int)
	walk = func(pid int) {
		if f, ok := stats[pid]; ok {
			ut, _ := strconv.ParseInt(f[11], 10, 64)
			st, _ := strconv.ParseInt(f[12], 10, 64)
			name := "lab"
			if args, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && pid != root {
				a := strings.Split(strings.TrimRight(string(args), "\x00"), "\x00")
				name = strings.Join(a[1:min(len(a), 2)], " ")
				for i, arg := range a {
					if (arg == "--node-id" || arg == "--host" || arg == "--proxy-id") && i+1 < len(a) {
						name += " " + a[i+1]
					}
				}
			}
			// Clock ticks are 100 a second on Linux.
			out[name] += time.Duration(ut+st) * 10 * time.Millisecond
		}
		for _, c := range children[pid] {
			walk(c)
		}
	}
	walk(root)
	return out
}

func cpuDelta(before, after map[string]time.Duration) string {
	names := make([]string, 0, len(after))
	for name := range after {
		names = append(names, name)
	}
	sort.Slice(names, func(i, j int) bool { return after[names[i]]-before[names[i]] > after[names[j]]-before[names[j]] })
	var parts []string
	var total time.Duration
	for _, name := range names {
		d := after[name] - before[name]
		total += d
		parts = append(parts, fmt.Sprintf("%s %.1f", name, d.Seconds()))
	}
	return fmt.Sprintf("total %.1f: %s", total.Seconds(), strings.Join(parts, ", "))
}
