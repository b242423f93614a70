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
	"syscall"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/client"
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
	cmd := exec.Command(bin, "lab", "--dir", dir, "--no-demo")
	logf, err := os.Create(filepath.Join(filepath.Dir(dir), "lab.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		closed := false
		for sc.Scan() {
			if !closed && strings.Contains(sc.Text(), "lab ready") {
				close(ready)
				closed = true
			}
		}
		done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	})
	select {
	case <-ready:
	case err := <-done:
		b, _ := os.ReadFile(logf.Name())
		t.Fatalf("lab exited before ready: %v\n%s", err, b)
	case <-time.After(120 * time.Second):
		t.Fatal("lab not ready after 120s")
	}

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
	// SIGTERM stops the lab and every child.
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("lab did not stop on SIGTERM")
	}
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
}

type labErr struct{ s string }

func (e *labErr) Error() string { return e.s }
