package nbd

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Export is one named disk served by a Server.
type Export struct {
	Name        string
	Description string
	Backend     Backend
	ReadOnly    bool
}

// Errors of export management.
var (
	ErrDuplicateExport = errors.New("export already exists")
	ErrUnknownExport   = errors.New("no such export")
	ErrServerClosed    = errors.New("nbd server closed")
)

// Option configures a Server.
type Option func(*Server)

// WithRegisterer registers the server's metrics on r.
func WithRegisterer(r prometheus.Registerer) Option {
	return func(s *Server) { s.registerer = r }
}

// WithInFlight bounds the requests and payload bytes handled at once on one
// connection; the reader stops taking requests off the socket beyond that.
func WithInFlight(requests int, bytes int64) Option {
	return func(s *Server) {
		if requests > 0 {
			s.maxReqs = requests
		}
		if bytes > 0 {
			s.maxBytes = bytes
		}
	}
}

// WithHandshakeTimeout bounds how long a client may take to negotiate.
func WithHandshakeTimeout(d time.Duration) Option {
	return func(s *Server) {
		if d > 0 {
			s.handshakeTimeout = d
		}
	}
}

// Server serves exports to NBD clients.
type Server struct {
	log              *slog.Logger
	m                *metrics
	registerer       prometheus.Registerer
	maxReqs          int
	maxBytes         int64
	handshakeTimeout time.Duration

	mu        sync.Mutex
	exports   map[string]*export
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	closed    bool
	wg        sync.WaitGroup
}

type export struct {
	Export
	conns map[*conn]struct{}
}

// NewServer returns a server with no exports.
func NewServer(log *slog.Logger, opts ...Option) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		log:              log,
		m:                newMetrics(),
		maxReqs:          16,
		maxBytes:         64 << 20,
		handshakeTimeout: 30 * time.Second,
		exports:          make(map[string]*export),
		listeners:        make(map[net.Listener]struct{}),
		conns:            make(map[*conn]struct{}),
	}
	for _, o := range opts {
		o(s)
	}
	if s.registerer != nil {
		for _, c := range s.m.collectors() {
			if err := s.registerer.Register(c); err != nil {
				s.log.Warn("register nbd metrics", "err", err)
			}
		}
	}
	return s
}

// Collectors returns the server's metrics for registration elsewhere.
func (s *Server) Collectors() []prometheus.Collector { return s.m.collectors() }

// URI is the NBD URI of an export served at addr (host:port).
func URI(addr, export string) string {
	return "nbd://" + addr + "/" + url.PathEscape(export)
}

// AddExport makes e available to clients.
func (s *Server) AddExport(e Export) error {
	switch {
	case len(e.Name) > maxString:
		return fmt.Errorf("add nbd export: name of %d bytes, the limit is %d", len(e.Name), maxString)
	case len(e.Description) > maxString:
		return fmt.Errorf("add nbd export %q: description of %d bytes, the limit is %d", e.Name, len(e.Description), maxString)
	case e.Backend == nil:
		return fmt.Errorf("add nbd export %q: no backend", e.Name)
	case e.Backend.Size() < 0:
		return fmt.Errorf("add nbd export %q: negative size %d", e.Name, e.Backend.Size())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("add nbd export %q: %w", e.Name, ErrServerClosed)
	}
	if _, ok := s.exports[e.Name]; ok {
		return fmt.Errorf("add nbd export %q: %w", e.Name, ErrDuplicateExport)
	}
	s.exports[e.Name] = &export{Export: e, conns: make(map[*conn]struct{})}
	return nil
}

// RemoveExport withdraws an export and closes its connections; it returns
// once none of them can touch the backend any more.
func (s *Server) RemoveExport(name string) error {
	s.mu.Lock()
	ex, ok := s.exports[name]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("remove nbd export %q: %w", name, ErrUnknownExport)
	}
	delete(s.exports, name)
	conns := make([]*conn, 0, len(ex.conns))
	for c := range ex.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.nc.Close()
	}
	for _, c := range conns {
		<-c.done
	}
	return nil
}

// Exports lists the export names, sorted.
func (s *Server) Exports() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.exports))
	for n := range s.exports {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Serve accepts connections on l until l or the server is closed (then it
// returns nil; a server closed before Serve closes l at once) or Accept
// fails.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return nil
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	for {
		nc, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("accept nbd connections on %s: %w", l.Addr(), err)
		}
		c, ok := s.track(nc)
		if !ok {
			nc.Close()
			return nil
		}
		go c.serve()
	}
}

