package appliance

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// shProc is a lab process running a shell script.
func shProc(dir, name, script string, tier int) *labProc {
	return &labProc{name: name, args: []string{"-c", script}, log: filepath.Join(dir, name+".log"), tier: tier}
}

func TestLabSupervisorRestartsAndStopsByTier(t *testing.T) {
	dir := t.TempDir()
	order := filepath.Join(dir, "order")
	sup := newLabSupervisor("/bin/sh", slog.New(slog.DiscardHandler))
	// Each process notes its own stop; the low tier stops last.
	script := func(name string) string {
		return `trap 'echo ` + name + ` >> ` + order + `; exit 0' TERM; echo ready; while :; do sleep 0.05; done`
	}
	low := shProc(dir, "low", script("low"), 0)
	high := shProc(dir, "high", script("high"), 2)
	stubborn := shProc(dir, "stubborn", `trap '' TERM; echo ready; while :; do sleep 0.05; done`, 1)
	for _, p := range []*labProc{low, high, stubborn} {
		p.ready = "ready"
		ready, err := sup.launch(p)
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-ready:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s not ready", p.name)
		}
		sup.supervise(p, 10*time.Millisecond, 10*time.Millisecond)
	}

	// A process that dies is started again.
	first := high.cmd.Process.Pid
	if err := syscall.Kill(first, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		high.mu.Lock()
		pid := high.cmd.Process.Pid
		high.mu.Unlock()
		// Restarted, and its trap set (its output goes to its log).
		b, _ := os.ReadFile(high.log)
		if pid != first && strings.Count(string(b), "ready") == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("killed process not restarted")
		}
		time.Sleep(10 * time.Millisecond)
	}

	sup.stopAll(500 * time.Millisecond)
	b, err := os.ReadFile(order)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(string(b)); strings.Join(got, ",") != "high,low" {
		t.Fatalf("stop order %v, want high then low", got)
	}
	for _, p := range []*labProc{low, high, stubborn} {
		select {
		case <-p.exited():
		default:
			t.Fatalf("%s still running after stopAll", p.name)
		}
	}
	// Nothing is restarted once the lab stops.
	time.Sleep(100 * time.Millisecond)
	if _, err := sup.launch(shProc(dir, "late", "exit 0", 0)); err == nil {
		t.Fatal("launch accepted after stopAll")
	}
}
