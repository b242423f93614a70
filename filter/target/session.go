package target

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/continuum-cdp/continuum/filter/journal"
	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/wire"
)

// session is one target proxy connection delivering one VM's points.
type session struct {
	conn *wire.Conn
	vm   *journal.VM
	log  *slog.Logger

	// pending is a point whose append failed (a full datastore): it is
	// retried before anything newer, so no point is ever skipped.
	pending *journal.Point
	// pendingMsg is the frame pending's data lives in, released once
	// pending is durable
	pendingMsg *wire.Point
	// stalled: a point after pending was dropped, so nothing newer may be
	// appended on this connection; the proxy's resend after a reconnect
	// fills the gap.
	stalled bool
	// mu guards pending and stalled between the appender and the acker
	mu sync.Mutex
}

func (s *Service) serveConn(nc net.Conn) {
	log := s.log.With("remote", nc.RemoteAddr().String())
	// Points' frames come back through wire.Release once the journal
	// holds them, so a steady stream reads into the same few buffers.
	c := wire.NewConn(nc, wire.WithFrameReuse())
	defer c.Close()
	ss, err := s.handshake(c, log)
	if err != nil {
		s.m.rejected.WithLabelValues("handshake").Inc()
		log.Warn("handshake refused", "err", err)
		return
	}
	defer s.endSession(ss)
	s.m.sessions.Inc()
	defer s.m.sessions.Dec()
	if err := s.receive(ss); err != nil && s.ctx.Err() == nil {
		ss.log.Warn("session ended", "err", err)
	}
}

func (s *Service) handshake(c *wire.Conn, log *slog.Logger) (*session, error) {
	_ = c.SetReadDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	h, err := wire.Expect[*wire.Hello](c)
	if err != nil {
		return nil, fmt.Errorf("read hello: %w", err)
	}
	refuse := func(err error) (*session, error) {
		_ = c.Send(&wire.HelloAck{Err: err.Error()})
		return nil, err
	}
	if h.Role != wire.RoleTargetProxy {
		return refuse(fmt.Errorf("hello from role %q, want %q", h.Role, wire.RoleTargetProxy))
	}
	if h.VM == "" || len(h.Disks) == 0 {
		return refuse(fmt.Errorf("hello for vm %q with %d disks", h.VM, len(h.Disks)))
	}
	if !s.allowedVM(h.VM) {
		return refuse(fmt.Errorf("vm %q has no replica on this host", h.VM))
	}
	vm, err := s.openVM(h.VM, h.Disks)
	if err != nil {
		return refuse(err)
	}
	log = log.With("vm", h.VM)
	ss := &session{conn: c, vm: vm, log: log}
	s.mu.Lock()
	if s.allowed != nil && !s.allowed[h.VM] {
		// the configuration dropped it during the handshake
		s.mu.Unlock()
		return refuse(fmt.Errorf("vm %q has no replica on this host", h.VM))
	}
	if old := s.sessions[h.VM]; old != nil {
		// A newer connection of the same VM wins: the proxy reconnected.
		old.conn.Close()
	}
	s.sessions[h.VM] = ss
	s.mu.Unlock()
	ack := &wire.HelloAck{Resume: vm.LastID(), InitialSyncDone: vm.InitialSyncDone()}
	// the target proxy's traffic rules decide whether the points come in
	// integrity frames instead of TLS
	c.AgreeIntegrity(false)
	if err := c.Send(ack); err != nil {
		s.endSession(ss)
		return nil, fmt.Errorf("send hello ack: %w", err)
	}
	log.Info("session open", "resume", ack.Resume, "initial_sync_done", ack.InitialSyncDone, "link", c.Protection())
	return ss, nil
}

