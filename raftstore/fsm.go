package raftstore

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"

	"github.com/continuum-cdp/continuum/internal/model"
)

// applyResult is what FSM.Apply hands back through the raft future.
type applyResult struct {
	Value any
	Err   error
}

// FSM is the raft state machine holding the coordinator's model.State.
type FSM struct {
	log *slog.Logger

	mu    sync.RWMutex
	state *model.State
	// term of the last command applied: once a command of the current term
	// is applied, so is everything committed before it
	term atomic.Uint64
}

// NewFSM returns an FSM with an empty state.
func NewFSM(logger *slog.Logger) *FSM {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &FSM{log: logger, state: model.NewState()}
}

// Apply decodes and applies one log entry. A known command that does not
// decode, or an unknown command without IgnoreUnknownFlag, panics: carrying on
// would let this replica diverge from the others.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	c, err := DecodeCommand(l.Data)
	if err != nil {
		var unk *UnknownCommandError
		if errors.As(err, &unk) && unk.Skippable {
			f.log.Warn("skipping unknown command flagged ignorable", "type", int(unk.Type&^IgnoreUnknownFlag), "index", l.Index)
			return applyResult{}
		}
		panic(fmt.Sprintf("raftstore: cannot apply log entry %d: %v", l.Index, err))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	v, err := applyCommand(f.state, c)
	f.term.Store(l.Term)
	return applyResult{Value: v, Err: err}
}

// Read runs fn on the state under the read lock.
func (f *FSM) Read(fn func(s *model.State)) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	fn(f.state)
}

// Snapshot captures the current maps. Stored objects are never mutated in
// place (see apply.go), so copying the maps is a consistent, cheap capture;
// encoding happens later in Persist.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return &fsmSnapshot{state: shallowCopy(f.state)}, nil
}

// Restore replaces the whole state with the snapshot's. The snapshot is read
// and checked in full before anything is replaced.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	s, err := readSnapshot(rc)
	if err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	f.mu.Lock()
	f.state = s
	f.mu.Unlock()
	return nil
}

func shallowCopy(s *model.State) *model.State {
	c := model.NewState()
	copyMap(c.VCenters, s.VCenters)
	copyMap(c.VCDServers, s.VCDServers)
	copyMap(c.Clusters, s.Clusters)
	copyMap(c.Hosts, s.Hosts)
	copyMap(c.Proxies, s.Proxies)
	copyMap(c.Policies, s.Policies)
	copyMap(c.Tasks, s.Tasks)
	copyMap(c.Replicas, s.Replicas)
	copyMap(c.RestorePoints, s.RestorePoints)
	copyMap(c.TrafficRules, s.TrafficRules)
	copyMap(c.Tenants, s.Tenants)
	copyMap(c.Tokens, s.Tokens)
	copyMap(c.Coordinators, s.Coordinators)
	return c
}

func copyMap[T any](dst, src map[string]*T) {
	for k, v := range src {
		dst[k] = v
	}
}

// Snapshot stream format (all integers big-endian):
//
//	magic "CNTMSNAP" | version uint32
//	records: kind uint8 | length uint32 | JSON object
//	end:     kind 0 | record count uint64 | CRC-32C (Castagnoli) of every byte before it
//
// One record per object keeps memory bounded on both sides and lets a reader
// reject a truncated or altered stream before it touches the live state.
const (
	snapMagic   = "CNTMSNAP"
	snapVersion = 1
	maxRecord   = 64 << 20
)

// Record kinds. Append only.
const (
	recEnd uint8 = iota
	recVCenter
	recVCDServer
	recCluster
	recHost
	recProxy
	recPolicy
	recTask
	recReplica
	recRestorePoint
	recTrafficRule
	recTenant
	recToken
	recCoordinator
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type fsmSnapshot struct {
	state *model.State
}

// Persist writes the captured state to the sink and cancels the sink on any
// error so that no partial snapshot is kept.
func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := writeSnapshot(sink, s.state); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("persist snapshot: close sink: %w", err)
	}
	return nil
}

