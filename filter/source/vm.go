package source

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/wire"
)

// Mode is the replication mode of a VM's stream.
type Mode int

// Modes. Starting lasts until the first answer of the proxy tells whether
// the initial sync is done; meanwhile writes are only marked dirty.
const (
	ModeStarting Mode = iota
	ModeInitial
	ModeSyncing
	ModeCBT
	ModeResync
)

func (m Mode) String() string {
	switch m {
	case ModeStarting:
		return "starting"
	case ModeInitial:
		return "initial"
	case ModeSyncing:
		return "syncing"
	case ModeCBT:
		return "cbt"
	case ModeResync:
		return "resync"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Status is the user-facing status of the mode: a resync is still CBT mode
// until every dirty block has been sent.
func (m Mode) Status() model.VMStatus {
	switch m {
	case ModeStarting, ModeInitial:
		return model.StatusInitialSync
	case ModeSyncing:
		return model.StatusSyncing
	default:
		return model.StatusCBT
	}
}

// seqReserve is how far ahead the sequence is reserved on disk, so that a
// restarted filter never reuses a sequence number.
const seqReserve = 1 << 16

// entry is one buffered message, kept until the target acknowledges it.
type entry struct {
	seq  uint64
	msg  wire.Msg
	size int64
	at   time.Time
	// sending: a session's writeLoop is writing it (mu guards both);
	// acked while sending, its data goes back to the pool afterwards
	sending, ackedSending bool
}

// release hands an acknowledged entry's data back unless a writeLoop still
// writes it. Called with mu held.
func (e *entry) release() {
	if e.sending {
		e.ackedSending = true
		return
	}
	if w, ok := e.msg.(*wire.Write); ok && w.Data != nil {
		putData(w.Data)
		w.Data = nil
	}
}

const entryOverhead = 64

type vmState struct {
	name  string
	dir   string
	opts  *Options
	log   *slog.Logger
	lock  *os.File // the folder lock of an exclusive filter
	disks []*Disk  // guarded by mu once running; appended only

	// run stops the VM's stream; runWG waits for its goroutines
	cancel context.CancelFunc
	runWG  sync.WaitGroup

	mu       sync.Mutex
	cond     *sync.Cond
	seq      uint64 // last sequence handed out
	seqCeil  uint64 // reserved on disk
	seqPath  string
	buf      []*entry
	bufBytes int64
	sendPos  int // entries of buf already written on the current session
	acked    uint64
	mode     Mode
	reason   string
	// initDone: the target has (or our buffer holds) the InitialSyncDone marker.
	initDone      bool
	initMarkerSeq uint64
	session       *session
	scanWG        sync.WaitGroup
	downSince     time.Time
	scanGen       int
	scanning      bool
	cbtSince      time.Time
	closed        bool
	// proxy is the source proxy's address ("" : Options.Dial); gen counts
	// changes that need a new session (another proxy, another disk list),
	// so a session greeted with an older Hello is not used.
	proxy string
	gen   int
	// rescan: disks were added while running; the next session starts
	// the scan that syncs them. addedSync: the running resync is that
	// scan (reported as an initial sync).
	rescan    bool
	addedSync bool

	// statistics
	scanStart   time.Time
	scanBytes   int64
	scanTotal   int64
	sentBytes   int64
	cbtEntries  int64
	lastAckTime time.Time
	throttled   int64
	throttledT  time.Duration
}

type session struct {
	done  bool
	stale bool // superseded: send nothing more, the next session resends
	gen   int
	conn  *wire.Conn
}

func newVM(c VMConfig, opts *Options) (*vmState, error) {
	dir := filepath.Join(opts.Datastore, c.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create folder of vm %s: %w", c.Name, err)
	}
	v := &vmState{name: c.Name, dir: dir, opts: opts, log: opts.Logger.With("vm", c.Name),
		seqPath: filepath.Join(dir, "."+c.Name+".seq"), mode: ModeStarting,
		reason: "waiting for the source proxy", downSince: time.Now(), proxy: c.Proxy}
	v.cond = sync.NewCond(&v.mu)
	if opts.Exclusive {
		l, err := lockFolder(filepath.Join(dir, "."+c.Name+".lock"))
		if err != nil {
			return nil, fmt.Errorf("open vm %s: %w", c.Name, err)
		}
		v.lock = l
	}
	for i, dc := range c.Disks {
		d, err := openDisk(v, dir, i, dc, opts.BlockSize)
		if err != nil {
			v.close()
			return nil, err
		}
		v.disks = append(v.disks, d)
	}
	b, err := os.ReadFile(v.seqPath)
	switch {
	case err == nil && len(b) == 8:
		v.seq = binary.BigEndian.Uint64(b)
		v.seqCeil = v.seq
	case err == nil || os.IsNotExist(err):
	default:
		v.close()
		return nil, fmt.Errorf("read sequence of vm %s: %w", c.Name, err)
	}
	return v, nil
}

func (v *vmState) close() {
	for _, d := range v.disks {
		if err := d.close(); err != nil {
			v.log.Warn("close disk", "disk", d.key, "err", err)
		}
	}
	if v.lock != nil {
		v.lock.Close() // releases the flock
		v.lock = nil
	}
}

// lockFolder takes an exclusive, non-blocking flock on path.
func lockFolder(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open folder lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: its folder is in use by another filter (%s)", ErrInUse, path)
		}
		return nil, fmt.Errorf("lock folder: %w", err)
	}
	return f, nil
}

