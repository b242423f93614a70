package ova

import (
	"context"
	"log/slog"
	"os/exec"
	"time"
)

// Supervisor runs a command and starts it again whenever it exits, with a
// backoff that grows while the command keeps failing fast and resets once
// it has run for a while.
type Supervisor struct {
	Name    string
	Command func(ctx context.Context) *exec.Cmd
	Log     *slog.Logger
	// MinBackoff and MaxBackoff bound the wait between two starts.
	MinBackoff, MaxBackoff time.Duration
	// Healthy is how long a run must last for the backoff to reset.
	Healthy time.Duration
	// OnExit, when set, is told of every exit (for the console status).
	OnExit func(run int, err error)
}

// Run supervises until ctx is done and returns the number of starts.
func (s *Supervisor) Run(ctx context.Context) int {
	backoff := s.MinBackoff
	runs := 0
	for ctx.Err() == nil {
		cmd := s.Command(ctx)
		runs++
		start := time.Now()
		s.Log.Info("starting", "process", s.Name, "run", runs, "args", redactArgs(cmd.Args))
		err := cmd.Run()
		if ctx.Err() != nil {
			break
		}
		s.Log.Error("process exited; restarting", "process", s.Name, "run", runs, "err", err, "after", time.Since(start).Round(time.Millisecond), "restart_in", backoff)
		if s.OnExit != nil {
			s.OnExit(runs, err)
		}
		if time.Since(start) >= s.Healthy {
			backoff = s.MinBackoff
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, s.MaxBackoff)
	}
	return runs
}

// redactArgs hides the value following a secret flag, so that logs and the
// console never show a join token.
func redactArgs(args []string) []string {
	out := append([]string(nil), args...)
	for i := 0; i+1 < len(out); i++ {
		if out[i] == "--join-token" {
			out[i+1] = "<redacted>"
		}
	}
	return out
}