// openVM opens the VM's journal; disks added to the VM since are added.
func (s *Service) openVM(name string, disks []wire.Disk) (*journal.VM, error) {
	specs := make([]journal.DiskSpec, len(disks))
	for i, d := range disks {
		specs[i] = journal.DiskSpec{Key: d.Key, Capacity: d.Capacity}
	}
	vm, err := s.store.OpenVM(name, specs)
	if err == nil {
		return vm, nil
	}
	existing, ok := s.store.VM(name)
	if !ok || !errors.Is(err, model.ErrConflict) {
		return nil, fmt.Errorf("open journal of %s: %w", name, err)
	}
	have := map[int32]int64{}
	for _, d := range existing.Disks() {
		have[d.Key] = d.Capacity
	}
	var add []journal.DiskSpec
	for _, d := range specs {
		c, found := have[d.Key]
		if found && c != d.Capacity {
			return nil, fmt.Errorf("open journal of %s: disk %d has capacity %d, hello says %d: %w", name, d.Key, c, d.Capacity, model.ErrConflict)
		}
		if !found {
			add = append(add, d)
		}
	}
	for _, d := range add {
		if err := existing.AddDisk(d); err != nil {
			return nil, fmt.Errorf("open journal of %s: add disk %d: %w", name, d.Key, err)
		}
	}
	return existing, nil
}

// SetVMs restricts the sessions to the VMs whose replica is on this host
// (the configuration's), ending those of any other; before it is called
// every VM is accepted (the static configuration). The journals of VMs
// left out stay.
func (s *Service) SetVMs(vms []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.allowed = make(map[string]bool, len(vms))
	for _, v := range vms {
		s.allowed[v] = true
	}
	for name, ss := range s.sessions {
		if !s.allowed[name] {
			ss.log.Info("vm left the configuration: session ended")
			ss.conn.Close()
		}
	}
}

func (s *Service) allowedVM(vm string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.removing[vm] && (s.allowed == nil || s.allowed[vm])
}

func (s *Service) endSession(ss *session) {
	s.mu.Lock()
	if s.sessions[ss.vm.Name()] == ss {
		delete(s.sessions, ss.vm.Name())
	}
	s.mu.Unlock()
	ss.conn.Close()
}

// receiveWindow is how many decoded points may wait for the journal while
// earlier ones are appended: reading and decoding the next points overlaps
// with the fsync of the current one.
const receiveWindow = 2

// appendWindow is how many points of the VM may be queued in the journal
// before the oldest is durable, so that several share one fsync.
// Acknowledgements stay in order and only follow durability.
const appendWindow = 4

// received is a decoded point (or a heartbeat, jp nil) for the appender.
// jp's extent data aliases msg's frame: msg is released only once the
// journal holds jp (its record is written from that data).
type received struct {
	jp  *journal.Point
	msg *wire.Point
	raw int64
}

// queuedAppend is a point handed to the journal, waiting to be durable.
type queuedAppend struct {
	jp    *journal.Point
	msg   *wire.Point
	raw   int64
	wait  func() error
	start time.Time
}

// receive reads and decodes points while the appender queues them in the
// journal and the acker acknowledges each once durable, in order.
func (s *Service) receive(ss *session) error {
	q := make(chan received, receiveWindow)
	acks := make(chan queuedAppend, appendWindow)
	var outstanding sync.WaitGroup // queued appends not yet settled by the acker
	var errMu sync.Mutex
	var firstErr error
	quit := make(chan struct{})
	fail := func(err error) {
		errMu.Lock()
		defer errMu.Unlock()
		if firstErr == nil {
			firstErr = err
			close(quit)
			ss.conn.Close() // unblocks the reader
		}
	}
	failed := func() bool {
		select {
		case <-quit:
			return true
		default:
			return false
		}
	}
	ackerDone := make(chan struct{})
	go func() {
		defer close(ackerDone)
		for a := range acks {
			if !failed() {
				if err := s.settle(ss, a); err != nil {
					fail(err)
				}
			}
			outstanding.Done()
		}
	}()
	appenderDone := make(chan struct{})
	go func() {
		defer close(appenderDone)
		for r := range q {
			if failed() {
				continue // drain; the reader stops at the closed connection
			}
			if err := s.queue(ss, r, acks, &outstanding); err != nil {
				fail(err)
			}
		}
		close(acks)
	}()
	rerr := s.readLoop(ss, q, quit)
	close(q)
	// points read before the failure are still appended and acknowledged
	<-appenderDone
	<-ackerDone
	errMu.Lock()
	defer errMu.Unlock()
	if firstErr != nil {
		return firstErr
	}
	return rerr
}

