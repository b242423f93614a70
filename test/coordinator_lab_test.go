package test

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/client"
	"github.com/continuum-cdp/continuum/internal/model"
)

// TestCoordinatorLab starts "continuum lab", uses it through lab.env, and
// checks that stopping the lab leaves no process behind.
func TestCoordinatorLab(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	bin := continuumBinary(t)
	t0 := time.Now()
	dir := filepath.Join(t.TempDir(), "lab")
	lab := startLab(t, bin, dir, "--no-demo")
	t.Logf("lab ready after %s", time.Since(t0))
	env := map[string]string{}
	b, err := os.ReadFile(filepath.Join(dir, "lab.env"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(strings.TrimPrefix(line, "export "), "="); ok {
			env[k] = strings.Trim(v, "'")
		}
	}
	for _, k := range []string{"CONTINUUM_API", "CONTINUUM_TOKEN", "CONTINUUM_CACERT"} {
		if env[k] == "" {
			t.Fatalf("lab.env lacks %s:\n%s", k, b)
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
	defer cl.Close()
	st, err := cl.ClusterStatus(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, m := range st.Members {
		if m.PID > 0 {
			pids = append(pids, m.PID)
		}
	}
	if len(st.Members) != 3 || len(pids) != 3 || st.LeaderID == "" {
		t.Fatalf("lab cluster: %+v", st)
	}
	if env["GOVC_URL"] != "" {
		if vc, err := cl.GetVCenter(context.Background(), "lab"); err != nil || vc.URL != env["GOVC_URL"] {
			t.Fatalf("lab vCenter not registered: %+v %v", vc, err)
		}
	}

	// The supervisor restarts a coordinator that dies.
	victim := pids[0]
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cl.RetryFor = 20 * time.Second
	eventually(t, "killed coordinator restarted", func() error {
		st, err := cl.ClusterStatus(context.Background())
		if err != nil {
			return err
		}
		for _, m := range st.Members {
			if !m.Reachable || m.PID == victim {
				js, _ := json.Marshal(m)
				return &labErr{string(js)}
			}
		}
		for _, m := range st.Members {
			pids = append(pids, m.PID)
		}
		return nil
	})

	t.Logf("restarted after %s", time.Since(t0))
	// Something to find after a restart of the whole lab.
	if _, err := cl.CreateTrafficRule(context.Background(), &model.TrafficRule{Name: "survives", SourceCIDR: "10.0.0.0/8", TargetCIDR: "10.1.0.0/16"}); err != nil {
		t.Fatal(err)
	}
	// SIGTERM stops the lab and every child.
	lab.stop()
	t.Logf("stopped after %s", time.Since(t0))
	for _, pid := range pids {
		if pid == victim {
			continue
		}
		eventually(t, "child "+strconv.Itoa(pid)+" gone", func() error {
			if err := syscall.Kill(pid, 0); err == nil {
				return &labErr{"still running"}
			}
			return nil
		})
	}

	// Running the lab again on the same directory restarts the same
	// cluster with its state.
	lab = startLab(t, bin, dir, "--no-demo")
	cl2, err := client.New(env["CONTINUUM_API"], env["CONTINUUM_TOKEN"], ca)
	if err != nil {
		t.Fatal(err)
	}
	defer cl2.Close()
	rules, err := cl2.ListTrafficRules(context.Background())
	if err != nil || len(rules) != 1 || rules[0].Name != "survives" {
		t.Fatalf("after a lab restart: %v %v", rules, err)
	}
	// A second lab on a directory whose lab runs is refused.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "lab", "--dir", dir).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "in use") {
		t.Fatalf("second lab on a running lab's directory: %v\n%s", err, out)
	}
	lab.stop()
	t.Logf("restarted lab stopped after %s", time.Since(t0))
}

type labProcess struct {
	t     *testing.T
	cmd   *exec.Cmd
	done  chan error
	ready chan struct{}

	mu  sync.Mutex
	out []string // the last lines of its stdout
}

// output returns the last lines the lab printed.
func (l *labProcess) output() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.out...)
}

// startLab runs "continuum lab --dir DIR ARGS..." and waits for "lab
// ready".
func startLab(t *testing.T, bin, dir string, args ...string) *labProcess {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"lab", "--dir", dir}, args...)...)
	logf, err := os.OpenFile(dir+".log", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logf.Close() })
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	l := &labProcess{t: t, cmd: cmd, done: make(chan error, 1), ready: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stdout)
		closed := false
		for sc.Scan() {
			l.mu.Lock()
			if l.out = append(l.out, sc.Text()); len(l.out) > 400 {
				l.out = l.out[len(l.out)-200:]
			}
			l.mu.Unlock()
			if !closed && strings.Contains(sc.Text(), "lab ready") {
				close(l.ready)
				closed = true
			}
		}
		l.done <- cmd.Wait()
	}()
	t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	select {
	case <-l.ready:
	case err := <-l.done:
		b, _ := os.ReadFile(dir + ".log")
		t.Fatalf("lab exited before ready: %v\n%s", err, b)
	case <-time.After(120 * time.Second):
		t.Fatal("lab not ready after 120s")
	}
	return l
}

func (l *labProcess) stop() {
	l.t.Helper()
	if err := l.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		l.t.Fatal(err)
	}
	select {
	case <-l.done:
	case <-time.After(60 * time.Second):
		l.t.Fatal("lab did not stop on SIGTERM")
	}
}

type labErr struct{ s string }

func (e *labErr) Error() string { return e.s }