// track registers a new connection unless the server is closed.
func (s *Server) track(nc net.Conn) (*conn, bool) {
	c := &conn{s: s, nc: nc, done: make(chan struct{}), log: s.log.With("remote", nc.RemoteAddr().String())}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return c, true
}

// Close stops every listener and connection and waits for them.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.nc.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// conn is one client connection.
type conn struct {
	s    *Server
	nc   net.Conn
	r    *bufio.Reader
	w    *bufio.Writer // handshake only
	log  *slog.Logger
	done chan struct{}
	ex   *export
}

// reply is one simple reply on its way to the connection's writer, with the
// pooled buffer and in-flight budget it frees once sent.
type reply struct {
	hdr    [simpleHdrLen]byte
	data   []byte
	buf    *[]byte
	weight int64
}

// errAbort ends a connection the client asked to end during negotiation.
var errAbort = errors.New("client aborted negotiation")

func (c *conn) serve() {
	s := c.s
	s.m.conns.Inc()
	defer func() {
		c.nc.Close()
		s.mu.Lock()
		delete(s.conns, c)
		if c.ex != nil {
			delete(c.ex.conns, c)
		}
		s.mu.Unlock()
		s.m.conns.Dec()
		close(c.done)
		s.wg.Done()
	}()
	c.r = bufio.NewReaderSize(c.nc, 64<<10)
	c.w = bufio.NewWriterSize(c.nc, 4<<10)
	ex, err := c.handshake()
	if err != nil {
		if errors.Is(err, errAbort) || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
			c.log.Debug("nbd negotiation ended", "err", err)
		} else {
			c.log.Warn("nbd negotiation failed", "err", err)
		}
		return
	}
	c.w = nil
	c.log = c.log.With("export", ex.Name)
	c.log.Debug("nbd transmission started")
	c.transmit(ex)
}

// transmissionFlags are the flags advertised for an export.
func transmissionFlags(e *export) uint16 {
	f := uint16(tfHasFlags | tfSendFlush | tfSendFUA | tfCanMultiConn)
	if e.ReadOnly {
		f |= tfReadOnly
	} else {
		f |= tfSendTrim | tfSendWriteZeroes
	}
	return f
}