// queue hands one received item to the journal. While a point is pending
// after a full datastore (or the session is stalled), everything runs
// synchronously as before, once the acker has settled what it holds.
func (s *Service) queue(ss *session, r received, acks chan<- queuedAppend, outstanding *sync.WaitGroup) error {
	ss.mu.Lock()
	degraded := ss.pending != nil || ss.stalled
	ss.mu.Unlock()
	if r.jp == nil || degraded {
		outstanding.Wait()
		ss.mu.Lock()
		defer ss.mu.Unlock()
		if r.jp == nil {
			if ss.pending != nil {
				return s.retryPending(ss)
			}
			return nil
		}
		return s.handlePoint(ss, r.jp, r.msg, r.raw)
	}
	start := time.Now()
	wait, err := ss.vm.AppendAsync(s.ctx, r.jp)
	if err != nil {
		// refused before queuing: answer in order, after the earlier ones
		outstanding.Wait()
		ss.mu.Lock()
		defer ss.mu.Unlock()
		return s.appendResult(ss, r.jp, r.msg, r.raw, err, start)
	}
	outstanding.Add(1)
	acks <- queuedAppend{jp: r.jp, msg: r.msg, raw: r.raw, wait: wait, start: start}
	return nil
}

// settle waits until a queued point is durable and acknowledges it; a
// failure is handled as a synchronous append's would be.
func (s *Service) settle(ss *session, a queuedAppend) error {
	err := a.wait()
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if err != nil && (ss.pending != nil || ss.stalled) {
		// a point queued behind the one now pending: it cannot be kept
		// in order behind it; the proxy resends it after a reconnect
		ss.stalled = true
		return ss.conn.Send(&wire.Error{Code: wire.ErrCodeNoSpace, Msg: fmt.Sprintf("point %d not accepted: an earlier point is missing; reconnect to resend", a.jp.ID)})
	}
	return s.appendResult(ss, a.jp, a.msg, a.raw, err, a.start)
}

func (s *Service) readLoop(ss *session, q chan<- received, quit <-chan struct{}) error {
	for {
		_ = ss.conn.SetReadDeadline(time.Now().Add(s.cfg.IdleTimeout))
		m, err := ss.conn.ReadMsg()
		if err != nil {
			if errors.Is(err, wire.ErrCorrupt) {
				s.m.rejected.WithLabelValues("corrupt_frame").Inc()
				ss.log.Warn("frame rejected, dropping connection", "reason", "corrupt_frame", "err", err)
			}
			return fmt.Errorf("read: %w", err)
		}
		var r received
		switch v := m.(type) {
		case *wire.Point:
			jp, err := toJournal(v)
			if err != nil {
				s.m.rejected.WithLabelValues("bad_point").Inc()
				ss.log.Warn("frame rejected, dropping connection", "reason", "bad_point", "point", v.ID, "err", err)
				return fmt.Errorf("point %d: %w", v.ID, err)
			}
			r = received{jp: jp, msg: v, raw: int64(v.RawLen)}
		case *wire.Heartbeat:
		case *wire.Status:
			continue
		default:
			s.m.rejected.WithLabelValues("unexpected_message").Inc()
			return fmt.Errorf("unexpected %s from target proxy", m.Type())
		}
		select {
		case q <- r:
		case <-quit:
			return errors.New("append failed")
		}
	}
}

