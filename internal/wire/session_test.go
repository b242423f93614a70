package wire

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"
)

func TestKeepSessionRetriesUntilCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	done := make(chan struct{})
	go func() {
		KeepSession(ctx, slog.New(slog.DiscardHandler), "peer", func(context.Context) error {
			calls++
			if calls == 3 {
				cancel()
			}
			return errors.New("connection refused")
		})
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("KeepSession did not return after cancel")
	}
	if calls != 3 {
		t.Fatalf("session ran %d times, want 3", calls)
	}
}