func (c *conn) handshake() (*export, error) {
	if err := c.nc.SetDeadline(time.Now().Add(c.s.handshakeTimeout)); err != nil {
		return nil, fmt.Errorf("set handshake deadline: %w", err)
	}
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:], nbdMagic)
	binary.BigEndian.PutUint64(hello[8:], optMagic)
	binary.BigEndian.PutUint16(hello[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := c.w.Write(hello[:]); err != nil {
		return nil, fmt.Errorf("send greeting: %w", err)
	}
	if err := c.w.Flush(); err != nil {
		return nil, fmt.Errorf("send greeting: %w", err)
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.r, cf[:]); err != nil {
		return nil, fmt.Errorf("read client flags: %w", err)
	}
	clientFlags := binary.BigEndian.Uint32(cf[:])
	if clientFlags&^(flagCFixedNewstyle|flagCNoZeroes) != 0 {
		return nil, fmt.Errorf("unknown client flags %#x", clientFlags)
	}
	noZeroes := clientFlags&flagCNoZeroes != 0

	var hdr [16]byte
	// A bounded number of options keeps a chatty client from holding a
	// connection forever within the deadline's reach.
	for range 1024 {
		if _, err := io.ReadFull(c.r, hdr[:]); err != nil {
			return nil, fmt.Errorf("read option: %w", err)
		}
		oh, err := parseOptionHeader(hdr[:])
		if err != nil {
			c.s.m.protocolErrs.Inc()
			return nil, err
		}
		if oh.length > maxOption {
			if oh.length > maxOptionDiscard || oh.opt == optExportName {
				c.s.m.protocolErrs.Inc()
				return nil, fmt.Errorf("option %d of %d bytes is too large", oh.opt, oh.length)
			}
			if _, err := io.CopyN(io.Discard, c.r, int64(oh.length)); err != nil {
				return nil, fmt.Errorf("skip option %d: %w", oh.opt, err)
			}
			if err := c.optReply(oh.opt, repErrTooBig, []byte("option too large")); err != nil {
				return nil, err
			}
			continue
		}
		data := make([]byte, oh.length)
		if _, err := io.ReadFull(c.r, data); err != nil {
			return nil, fmt.Errorf("read option %d payload: %w", oh.opt, err)
		}
		ex, err := c.option(oh.opt, data, noZeroes)
		if err != nil || ex != nil {
			return ex, err
		}
	}
	c.s.m.protocolErrs.Inc()
	return nil, errors.New("too many options")
}

// option answers one option; a non-nil export means transmission starts.
func (c *conn) option(opt uint32, data []byte, noZeroes bool) (*export, error) {
	switch opt {
	case optExportName:
		ex, err := c.attach(string(data))
		if err != nil {
			// The specification leaves no way to refuse but closing.
			return nil, fmt.Errorf("export name: %w", err)
		}
		var b [10 + 124]byte
		binary.BigEndian.PutUint64(b[0:], uint64(ex.Backend.Size()))
		binary.BigEndian.PutUint16(b[8:], transmissionFlags(ex))
		n := len(b)
		if noZeroes {
			n = 10
		}
		if _, err := c.w.Write(b[:n]); err != nil {
			return nil, fmt.Errorf("send export info: %w", err)
		}
		if err := c.w.Flush(); err != nil {
			return nil, fmt.Errorf("send export info: %w", err)
		}
		return ex, nil
	case optAbort:
		_ = c.optReply(opt, repAck, nil) // the client may already be gone
		return nil, errAbort
	case optList:
		if len(data) != 0 {
			return nil, c.optReply(opt, repErrInvalid, []byte("list takes no data"))
		}
		c.s.mu.Lock()
		list := make([]*export, 0, len(c.s.exports))
		for _, e := range c.s.exports {
			list = append(list, e)
		}
		c.s.mu.Unlock()
		sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
		for _, e := range list {
			p := make([]byte, 4, 4+len(e.Name)+len(e.Description))
			binary.BigEndian.PutUint32(p, uint32(len(e.Name)))
			p = append(p, e.Name...)
			p = append(p, e.Description...)
			if err := c.optReply(opt, repServer, p); err != nil {
				return nil, err
			}
		}
		return nil, c.optReply(opt, repAck, nil)
	case optInfo, optGo:
		req, err := parseInfoRequest(data)
		if err != nil {
			return nil, c.optReply(opt, repErrInvalid, []byte(err.Error()))
		}
		var ex *export
		if opt == optGo {
			ex, err = c.attach(req.name)
		} else {
			ex, err = c.lookup(req.name)
		}
		if err != nil {
			return nil, c.optReply(opt, repErrUnknown, []byte(err.Error()))
		}
		if err := c.sendInfo(opt, ex, req.infos); err != nil {
			return nil, err
		}
		if opt == optGo {
			return ex, nil
		}
		return nil, nil
	default:
		// Structured replies, meta contexts, extended headers, TLS and
		// anything newer are not offered.
		return nil, c.optReply(opt, repErrUnsup, nil)
	}
}

func (c *conn) sendInfo(opt uint32, ex *export, infos []uint16) error {
	var b [12]byte
	binary.BigEndian.PutUint16(b[0:], infoExport)
	binary.BigEndian.PutUint64(b[2:], uint64(ex.Backend.Size()))
	binary.BigEndian.PutUint16(b[10:], transmissionFlags(ex))
	if err := c.optReply(opt, repInfo, b[:12]); err != nil {
		return err
	}
	sent := map[uint16]bool{}
	for _, t := range infos {
		if sent[t] {
			continue
		}
		sent[t] = true
		var p []byte
		switch t {
		case infoName:
			p = binary.BigEndian.AppendUint16(nil, infoName)
			p = append(p, ex.Name...)
		case infoDescription:
			p = binary.BigEndian.AppendUint16(nil, infoDescription)
			p = append(p, ex.Description...)
		case infoBlockSize:
			p = binary.BigEndian.AppendUint16(nil, infoBlockSize)
			p = binary.BigEndian.AppendUint32(p, 1)
			p = binary.BigEndian.AppendUint32(p, 4096)
			p = binary.BigEndian.AppendUint32(p, MaxRequest)
		default:
			continue // unknown requests are ignored, as the specification asks
		}
		if err := c.optReply(opt, repInfo, p); err != nil {
			return err
		}
	}
	if err := c.optReply(opt, repAck, nil); err != nil {
		return err
	}
	return nil
}

func (c *conn) optReply(opt, typ uint32, data []byte) error {
	var h [20]byte
	binary.BigEndian.PutUint64(h[0:], repMagic)
	binary.BigEndian.PutUint32(h[8:], opt)
	binary.BigEndian.PutUint32(h[12:], typ)
	binary.BigEndian.PutUint32(h[16:], uint32(len(data)))
	c.w.Write(h[:])
	c.w.Write(data)
	if err := c.w.Flush(); err != nil {
		return fmt.Errorf("reply to option %d: %w", opt, err)
	}
	return nil
}

func (c *conn) lookup(name string) (*export, error) {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	return c.s.find(name)
}

// find resolves an export name; the empty name is the default export, which
// exists when exactly one export is served. s.mu is held.
func (s *Server) find(name string) (*export, error) {
	if ex, ok := s.exports[name]; ok {
		return ex, nil
	}
	if name == "" && len(s.exports) == 1 {
		for _, ex := range s.exports {
			return ex, nil
		}
	}
	return nil, fmt.Errorf("export %q: %w", name, ErrUnknownExport)
}

// attach binds the connection to an export so that RemoveExport can close it.
func (c *conn) attach(name string) (*export, error) {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	ex, err := c.s.find(name)
	if err != nil {
		return nil, err
	}
	ex.conns[c] = struct{}{}
	c.ex = ex
	return ex, nil
}

func (c *conn) transmit(ex *export) {
	if err := c.nc.SetDeadline(time.Time{}); err != nil {
		c.log.Warn("clear nbd deadline", "err", err)
		return
	}
	bud := newBudget(c.s.maxBytes, c.s.maxReqs)
	// One writer owns the socket's write side, so replies are serialized and
	// those that complete together share one system call.
	replies := make(chan reply, c.s.maxReqs)
	writerDone := make(chan struct{})
	go c.writeReplies(replies, bud, writerDone)
	var wg sync.WaitGroup
	defer func() {
		wg.Wait()
		close(replies)
		<-writerDone
	}()
	var hdr [requestHdrLen]byte
	for {
		if _, err := io.ReadFull(c.r, hdr[:]); err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				c.log.Debug("nbd connection ended", "err", err)
			}
			return
		}
		req, err := parseRequest(hdr[:])
		if err != nil {
			c.s.m.protocolErrs.Inc()
			c.log.Warn("closing nbd connection", "err", err)
			c.nc.Close()
			return
		}
		c.s.m.requests.WithLabelValues(cmdName(req.typ)).Inc()
		var payload *[]byte
		var owned bool // payload is the backend's (OwningBackend)
		var weight int64
		switch req.typ {
		case cmdDisc:
			// Replies to earlier requests go out before the close (the
			// deferred function waits for them).
			c.log.Debug("nbd client disconnected")
			return
		case cmdWrite:
			if req.length > MaxRequest {
				// Skipping the payload would mean reading up to 4 GiB we
				// will not use: the stream is treated as unframeable.
				c.s.m.protocolErrs.Inc()
				c.log.Warn("closing nbd connection: write larger than the maximum", "length", req.length, "max", MaxRequest)
				c.nc.Close()
				return
			}
			weight = int64(req.length)
			bud.acquire(weight)
			if ob, ok := ex.Backend.(OwningBackend); ok {
				b := ob.WriteBuffer(int(req.length))
				payload, owned = &b, true
			} else {
				payload = getBuf(int(req.length))
			}
			if _, err := io.ReadFull(c.r, *payload); err != nil {
				if !owned {
					putBuf(payload)
				}
				bud.release(weight)
				c.log.Debug("nbd connection ended in a write payload", "err", err)
				return
			}
		case cmdRead:
			if req.length <= MaxRequest {
				weight = int64(req.length)
			}
			bud.acquire(weight)
		default:
			bud.acquire(0)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var p []byte
			if payload != nil {
				p = *payload
			}
			r := c.handle(ex, req, p, owned)
			if !owned {
				putBuf(payload)
			}
			r.weight = weight
			replies <- r
		}()
	}
}

