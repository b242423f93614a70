package wire

import (
	"context"
	"fmt"
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

// Greet opens a session on c: it sends h and waits up to timeout for the
// peer's HelloAck (a peer may itself wait for the next hop before it
// answers). The caller decides what a refusal (ack.Err) means: a relay
// passes it on, an endpoint gives up.
func Greet(c *Conn, h *Hello, timeout time.Duration) (*HelloAck, error) {
	if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, fmt.Errorf("hello to %s: %w", h.VM, err)
	}
	if err := c.Send(h); err != nil {
		return nil, fmt.Errorf("send hello for %s: %w", h.VM, err)
	}
	ack, err := Expect[*HelloAck](c)
	if err != nil {
		return nil, fmt.Errorf("read hello ack for %s: %w", h.VM, err)
	}
	return ack, c.SetReadDeadline(time.Time{})
}