func (s *fsmSnapshot) Release() {}

type snapWriter struct {
	w     *bufio.Writer
	crc   hash.Hash32
	count uint64
	err   error
}

func (sw *snapWriter) write(b []byte) {
	if sw.err != nil {
		return
	}
	sw.crc.Write(b)
	_, sw.err = sw.w.Write(b)
}

func writeRecords[T any](sw *snapWriter, kind uint8, m map[string]*T) {
	for _, k := range sortedKeys(m) {
		if sw.err != nil {
			return
		}
		b, err := json.Marshal(m[k])
		if err != nil {
			sw.err = fmt.Errorf("encode record %q: %w", k, err)
			return
		}
		if len(b) > maxRecord {
			sw.err = fmt.Errorf("record %q is %d bytes, over the %d limit", k, len(b), maxRecord)
			return
		}
		var hdr [5]byte
		hdr[0] = kind
		binary.BigEndian.PutUint32(hdr[1:], uint32(len(b)))
		sw.write(hdr[:])
		sw.write(b)
		sw.count++
	}
}

// writeSnapshot encodes s in the record stream format.
func writeSnapshot(w io.Writer, s *model.State) error {
	sw := &snapWriter{w: bufio.NewWriterSize(w, 64<<10), crc: crc32.New(castagnoli)}
	var hdr [12]byte
	copy(hdr[:], snapMagic)
	binary.BigEndian.PutUint32(hdr[8:], snapVersion)
	sw.write(hdr[:])
	writeRecords(sw, recVCenter, s.VCenters)
	writeRecords(sw, recVCDServer, s.VCDServers)
	writeRecords(sw, recCluster, s.Clusters)
	writeRecords(sw, recHost, s.Hosts)
	writeRecords(sw, recProxy, s.Proxies)
	writeRecords(sw, recPolicy, s.Policies)
	writeRecords(sw, recTask, s.Tasks)
	writeRecords(sw, recReplica, s.Replicas)
	writeRecords(sw, recRestorePoint, s.RestorePoints)
	writeRecords(sw, recTrafficRule, s.TrafficRules)
	writeRecords(sw, recTenant, s.Tenants)
	writeRecords(sw, recToken, s.Tokens)
	writeRecords(sw, recCoordinator, s.Coordinators)
	var end [9]byte
	end[0] = recEnd
	binary.BigEndian.PutUint64(end[1:], sw.count)
	sw.write(end[:])
	if sw.err != nil {
		return sw.err
	}
	var sum [4]byte
	binary.BigEndian.PutUint32(sum[:], sw.crc.Sum32())
	if _, err := sw.w.Write(sum[:]); err != nil {
		return err
	}
	return sw.w.Flush()
}

// crcReader feeds everything it reads into a CRC.
type crcReader struct {
	r   io.Reader
	crc hash.Hash32
}

func (c *crcReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.crc.Write(p[:n])
	return n, err
}

func readRecord[T any](body []byte, kind string, m map[string]*T, idOf func(*T) string) error {
	v := new(T)
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("decode %s record: %w", kind, err)
	}
	id := idOf(v)
	if id == "" {
		return fmt.Errorf("%s record without id", kind)
	}
	if _, dup := m[id]; dup {
		return fmt.Errorf("duplicate %s record %q", kind, id)
	}
	m[id] = v
	return nil
}