// toJournal decodes a point (any codec; the target proxy sends them in
// clear and uncompressed) into a journal point.
func toJournal(p *wire.Point) (*journal.Point, error) {
	ext, err := wire.DecodePoint(p, wire.PointOptions{})
	if err != nil {
		return nil, err
	}
	jp := &journal.Point{ID: p.ID, Time: time.Unix(0, p.Time).UTC(), Kind: journal.Kind(p.Kind),
		Marker: journal.Marker(p.Marker), Extents: make([]journal.Extent, 0, len(ext))}
	for _, e := range ext {
		if e.Len == 0 {
			continue // nothing to apply
		}
		jp.Extents = append(jp.Extents, journal.Extent{Disk: e.Disk, Off: e.Off, Op: journal.Op(e.Op), Len: e.Len, Data: e.Data})
	}
	return jp, nil
}

func (s *Service) handlePoint(ss *session, jp *journal.Point, msg *wire.Point, raw int64) error {
	if ss.pending != nil {
		if err := s.retryPending(ss); err != nil {
			return err
		}
		if ss.pending != nil {
			// Still failing: this point cannot be kept in order behind it.
			ss.stalled = true
			return nil
		}
	}
	if ss.stalled && ss.pending == nil {
		// the pending point is in; the ones refused behind it come back
		// from the durable position once the proxy reconnects
		return fmt.Errorf("point %d: points after an earlier refused one are missing; dropping the session so they are resent", jp.ID)
	}
	if ss.stalled {
		return ss.conn.Send(&wire.Error{Code: wire.ErrCodeNoSpace, Msg: fmt.Sprintf("point %d not accepted: an earlier point is missing; reconnect to resend", jp.ID)})
	}
	return s.appendPoint(ss, jp, msg, raw)
}

func (s *Service) retryPending(ss *session) error {
	p, msg := ss.pending, ss.pendingMsg
	ss.pending, ss.pendingMsg = nil, nil
	return s.appendPoint(ss, p, msg, 0)
}

// appendPoint makes jp durable, then acknowledges it. A full datastore
// keeps the connection and the point (no ack); anything else invalid
// drops the connection.
func (s *Service) appendPoint(ss *session, jp *journal.Point, msg *wire.Point, raw int64) error {
	start := time.Now()
	err := ss.vm.Append(s.ctx, jp)
	return s.appendResult(ss, jp, msg, raw, err, start)
}

// appendResult acknowledges a durable point or handles its failure. The
// frame of a durable point goes back for the next ones; a point that
// failed keeps its frame (never releasing is safe).
func (s *Service) appendResult(ss *session, jp *journal.Point, msg *wire.Point, raw int64, err error, start time.Time) error {
	switch {
	case err == nil:
		jp.Extents = nil
		wire.Release(msg)
		s.m.appendSeconds.Observe(time.Since(start).Seconds())
		s.m.points.Inc()
		s.m.bytes.Add(float64(raw))
		if err := ss.conn.Send(&wire.PointAck{ID: jp.ID}); err != nil {
			return fmt.Errorf("ack point %d: %w", jp.ID, err)
		}
		return nil
	case errors.Is(err, syscall.ENOSPC):
		s.m.appendErrors.WithLabelValues("no_space").Inc()
		ss.log.Error("target datastore full, point not acknowledged", "point", jp.ID, "err", err)
		ss.pending, ss.pendingMsg = jp, msg
		return ss.conn.Send(&wire.Error{Code: wire.ErrCodeNoSpace, Msg: fmt.Sprintf("point %d: %v", jp.ID, err)})
	case errors.Is(err, model.ErrInvalid):
		s.m.rejected.WithLabelValues("invalid_point").Inc()
		ss.log.Warn("frame rejected, dropping connection", "reason", "invalid_point", "point", jp.ID, "err", err)
		_ = ss.conn.Send(&wire.Error{Code: wire.ErrCodeBadRequest, Msg: err.Error()})
		return fmt.Errorf("point %d: %w", jp.ID, err)
	default:
		s.m.appendErrors.WithLabelValues("other").Inc()
		_ = ss.conn.Send(&wire.Error{Code: wire.ErrCodeInternal, Msg: err.Error()})
		return fmt.Errorf("append point %d: %w", jp.ID, err)
	}
}
