package journal

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Store is a journal directory holding every VM replicated to this target.
// One committer goroutine writes the records of all VMs and fsyncs each
// touched segment once per batch.
type Store struct {
	dir  string
	opts Options
	log  *slog.Logger

	mu  sync.Mutex
	vms map[string]*VM

	reqs   chan *appendReq
	quit   chan struct{}
	done   chan struct{}
	closed atomic.Bool

	used   atomic.Int64 // bytes of segment and delta files, for MaxBytes
	fsyncs atomic.Int64 // segment fsyncs, observed by tests
	stage  []byte       // the committer's staging buffer for direct writes
	lock   *os.File     // holds the directory's lock (lockDir)
	// noDirect: a direct write was refused; appends use the page cache
	// (committer only)
	noDirect bool
	appends  atomic.Int64 // records committed
	batches  atomic.Int64 // committer batches
	written  atomic.Int64 // record bytes committed
	max      atomic.Int64

	bufs sync.Pool // *[]byte record buffers

	// syncErr, when set (tests only), is called before each segment fsync
	// and a non-nil result stands for a failed fsync.
	syncErr func() error

	segDir  string
	segMu   sync.Mutex
	segs    []*segment
	active  *segment
	nextSeq uint64
}

type appendReq struct {
	vm *VM
	id uint64
	// vec is the encoded record in pieces written back to back (see
	// recordVec), size their total length
	vec  [][]byte
	size int64
	err  chan error
	// set by the committer
	seg *segment
	off int64
	// published: an asynchronous append whose record the committer
	// publishes in the VM's index itself, in commit order
	p    *Point
	done chan struct{}
	res  error
}

// Open opens (or creates) a store directory, reopens every VM in it,
// rebuilds their indexes from the segments and cuts torn tails.
func Open(dir string, opts Options) (*Store, error) {
	if opts.SegmentBytes <= 0 {
		opts.SegmentBytes = defaultSegmentBytes
	}
	if opts.CommitBytes <= 0 {
		opts.CommitBytes = defaultCommitBytes
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("open journal %s: %w", dir, err)
	}
	s := &Store{
		dir:  dir,
		opts: opts,
		log:  opts.Logger.With("component", "journal"),
		vms:  map[string]*VM{},
		reqs: make(chan *appendReq, 256),
		quit: make(chan struct{}),
		done: make(chan struct{}),

		segDir:  filepath.Join(dir, "journal"),
		nextSeq: 1,
	}
	if err := os.MkdirAll(s.segDir, 0o755); err != nil {
		return nil, fmt.Errorf("open journal %s: %w", dir, err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, fmt.Errorf("open journal: %w", err)
	}
	s.lock = lock
	s.max.Store(opts.MaxBytes)
	ents, err := os.ReadDir(dir)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("open journal %s: %w", dir, err)
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		vdir := filepath.Join(dir, e.Name())
		if strings.HasPrefix(e.Name(), removingPrefix) {
			// a RemoveVM that did not finish: the VM is gone already
			if err := os.RemoveAll(vdir); err != nil {
				s.log.Warn("remove the rest of a removed vm", "dir", vdir, "err", err.Error())
			}
			continue
		}
		if _, err := os.Stat(filepath.Join(vdir, manifestName)); errors.Is(err, os.ErrNotExist) {
			continue
		}
		v, err := loadVM(s, vdir)
		if err != nil {
			s.closeVMs()
			lock.Close()
			return nil, fmt.Errorf("open journal %s: %w", dir, err)
		}
		s.vms[v.name] = v
	}
	if err := s.loadSegments(); err != nil {
		s.closeVMs()
		lock.Close()
		return nil, fmt.Errorf("open journal %s: %w", dir, err)
	}
	go s.committer()
	return s, nil
}

// SetMaxBytes changes the MaxBytes limit (0: none), e.g. once an operator
// has freed space.
func (s *Store) SetMaxBytes(n int64) { s.max.Store(n) }

// UsedBytes is the size of the store's segment and delta files.
func (s *Store) UsedBytes() int64 { return s.used.Load() }

// Stats are cumulative counters of a store, for metrics.
type Stats struct {
	Appends      int64 // records made durable
	Batches      int64 // group commits
	Fsyncs       int64 // segment fsyncs
	BytesWritten int64 // record bytes made durable
	UsedBytes    int64 // segment and delta files now
}

// Stats returns the store's counters.
func (s *Store) Stats() Stats {
	return Stats{
		Appends:      s.appends.Load(),
		Batches:      s.batches.Load(),
		Fsyncs:       s.fsyncs.Load(),
		BytesWritten: s.written.Load(),
		UsedBytes:    s.used.Load(),
	}
}

// reserve accounts for n more bytes of files, failing like a full disk when
// MaxBytes would be exceeded.
func (s *Store) reserve(n int64) error {
	max := s.max.Load()
	if max > 0 && s.used.Load()+n > max {
		return fmt.Errorf("allocate %d bytes (%d of %d used): %w", n, s.used.Load(), max, syscall.ENOSPC)
	}
	s.used.Add(n)
	return nil
}

func (s *Store) release(n int64) { s.used.Add(-n) }

// Close stops the committer and closes every file. Appends in flight fail
// with ErrClosed.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	close(s.quit)
	<-s.done
	err := s.closeVMs()
	s.lock.Close()
	return err
}

