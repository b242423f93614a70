package ova

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSupervisorRestartsDeadProcess(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "runs")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	exits := 0
	s := &Supervisor{
		Name: "fails",
		Command: func(ctx context.Context) *exec.Cmd {
			return exec.CommandContext(ctx, "sh", "-c", "echo run >>"+marker+"; exit 3")
		},
		Log:        slog.New(slog.NewTextHandler(io.Discard, nil)),
		MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, Healthy: time.Hour,
		OnExit: func(run int, err error) {
			if err == nil {
				t.Errorf("run %d: exit status lost", run)
			}
			if exits++; exits == 3 {
				cancel()
			}
		},
	}
	done := make(chan int)
	go func() { done <- s.Run(ctx) }()
	select {
	case runs := <-done:
		if runs != 3 {
			t.Errorf("runs = %d, want 3", runs)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("supervisor did not restart the process three times")
	}
	b, _ := os.ReadFile(marker)
	if n := strings.Count(string(b), "run"); n != 3 {
		t.Errorf("process ran %d times, want 3", n)
	}
}

func TestSupervisorStopsLongRunningProcess(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	s := &Supervisor{
		Name:       "sleeps",
		Command:    func(ctx context.Context) *exec.Cmd { return exec.CommandContext(ctx, "sleep", "30") },
		Log:        slog.New(slog.NewTextHandler(io.Discard, nil)),
		MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond, Healthy: time.Second,
	}
	start := time.Now()
	if runs := s.Run(ctx); runs != 1 {
		t.Errorf("runs = %d, want 1", runs)
	}
	if time.Since(start) > 20*time.Second {
		t.Error("supervisor did not stop its process on cancel")
	}
}

func TestRedactArgs(t *testing.T) {
	got := strings.Join(redactArgs([]string{"coordinator", "--join-token", "s3cret", "--join", "u"}), " ")
	if strings.Contains(got, "s3cret") || !strings.Contains(got, "--join u") {
		t.Errorf("redacted = %s", got)
	}
}