// writeReplies sends replies until the channel closes, flushing whenever
// no other reply is waiting. After a write error it closes the connection
// (which ends the reader) and only frees what still arrives.
func (c *conn) writeReplies(replies <-chan reply, bud *budget, done chan<- struct{}) {
	defer close(done)
	w := bufio.NewWriterSize(c.nc, 256<<10)
	var failed error
	for r := range replies {
		if failed == nil {
			_, failed = w.Write(r.hdr[:])
			if failed == nil && len(r.data) > 0 {
				_, failed = w.Write(r.data)
			}
			if failed == nil && len(replies) == 0 {
				failed = w.Flush()
			}
			if failed != nil {
				c.log.Debug("send nbd reply", "err", failed)
				c.nc.Close()
			}
		}
		putBuf(r.buf)
		bud.release(r.weight)
	}
	if failed == nil {
		if err := w.Flush(); err != nil {
			c.log.Debug("send nbd reply", "err", err)
		}
	}
}

// handle runs one request against the backend and builds its reply.
func (c *conn) handle(ex *export, req request, payload []byte, owned bool) reply {
	op := cmdName(req.typ)
	code, data, buf := c.execute(ex, req, payload, owned)
	if code != 0 {
		c.s.m.errors.WithLabelValues(op).Inc()
		data = nil
	}
	r := reply{data: data, buf: buf}
	binary.BigEndian.PutUint32(r.hdr[0:], simpleMagic)
	binary.BigEndian.PutUint32(r.hdr[4:], code)
	binary.BigEndian.PutUint64(r.hdr[8:], req.cookie)
	return r
}