// ErrInUse: another filter still runs the VM (a vMotion not yet handed
// over); applying again later succeeds once it let go.
var ErrInUse = errors.New("vm in use")

func (v *vmState) disk(key int32) *Disk {
	for _, d := range v.disks {
		if d.key == key {
			return d
		}
	}
	return nil
}

// nextSeq hands out the next sequence number, reserving a range on disk
// first when the reservation is used up. Called with mu held.
func (v *vmState) nextSeq() (uint64, error) {
	if v.seq+1 > v.seqCeil {
		ceil := v.seq + seqReserve
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], ceil)
		if err := writeFileSync(v.seqPath, b[:]); err != nil {
			return 0, fmt.Errorf("reserve sequence numbers of vm %s: %w", v.name, err)
		}
		v.seqCeil = ceil
	}
	v.seq++
	return v.seq, nil
}

func writeFileSync(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// change applies one guest change: the block's dirty bit is on disk before
// the file changes, then the change is stamped and buffered. The caller
// holds the block lock of the range, so file order is sequence order.
// With owned, data is a buffer of newData's that the stream keeps (and
// frees) instead of a copy.
func (v *vmState) change(d *Disk, op uint8, off, length int64, data []byte, owned bool, apply func() error) error {
	v.mu.Lock()
	err := d.dirty.mark(off, length, seqUnsent)
	v.mu.Unlock()
	if err == nil {
		err = apply()
	}
	if err != nil {
		if owned {
			putData(data)
		}
		return err
	}
	// the copy for the stream is made before the VM's lock: other disks'
	// writes and the sender do not wait for a megabyte memmove
	var cp []byte
	switch {
	case op != wire.OpData:
	case owned:
		cp = data
	default:
		cp = getData(data)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.waitRoomLocked(entryOverhead + int64(len(data)))
	var flags uint8
	switch v.mode {
	case ModeStarting, ModeCBT:
		putData(cp)
		return nil // the bit stays "never sent": the resync or scan covers it
	case ModeInitial:
		flags = wire.FlagInitial
	case ModeResync:
		flags = wire.FlagResync
	}
	return v.stampCopyLocked(d, op, off, length, cp, flags, true)
}

// waitRoomLocked delays a guest change of size bytes while the buffer
// cannot take it, the mode streams writes and the proxy is connected, for
// at most BackpressureWait; then stampLocked decides as before (CBT mode
// if it still does not fit). The file already holds the change and its
// dirty bit is set: only the guest's acknowledgement waits.
func (v *vmState) waitRoomLocked(size int64) {
	wait := v.opts.BackpressureWait
	if wait <= 0 || size > v.opts.BufferBytes || !v.mustWaitLocked(size) {
		return
	}
	start := time.Now()
	deadline := start.Add(wait)
	// cond has no timeout: a timer wakes the waiters at the deadline
	t := time.AfterFunc(wait, func() {
		v.mu.Lock()
		v.cond.Broadcast()
		v.mu.Unlock()
	})
	defer t.Stop()
	for v.mustWaitLocked(size) && time.Now().Before(deadline) {
		v.cond.Wait()
	}
	v.throttled++
	v.throttledT += time.Since(start)
}

func (v *vmState) mustWaitLocked(size int64) bool {
	switch v.mode {
	case ModeInitial, ModeSyncing, ModeResync:
	default:
		return false
	}
	return !v.closed && v.session != nil && v.bufBytes+size > v.opts.BufferBytes
}

// stampLocked gives one change its sequence numbers and buffers it; a change
// that does not fit sends the VM to CBT mode. Large zero ranges are split
// to fit the wire's 32-bit length.
func (v *vmState) stampLocked(d *Disk, op uint8, off, length int64, data []byte, flags uint8, guest bool) error {
	var cp []byte
	if op == wire.OpData {
		cp = getData(data)
	}
	return v.stampCopyLocked(d, op, off, length, cp, flags, guest)
}

// stampCopyLocked is stampLocked with the data already copied (from
// getData); the copy is the entry's from now on, or handed back.
func (v *vmState) stampCopyLocked(d *Disk, op uint8, off, length int64, data []byte, flags uint8, guest bool) error {
	const maxZero = 1 << 30
	for length > 0 {
		n := length
		if op != wire.OpData && n > maxZero {
			n = maxZero
		}
		size := entryOverhead + int64(len(data))
		if v.bufBytes+size > v.opts.BufferBytes {
			putData(data)
			if guest {
				v.enterCBTLocked(fmt.Sprintf("buffer toward the proxy full (%d bytes)", v.opts.BufferBytes))
			}
			return nil
		}
		seq, err := v.nextSeq()
		if err != nil {
			putData(data)
			return err
		}
		w := &wire.Write{Seq: seq, Disk: d.key, Off: off, Op: op, Len: uint32(n), Flags: flags}
		if op == wire.OpData {
			w.Data = data
		}
		d.dirty.restamp(off, n, seq)
		if v.opts.OnStamp != nil {
			v.opts.OnStamp(Stamp{VM: v.name, Seq: seq, Disk: d.key, Off: off, Len: n, Op: op, Flags: flags, Data: w.Data})
		}
		v.appendLocked(&entry{seq: seq, msg: w, size: size, at: time.Now()})
		off += n
		length -= n
	}
	return nil
}

func (v *vmState) appendLocked(e *entry) {
	v.buf = append(v.buf, e)
	v.bufBytes += e.size
	v.cond.Broadcast()
}

func (v *vmState) markerLocked(kind uint8) (uint64, error) {
	seq, err := v.nextSeq()
	if err != nil {
		return 0, err
	}
	v.appendLocked(&entry{seq: seq, msg: &wire.Marker{Seq: seq, Kind: kind}, size: entryOverhead, at: time.Now()})
	if v.opts.OnStamp != nil {
		v.opts.OnStamp(Stamp{VM: v.name, Seq: seq, Marker: kind})
	}
	return seq, nil
}

// enterCBTLocked drops the buffer: every block it held stays dirty and is
// re-read by the resync.
func (v *vmState) enterCBTLocked(reason string) {
	if v.mode == ModeCBT {
		return
	}
	v.log.Warn("entering CBT mode", "reason", reason, "buffered_bytes", v.bufBytes)
	v.mode = ModeCBT
	v.reason = reason
	v.cbtSince = time.Now()
	v.cbtEntries++
	v.addedSync = false
	v.buf = nil
	v.bufBytes = 0
	v.sendPos = 0
	for _, d := range v.disks {
		d.dirty.unsendAll()
	}
	if v.initMarkerSeq > v.acked || !v.initDone {
		// the initial sync is not known to be complete at the target: scan again
		v.initDone = false
		v.initMarkerSeq = 0
	}
	v.scanGen++
	v.cond.Broadcast()
}

// ackLocked frees everything up to seq: the target holds it durably.
func (v *vmState) ackLocked(seq uint64) {
	if seq <= v.acked {
		return
	}
	v.acked = seq
	v.lastAckTime = time.Now()
	k := 0
	for k < len(v.buf) && v.buf[k].seq <= seq {
		v.bufBytes -= v.buf[k].size
		v.buf[k].release()
		k++
	}
	for i := range k {
		v.buf[i] = nil
	}
	v.buf = v.buf[k:]
	v.sendPos = max(0, v.sendPos-k)
	for _, d := range v.disks {
		d.dirty.ack(seq)
	}
	if v.initMarkerSeq != 0 && v.initMarkerSeq <= seq {
		v.initDone = true
	}
	v.cond.Broadcast()
}

func (v *vmState) syncDirty(d *Disk) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return d.dirty.sync()
}

// connectedLocked is called when the proxy answered Hello: it drops what the
// target already has, rewinds the send position and decides what to do.
func (v *vmState) connectedLocked(ack *wire.HelloAck, s *session) error {
	if s.gen != v.gen {
		return errors.New("the session was greeted with an outdated hello")
	}
	if ack.Resume < v.acked {
		// The target (another proxy's path, or a target that lost its
		// tail) lacks writes this filter already freed: their blocks are
		// no longer known, so every block is resent.
		v.log.Warn("the target resumes below what it acknowledged: resending every block",
			"resume", ack.Resume, "acked", v.acked)
		if err := v.markAllLocked(); err != nil {
			return err
		}
		v.acked = ack.Resume
		v.rescan = true
	}
	v.session = s
	if ack.Resume > v.seq {
		v.seq = ack.Resume
		if v.seq > v.seqCeil {
			v.seqCeil = 0 // force a reservation above Resume
		}
	}
	if ack.Resume > 0 {
		v.ackLocked(ack.Resume)
	}
	v.sendPos = 0
	if ack.InitialSyncDone {
		v.initDone = true
	} else if v.initDone {
		// a target that no longer has the initial sync (a new replica)
		// gets it again
		v.initDone, v.initMarkerSeq = false, 0
		v.rescan = true
	}
	switch v.mode {
	case ModeStarting:
		if !v.initDone {
			v.startScanLocked(ModeInitial)
		} else if v.dirtyCount() > 0 {
			v.startScanLocked(ModeResync)
		} else {
			v.mode, v.reason = ModeSyncing, ""
		}
	case ModeCBT:
		if !v.initDone {
			v.startScanLocked(ModeInitial)
		} else {
			v.startScanLocked(ModeResync)
		}
	case ModeInitial:
		if !v.scanning || v.rescan {
			v.startScanLocked(ModeInitial)
		}
	case ModeSyncing, ModeResync:
		if v.rescan {
			if v.initDone {
				v.startScanLocked(ModeResync)
			} else {
				v.startScanLocked(ModeInitial)
			}
		}
	}
	v.cond.Broadcast()
	return nil
}

// markAllLocked makes every block of every disk dirty and never sent.
func (v *vmState) markAllLocked() error {
	for _, d := range v.disks {
		if err := d.dirty.markAll(); err != nil {
			return fmt.Errorf("disk %d: %w", d.key, err)
		}
	}
	return nil
}

func (v *vmState) dirtyCount() int {
	n := 0
	for _, d := range v.disks {
		n += d.dirty.count()
	}
	return n
}

func (v *vmState) disconnectedLocked(s *session) {
	if v.session == s {
		v.session = nil
		v.downSince = time.Now()
	}
	s.done = true
	v.cond.Broadcast()
}

// tick runs periodically: CBT mode after the grace period without a proxy,
// a resync once the path is back after an overflow, lazy bitmap writes.
func (v *vmState) tick(now time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.session == nil && v.mode != ModeCBT && v.mode != ModeStarting && now.Sub(v.downSince) > v.opts.Grace {
		v.enterCBTLocked(fmt.Sprintf("source proxy unreachable for more than %s", v.opts.Grace))
	}
	if v.session != nil && v.mode == ModeCBT && now.Sub(v.cbtSince) > time.Second {
		if v.initDone {
			v.startScanLocked(ModeResync)
		} else {
			v.startScanLocked(ModeInitial)
		}
	}
	for _, d := range v.disks {
		if d.dirty.stale {
			if _, err := d.dirty.f.WriteAt(d.dirty.bits, 0); err != nil {
				v.log.Warn("write dirty bitmap", "disk", d.key, "err", err)
				continue
			}
			d.dirty.stale = false
		}
	}
}

// status snapshots the VM.
func (v *vmState) status(now time.Time) VMStatus {
	v.mu.Lock()
	defer v.mu.Unlock()
	status := v.mode.Status()
	if v.addedSync && (v.mode == ModeSyncing || v.mode == ModeResync) {
		// an added disk's first copy is its initial sync
		status = model.StatusInitialSync
	}
	st := VMStatus{VM: v.name, Status: status, Mode: v.mode.String(), Reason: v.reason,
		Connected: v.session != nil, Seq: v.seq, Acked: v.acked, BufferBytes: v.bufBytes,
		BufferEntries: len(v.buf), CBTEntries: v.cbtEntries,
		ThrottledWrites: v.throttled, ThrottledSeconds: v.throttledT.Seconds()}
	if v.session != nil {
		st.Link = v.session.conn.Protection()
	}
	if len(v.buf) > 0 {
		st.LagSeconds = now.Sub(v.buf[0].at).Seconds()
	}
	var done, total int64
	for _, d := range v.disks {
		ds := DiskStatus{Key: d.key, Export: d.ExportName(), Path: d.path, Capacity: d.capacity,
			Status: st.Status, Reason: v.reason, DirtyBlocks: d.dirty.count()}
		if v.mode == ModeInitial || v.mode == ModeStarting {
			ds.SyncDoneBytes, ds.SyncTotalBytes = d.scanDone, d.capacity
		}
		done += ds.SyncDoneBytes
		total += ds.SyncTotalBytes
		st.Disks = append(st.Disks, ds)
	}
	st.SyncDoneBytes, st.SyncTotalBytes = done, total
	if v.mode == ModeResync && v.scanning {
		st.SyncDoneBytes, st.SyncTotalBytes = v.scanBytes, v.scanTotal
	}
	if el := now.Sub(v.scanStart).Seconds(); v.scanning && el > 0 {
		st.SyncRateBytesPerSec = float64(v.scanBytes) / el
	}
	return st
}