func (s *Store) closeVMs() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	closeSegs(s.segs)
	var first error
	for _, v := range s.vms {
		if err := v.close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// VM returns an open VM.
func (s *Store) VM(vm string) (*VM, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.vms[vm]
	return v, ok
}

// VMs lists the VMs of the store, sorted.
func (s *Store) VMs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.vms))
	for n := range s.vms {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func (s *Store) getBuf(n int64) []byte {
	if p, ok := s.bufs.Get().(*[]byte); ok && int64(cap(*p)) >= n {
		return (*p)[:0]
	}
	return make([]byte, 0, n)
}

func (s *Store) putBuf(b []byte) {
	// Huge buffers (initial-sync points) are not kept: memory stays bounded.
	if cap(b) <= 16<<20 {
		s.bufs.Put(&b)
	}
}

// submit hands an encoded record to the committer and waits until it is
// durable (or failed).
func (s *Store) submit(r *appendReq) error {
	if s.closed.Load() {
		return ErrClosed
	}
	r.err = make(chan error, 1)
	select {
	case s.reqs <- r:
	case <-s.quit:
		return ErrClosed
	}
	select {
	case err := <-r.err:
		return err
	case <-s.done:
		// The committer answers everything it took before it stops.
		select {
		case err := <-r.err:
			return err
		default:
			return ErrClosed
		}
	}
}

// committer is the single writer of every segment: it takes a batch of
// appends (all VMs), writes them, fsyncs each touched segment once, and
// only then releases the waiters.
func (s *Store) committer() {
	defer close(s.done)
	var batch []*appendReq
	for {
		batch = batch[:0]
		select {
		case r := <-s.reqs:
			batch = append(batch, r)
		case <-s.quit:
			s.failPending()
			return
		}
		bytes := batch[0].size
		if w := s.opts.CommitWindow; w > 0 {
			t := time.NewTimer(w)
		window:
			for bytes < s.opts.CommitBytes {
				select {
				case r := <-s.reqs:
					batch = append(batch, r)
					bytes += r.size
				case <-t.C:
					break window
				}
			}
			t.Stop()
		}
	drain:
		for bytes < s.opts.CommitBytes {
			select {
			case r := <-s.reqs:
				batch = append(batch, r)
				bytes += r.size
			default:
				break drain
			}
		}
		s.commit(batch)
	}
}

func (s *Store) failPending() {
	for {
		select {
		case r := <-s.reqs:
			if r.done != nil {
				r.vm.finishAsync(r, ErrClosed)
				continue
			}
			r.err <- ErrClosed
		default:
			return
		}
	}
}

func (s *Store) commit(batch []*appendReq) {
	errs := make([]error, len(batch))
	var touched []*segment
	for i, r := range batch {
		// a VM whose earlier record failed gets nothing newer written: a
		// later point must never be durable without the one before it
		if err := r.vm.poisoned(); err != nil {
			errs[i] = err
			continue
		}
		seg, off, err := s.writeRecord(r.vm.name, r.vm.since, r.id, r.vec, r.size)
		if err != nil {
			errs[i] = err
			r.vm.poison(err)
			continue
		}
		r.seg, r.off = seg, off
		if len(touched) == 0 || !containsSeg(touched, seg) {
			touched = append(touched, seg)
		}
	}
	failed := map[*segment]error{}
	var syncErr error
	for _, seg := range touched {
		if err := s.syncSeg(seg); err != nil {
			syncErr = fmt.Errorf("fsync segment %s: %w", seg.path, err)
			break
		}
	}
	if syncErr != nil {
		// After a failed fsync the file's state is unknown: zero every
		// record of this batch (best effort; a VM's later record may sit in
		// another segment) and start a new segment.
		for _, seg := range touched {
			failed[seg] = syncErr
			s.abandon(seg, batch)
		}
		for _, r := range batch {
			r.vm.poison(syncErr)
		}
	}
	s.batches.Add(1)
	for i, r := range batch {
		if errs[i] == nil && r.seg != nil {
			if err, ok := failed[r.seg]; ok {
				errs[i] = err
			}
		}
		if errs[i] == nil {
			s.appends.Add(1)
			s.written.Add(r.size)
		}
		if r.done != nil {
			r.vm.finishAsync(r, errs[i])
			continue
		}
		r.err <- errs[i]
	}
}

// abandon zeroes the records of batch in seg and makes the next append
// start a new segment.
func (s *Store) abandon(seg *segment, batch []*appendReq) {
	for _, r := range batch {
		if r.seg == seg {
			_ = writeZeroes(seg.f, r.off, r.size)
		}
	}
	s.segMu.Lock()
	seg.abandoned = true
	seg.tail = seg.size
	s.segMu.Unlock()
	s.log.Error("journal segment abandoned after a failed fsync", "segment", seg.path)
}

func containsSeg(l []*segment, s *segment) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func (s *Store) syncSeg(seg *segment) error {
	if s.opts.NoSync {
		return nil
	}
	s.fsyncs.Add(1)
	if s.syncErr != nil {
		if err := s.syncErr(); err != nil {
			return err
		}
	}
	return seg.f.Sync()
}

// syncFile fsyncs f unless the store runs without syncing.
func (s *Store) syncFile(f *os.File) error {
	if s.opts.NoSync {
		return nil
	}
	return f.Sync()
}

// syncDir makes renames and creations in dir durable.
func (s *Store) syncDir(dir string) error {
	if s.opts.NoSync {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
