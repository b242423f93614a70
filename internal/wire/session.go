package wire

import (
	"context"
	"log/slog"
	"time"
)

// Reconnect backoff: short at first, capped, and reset after a session that
// lived long enough to count as healthy.
const (
	backoffFirst   = 100 * time.Millisecond
	backoffMax     = 3 * time.Second
	healthySession = 10 * time.Second
)

// KeepSession runs session again and again until ctx ends, waiting with
// exponential backoff between attempts. Every hop of the data path keeps
// its peer this way; session returns when its connection ends.
func KeepSession(ctx context.Context, log *slog.Logger, peer string, session func(context.Context) error) {
	backoff := backoffFirst
	for ctx.Err() == nil {
		start := time.Now()
		err := session(ctx)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > healthySession {
			backoff = backoffFirst
		}
		log.Warn(peer+" session ended", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, backoffMax)
	}
}
