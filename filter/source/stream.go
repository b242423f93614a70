package source

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/continuum-cdp/continuum/internal/wire"
)

// run keeps one session to the source proxy open, reconnecting with
// backoff until ctx ends.
func (v *vmState) run(ctx context.Context) {
	wire.KeepSession(ctx, v.log, "source proxy", v.sessionOnce)
}

// hello is the session's greeting and the generation it was made for.
func (v *vmState) hello() (*wire.Hello, string, int) {
	v.mu.Lock()
	defer v.mu.Unlock()
	h := &wire.Hello{Role: wire.RoleSourceFilter, NodeID: v.opts.NodeID, VM: v.name, Resume: v.acked}
	for _, d := range v.disks {
		h.Disks = append(h.Disks, wire.Disk{Key: d.key, Capacity: d.capacity})
	}
	return h, v.proxy, v.gen
}

func (v *vmState) dial(ctx context.Context, addr string) (net.Conn, error) {
	if addr == "" {
		return v.opts.Dial(ctx)
	}
	return v.opts.DialProxy(ctx, addr)
}

// kickLocked ends the current session (its Hello no longer describes the
// VM, or the proxy changed); the next one starts at once and resends
// everything not acknowledged.
func (v *vmState) kickLocked() {
	v.gen++
	if s := v.session; s != nil {
		s.stale = true
		s.conn.Close()
	}
	v.cond.Broadcast()
}

func (v *vmState) sessionOnce(ctx context.Context) error {
	h, addr, gen := v.hello()
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	nc, err := v.dial(dctx, addr)
	cancel()
	if err != nil {
		return fmt.Errorf("dial source proxy %s: %w", addr, err)
	}
	c := wire.NewConn(nc)
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	// the proxy may wait for the target before it answers
	ack, err := wire.Greet(c, h, 60*time.Second)
	if err != nil {
		return err
	}
	if ack.Err != "" {
		return fmt.Errorf("source proxy refused the session: %s", ack.Err)
	}
	s := &session{gen: gen, conn: c}
	v.mu.Lock()
	err = v.connectedLocked(ack, s)
	v.mu.Unlock()
	if err != nil {
		return err
	}
	v.log.Info("connected to source proxy", "resume", ack.Resume, "initial_sync_done", ack.InitialSyncDone, "link", c.Protection())
	readErr := make(chan error, 1)
	go func() { readErr <- v.readLoop(c, s) }()
	hbDone := make(chan struct{})
	defer close(hbDone)
	go func() {
		t := time.NewTicker(15 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-hbDone:
				return
			case <-t.C:
				if c.Send(&wire.Heartbeat{}) != nil {
					return
				}
			}
		}
	}()
	werr := v.writeLoop(c, s)
	c.Close()
	rerr := <-readErr
	v.mu.Lock()
	v.disconnectedLocked(s)
	v.mu.Unlock()
	return errors.Join(werr, rerr)
}

func (v *vmState) readLoop(c *wire.Conn, s *session) error {
	defer func() {
		v.mu.Lock()
		s.done = true
		v.cond.Broadcast()
		v.mu.Unlock()
	}()
	for {
		m, err := c.ReadMsg()
		if err != nil {
			return fmt.Errorf("read from source proxy: %w", err)
		}
		switch m := m.(type) {
		case *wire.Ack:
			v.mu.Lock()
			v.ackLocked(m.Seq)
			v.mu.Unlock()
		case *wire.Error:
			v.log.Warn("source proxy reports an error", "code", m.Code, "msg", m.Msg)
		case *wire.Heartbeat, *wire.Status:
		default:
			return fmt.Errorf("unexpected %s from source proxy", m.Type())
		}
	}
}

// writeLoop sends buffered entries from the send position on; entries stay
// buffered until acknowledged.
func (v *vmState) writeLoop(c *wire.Conn, s *session) error {
	batch := make([]*entry, 0, 256)
	// done with the batch: data acknowledged meanwhile goes back
	settle := func() {
		v.mu.Lock()
		for _, e := range batch {
			e.sending = false
			if e.ackedSending {
				e.ackedSending = false
				e.release()
			}
		}
		v.mu.Unlock()
		batch = batch[:0]
	}
	defer settle()
	for {
		v.mu.Lock()
		for !s.done && !s.stale && !v.closed && v.sendPos >= len(v.buf) {
			v.cond.Wait()
		}
		if s.done || s.stale || v.closed {
			v.mu.Unlock()
			return nil
		}
		batch = append(batch[:0], v.buf[v.sendPos:min(len(v.buf), v.sendPos+cap(batch))]...)
		for _, e := range batch {
			e.sending = true
		}
		v.sendPos += len(batch)
		v.mu.Unlock()
		var n int64
		for _, e := range batch {
			if err := c.WriteMsg(e.msg); err != nil {
				return fmt.Errorf("send seq %d: %w", e.seq, err)
			}
			n += e.size
		}
		if err := c.Flush(); err != nil {
			return fmt.Errorf("send to source proxy: %w", err)
		}
		v.mu.Lock()
		v.sentBytes += n
		v.mu.Unlock()
		settle()
	}
}