// execute returns the NBD error code and, for reads, the data (and the
// pooled buffer holding it). With owned, a write's payload came from the
// backend's WriteBuffer and goes to its WriteOwned.
func (c *conn) execute(ex *export, req request, payload []byte, owned bool) (uint32, []byte, *[]byte) {
	if req.flags&^cmdFlagsKnown != 0 {
		return errInval, nil, nil
	}
	fua := req.flags&cmdFlagFUA != 0
	size := uint64(ex.Backend.Size())
	inRange := req.off <= size && uint64(req.length) <= size-req.off
	off, length := int64(req.off), int64(req.length)
	be := ex.Backend
	switch req.typ {
	case cmdRead:
		if req.length > MaxRequest {
			return errInval, nil, nil
		}
		if !inRange {
			return errInval, nil, nil
		}
		buf := getBuf(int(req.length))
		n, err := be.ReadAt(*buf, off)
		if err != nil && !(errors.Is(err, io.EOF) && n == len(*buf)) {
			putBuf(buf)
			c.log.Warn("nbd read failed", "off", off, "length", length, "err", err)
			return errorCode(err), nil, nil
		}
		if n != len(*buf) {
			putBuf(buf)
			c.log.Warn("nbd short read", "off", off, "length", length, "read", n)
			return errIO, nil, nil
		}
		c.s.m.bytesRead.Add(float64(n))
		return 0, *buf, buf
	case cmdWrite:
		if ex.ReadOnly {
			return errPerm, nil, nil
		}
		if !inRange {
			return errInval, nil, nil
		}
		var err error
		if ob, ok := be.(OwningBackend); ok && owned {
			err = ob.WriteOwned(payload, off, fua) // payload is not ours any more
		} else {
			err = be.WriteAt(payload, off, fua)
		}
		if err != nil {
			return c.failed("write", off, length, err), nil, nil
		}
		c.s.m.bytesWritten.Add(float64(length))
		return 0, nil, nil
	case cmdFlush:
		if err := be.Flush(); err != nil {
			return c.failed("flush", off, length, err), nil, nil
		}
		return 0, nil, nil
	case cmdTrim:
		if ex.ReadOnly {
			return errPerm, nil, nil
		}
		if !inRange {
			return errInval, nil, nil
		}
		if err := be.Trim(off, length); err != nil {
			return c.failed("trim", off, length, err), nil, nil
		}
		if fua {
			if err := be.Flush(); err != nil {
				return c.failed("trim", off, length, err), nil, nil
			}
		}
		return 0, nil, nil
	case cmdWriteZeroes:
		if ex.ReadOnly {
			return errPerm, nil, nil
		}
		if !inRange {
			return errInval, nil, nil
		}
		// NO_HOLE only asks for allocation; the backend decides, and the
		// range reads back as zeroes either way.
		if err := be.WriteZeroes(off, length, fua); err != nil {
			return c.failed("write zeroes", off, length, err), nil, nil
		}
		return 0, nil, nil
	}
	return errInval, nil, nil
}

func (c *conn) failed(op string, off, length int64, err error) uint32 {
	code := errorCode(err)
	c.log.Warn("nbd request failed", "op", op, "off", off, "length", length, "code", code, "err", err)
	return code
}