// readSnapshot decodes a record stream into a new state.
func readSnapshot(r io.Reader) (*model.State, error) {
	cr := &crcReader{r: bufio.NewReaderSize(r, 64<<10), crc: crc32.New(castagnoli)}
	var hdr [12]byte
	if _, err := io.ReadFull(cr, hdr[:]); err != nil {
		return nil, fmt.Errorf("read header: %w", err)
	}
	if !bytes.Equal(hdr[:8], []byte(snapMagic)) {
		return nil, fmt.Errorf("not a state snapshot (bad magic %q)", hdr[:8])
	}
	if v := binary.BigEndian.Uint32(hdr[8:]); v != snapVersion {
		return nil, fmt.Errorf("snapshot format version %d is not supported (want %d)", v, snapVersion)
	}
	s := model.NewState()
	var count uint64
	var buf []byte
	for {
		var rh [5]byte
		if _, err := io.ReadFull(cr, rh[:1]); err != nil {
			return nil, fmt.Errorf("read record %d: %w", count, unexpected(err))
		}
		if rh[0] == recEnd {
			break
		}
		if _, err := io.ReadFull(cr, rh[1:]); err != nil {
			return nil, fmt.Errorf("read record %d: %w", count, unexpected(err))
		}
		n := binary.BigEndian.Uint32(rh[1:])
		if n > maxRecord {
			return nil, fmt.Errorf("record %d is %d bytes, over the %d limit", count, n, maxRecord)
		}
		if cap(buf) < int(n) {
			buf = make([]byte, n)
		}
		body := buf[:n]
		if _, err := io.ReadFull(cr, body); err != nil {
			return nil, fmt.Errorf("read record %d: %w", count, unexpected(err))
		}
		var err error
		switch rh[0] {
		case recVCenter:
			err = readRecord(body, "vcenter", s.VCenters, func(v *model.VCenter) string { return v.ID })
		case recVCDServer:
			err = readRecord(body, "vcd server", s.VCDServers, func(v *model.VCDServer) string { return v.ID })
		case recCluster:
			err = readRecord(body, "cluster", s.Clusters, func(v *model.Cluster) string { return v.ID })
		case recHost:
			err = readRecord(body, "host", s.Hosts, func(v *model.Host) string { return v.ID })
		case recProxy:
			err = readRecord(body, "proxy", s.Proxies, func(v *model.Proxy) string { return v.ID })
		case recPolicy:
			err = readRecord(body, "policy", s.Policies, func(v *model.Policy) string { return v.ID })
		case recTask:
			err = readRecord(body, "task", s.Tasks, func(v *model.VMTask) string { return v.ID })
		case recReplica:
			err = readRecord(body, "replica", s.Replicas, func(v *model.Replica) string { return v.ID })
		case recRestorePoint:
			err = readRecord(body, "restore point", s.RestorePoints, func(v *model.RestorePoint) string { return v.ID })
		case recTrafficRule:
			err = readRecord(body, "traffic rule", s.TrafficRules, func(v *model.TrafficRule) string { return v.ID })
		case recTenant:
			err = readRecord(body, "tenant", s.Tenants, func(v *model.Tenant) string { return v.ID })
		case recToken:
			err = readRecord(body, "token", s.Tokens, func(v *model.Token) string { return v.ID })
		case recCoordinator:
			err = readRecord(body, "coordinator", s.Coordinators, func(v *model.Coordinator) string { return v.ID })
		default:
			err = fmt.Errorf("unknown record kind %d", rh[0])
		}
		if err != nil {
			return nil, fmt.Errorf("record %d: %w", count, err)
		}
		count++
	}
	var cnt [8]byte
	if _, err := io.ReadFull(cr, cnt[:]); err != nil {
		return nil, fmt.Errorf("read trailer: %w", unexpected(err))
	}
	if want := binary.BigEndian.Uint64(cnt[:]); want != count {
		return nil, fmt.Errorf("trailer says %d records, read %d", want, count)
	}
	sum := cr.crc.Sum32()
	var got [4]byte
	if _, err := io.ReadFull(cr.r, got[:]); err != nil {
		return nil, fmt.Errorf("read checksum: %w", unexpected(err))
	}
	if binary.BigEndian.Uint32(got[:]) != sum {
		return nil, fmt.Errorf("checksum mismatch: snapshot is corrupt")
	}
	var one [1]byte
	if n, _ := cr.r.Read(one[:]); n != 0 {
		return nil, fmt.Errorf("trailing bytes after checksum")
	}
	return s, nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
