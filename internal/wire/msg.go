package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// MsgType is the one-byte type of a frame. Types are append-only.
type MsgType uint8

// Message types.
const (
	TypeHello     MsgType = 1
	TypeHelloAck  MsgType = 2
	TypeWrite     MsgType = 3
	TypeMarker    MsgType = 4
	TypeAck       MsgType = 5
	TypePoint     MsgType = 6
	TypePointAck  MsgType = 7
	TypeStatus    MsgType = 8
	TypeError     MsgType = 9
	TypeHeartbeat MsgType = 10
	TypeFeatures  MsgType = 11
)

func (t MsgType) String() string {
	switch t {
	case TypeHello:
		return "Hello"
	case TypeHelloAck:
		return "HelloAck"
	case TypeWrite:
		return "Write"
	case TypeMarker:
		return "Marker"
	case TypeAck:
		return "Ack"
	case TypePoint:
		return "Point"
	case TypePointAck:
		return "PointAck"
	case TypeStatus:
		return "Status"
	case TypeError:
		return "Error"
	case TypeHeartbeat:
		return "Heartbeat"
	case TypeFeatures:
		return "Features"
	}
	return fmt.Sprintf("MsgType(%d)", uint8(t))
}

// Roles announced in Hello.
const (
	RoleSourceFilter = "source-filter"
	RoleSourceProxy  = "source-proxy"
	RoleTargetProxy  = "target-proxy"
	RoleTargetFilter = "target-filter"
)

// Write operations. Trim reads back as zeroes, so the target treats OpTrim
// and OpZero alike; the distinction is kept for statistics.
const (
	OpData uint8 = 1
	OpZero uint8 = 2
	OpTrim uint8 = 3
)

// Write flags.
const (
	FlagInitial uint8 = 1 << 0 // data read by the initial sync scan
	FlagResync  uint8 = 1 << 1 // data re-read from the dirty bitmap (CBT resync)
)

// Marker kinds, sent by the source filter and carried as Point.Marker.
const (
	MarkerNone            uint8 = 0
	MarkerInitialSyncDone uint8 = 1
	MarkerResyncStart     uint8 = 2
	MarkerResyncDone      uint8 = 3
)

// Point kinds.
const (
	PointInitial   uint8 = 1 // contains initial-sync data; not listed
	PointResync    uint8 = 2 // CBT resync in progress; not listed
	PointShortTerm uint8 = 3 // consistent; listed
)

// Error codes carried by Error.
const (
	ErrCodeInternal   uint16 = 1
	ErrCodeNoSpace    uint16 = 2 // target datastore full: no ack until space returns
	ErrCodeBadRequest uint16 = 3
	ErrCodeUnknownVM  uint16 = 4
	ErrCodeRejected   uint16 = 5 // frame failed verification
)

// Msg is one message. Only the types of this package implement it.
type Msg interface {
	Type() MsgType
	// appendFixed appends everything but the bulk tail.
	appendFixed(b []byte) []byte
	// tail is bulk data written after the fixed part without copying.
	tail() []byte
	// decode parses a whole payload; bulk data is copied out of p.
	decode(p []byte) error
}

// Disk describes one disk of a VM in Hello.
type Disk struct {
	Key      int32
	Capacity int64
}

// Hello opens every hop.
type Hello struct {
	Role   string
	NodeID string
	VM     string
	Disks  []Disk
	Resume uint64
}

// HelloAck answers Hello. Resume is the last durable point ID at the target
// (0 if none); Err non-empty refuses the session.
type HelloAck struct {
	Resume          uint64
	InitialSyncDone bool
	Err             string
}

// Write is one guest or sync write, stamped with the VM's sequence.
type Write struct {
	Seq   uint64
	Disk  int32
	Off   int64
	Op    uint8
	Len   uint32
	Flags uint8
	Data  []byte // len(Data)==Len for OpData, empty otherwise

	frame []byte // the read buffer Data aliases, for Release
}

// Marker asks the source proxy to cut exactly at Seq and flag that point.
type Marker struct {
	Seq  uint64
	Kind uint8
}

// Ack frees every buffered write with seq <= Seq.
type Ack struct{ Seq uint64 }

// Point is one restore point on the wire; Payload is produced by
// EncodePoint and read by DecodePoint.
type Point struct {
	ID        uint64
	Time      int64 // unix nanoseconds
	Kind      uint8
	Marker    uint8
	Codec     Codec
	Encrypted bool
	RawLen    uint32
	Payload   []byte

	frame []byte // the read buffer Payload aliases, for Release
}

// PointAck says point ID is durable at the target.
type PointAck struct{ ID uint64 }

// Status reports a VM's replication state upstream (informational).
type Status struct {
	VM         string
	Mode       string // e.g. "Syncing", "CBT mode", "Initial sync"
	BytesDone  uint64
	BytesTotal uint64
	Msg        string
}

// Error reports a condition that does not end the session (e.g. ENOSPC).
type Error struct {
	Code uint16
	Msg  string
}

// Heartbeat keeps an idle connection alive.
type Heartbeat struct{}

// Features announces what the sender's reader understands beyond this
// protocol version's baseline. A Conn sends it (skippable, so a reader
// that predates it passes over it) ahead of its first message and uses a
// feature toward its peer only once the peer has announced it: filters
// and proxies of different releases keep talking during a rolling
// upgrade. Bits a reader does not know are ignored, and so are bytes
// after them (room for later fields).
type Features struct {
	Bits uint64
}

// Feature bits.
const (
	// FeatureUncheckedFrames: the reader accepts FlagUnchecked frames on
	// a TLS connection.
	FeatureUncheckedFrames uint64 = 1 << 0
	// FeatureIntegrityFrames: the sender can carry the rest of the
	// connection in integrity frames after the Hello exchange (see
	// integrity.go).
	FeatureIntegrityFrames uint64 = 1 << 1
	// FeatureIntegrityWanted: the sender (the side that sends Hello) asks
	// for integrity frames on this connection.
	FeatureIntegrityWanted uint64 = 1 << 2
	// FeatureIntegrityAgreed: the sender (the side that answers Hello)
	// switches: the frame after this announcement is its last over TLS,
	// and both directions carry integrity frames from then on.
	FeatureIntegrityAgreed uint64 = 1 << 3
)

func (*Hello) Type() MsgType     { return TypeHello }
func (*HelloAck) Type() MsgType  { return TypeHelloAck }
func (*Write) Type() MsgType     { return TypeWrite }
func (*Marker) Type() MsgType    { return TypeMarker }
func (*Ack) Type() MsgType       { return TypeAck }
func (*Point) Type() MsgType     { return TypePoint }
func (*PointAck) Type() MsgType  { return TypePointAck }
func (*Status) Type() MsgType    { return TypeStatus }
func (*Error) Type() MsgType     { return TypeError }
func (*Heartbeat) Type() MsgType { return TypeHeartbeat }
func (*Features) Type() MsgType  { return TypeFeatures }

func (e *Error) Error() string { return fmt.Sprintf("remote error %d: %s", e.Code, e.Msg) }

func newMsg(t MsgType) Msg {
	switch t {
	case TypeHello:
		return &Hello{}
	case TypeHelloAck:
		return &HelloAck{}
	case TypeWrite:
		return &Write{}
	case TypeMarker:
		return &Marker{}
	case TypeAck:
		return &Ack{}
	case TypePoint:
		return &Point{}
	case TypePointAck:
		return &PointAck{}
	case TypeStatus:
		return &Status{}
	case TypeError:
		return &Error{}
	case TypeHeartbeat:
		return &Heartbeat{}
	case TypeFeatures:
		return &Features{}
	}
	return nil
}

var be = binary.BigEndian

// errShort is returned for payloads that end early.
var errShort = errors.New("payload truncated")

func appendString(b []byte, s string) []byte {
	b = be.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// reader walks a payload; the first failure sticks.
type reader struct {
	b   []byte
	err error
}

func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || len(r.b) < n {
		r.err = errShort
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u8() uint8 {
	if v := r.take(1); v != nil {
		return v[0]
	}
	return 0
}

func (r *reader) u16() uint16 {
	if v := r.take(2); v != nil {
		return be.Uint16(v)
	}
	return 0
}

func (r *reader) u32() uint32 {
	if v := r.take(4); v != nil {
		return be.Uint32(v)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if v := r.take(8); v != nil {
		return be.Uint64(v)
	}
	return 0
}

func (r *reader) bool() bool {
	switch r.u8() {
	case 0:
		return false
	case 1:
		return true
	}
	if r.err == nil {
		r.err = errors.New("bad boolean")
	}
	return false
}

func (r *reader) str() string {
	n := int(r.u16())
	return string(r.take(n))
}

// done fails if bytes are left over: a payload is parsed exactly.
func (r *reader) done() error {
	if r.err != nil {
		return r.err
	}
	if len(r.b) != 0 {
		return fmt.Errorf("%d trailing bytes", len(r.b))
	}
	return nil
}

func (m *Hello) appendFixed(b []byte) []byte {
	b = appendString(b, m.Role)
	b = appendString(b, m.NodeID)
	b = appendString(b, m.VM)
	b = be.AppendUint16(b, uint16(len(m.Disks)))
	for _, d := range m.Disks {
		b = be.AppendUint32(b, uint32(d.Key))
		b = be.AppendUint64(b, uint64(d.Capacity))
	}
	return be.AppendUint64(b, m.Resume)
}
func (m *Hello) tail() []byte { return nil }
func (m *Hello) decode(p []byte) error {
	r := reader{b: p}
	m.Role = r.str()
	m.NodeID = r.str()
	m.VM = r.str()
	n := int(r.u16())
	if r.err == nil && n*12 > len(r.b) {
		return errShort
	}
	m.Disks = nil
	if n > 0 {
		m.Disks = make([]Disk, n)
	}
	for i := range m.Disks {
		m.Disks[i].Key = int32(r.u32())
		m.Disks[i].Capacity = int64(r.u64())
		if m.Disks[i].Capacity < 0 {
			return fmt.Errorf("disk %d: negative capacity", m.Disks[i].Key)
		}
	}
	m.Resume = r.u64()
	return r.done()
}

func (m *HelloAck) appendFixed(b []byte) []byte {
	b = be.AppendUint64(b, m.Resume)
	b = appendBool(b, m.InitialSyncDone)
	return appendString(b, m.Err)
}
func (m *HelloAck) tail() []byte { return nil }
func (m *HelloAck) decode(p []byte) error {
	r := reader{b: p}
	m.Resume = r.u64()
	m.InitialSyncDone = r.bool()
	m.Err = r.str()
	return r.done()
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

// WriteFixedLen is the size of a Write payload without its data.
const WriteFixedLen = 8 + 4 + 8 + 1 + 4 + 1

func (m *Write) appendFixed(b []byte) []byte {
	b = be.AppendUint64(b, m.Seq)
	b = be.AppendUint32(b, uint32(m.Disk))
	b = be.AppendUint64(b, uint64(m.Off))
	b = append(b, m.Op)
	b = be.AppendUint32(b, m.Len)
	return append(b, m.Flags)
}
func (m *Write) tail() []byte          { return m.Data }
func (m *Write) decode(p []byte) error { return m.decodeAlias(p, false) }

// decodeOwned keeps Data as a slice of p, which the caller gives up.
func (m *Write) decodeOwned(p []byte) error { return m.decodeAlias(p, true) }
func (m *Write) keep(frame []byte)          { m.frame = frame }

func (m *Write) decodeAlias(p []byte, alias bool) error {
	r := reader{b: p}
	m.Seq = r.u64()
	m.Disk = int32(r.u32())
	m.Off = int64(r.u64())
	m.Op = r.u8()
	m.Len = r.u32()
	m.Flags = r.u8()
	if r.err != nil {
		return r.err
	}
	return m.setData(r.b, alias)
}

func (m *Write) setData(rest []byte, alias bool) error {
	if m.Off < 0 {
		return fmt.Errorf("write seq %d: negative offset", m.Seq)
	}
	switch m.Op {
	case OpData:
		if int64(len(rest)) != int64(m.Len) {
			return fmt.Errorf("write seq %d: data length %d, header says %d", m.Seq, len(rest), m.Len)
		}
		if alias {
			m.Data = rest
		} else {
			m.Data = append(m.Data[:0:0], rest...)
		}
	case OpZero, OpTrim:
		if len(rest) != 0 {
			return fmt.Errorf("write seq %d: %d data bytes on a zero/trim", m.Seq, len(rest))
		}
		m.Data = nil
	default:
		return fmt.Errorf("write seq %d: unknown op %d", m.Seq, m.Op)
	}
	return nil
}

// Validate checks a Write before it is sent.
func (m *Write) Validate() error {
	if m.Op == OpData && int64(len(m.Data)) != int64(m.Len) {
		return fmt.Errorf("write seq %d: data length %d, Len %d", m.Seq, len(m.Data), m.Len)
	}
	if m.Op != OpData && len(m.Data) != 0 {
		return fmt.Errorf("write seq %d: data on a zero/trim", m.Seq)
	}
	if m.Op < OpData || m.Op > OpTrim {
		return fmt.Errorf("write seq %d: unknown op %d", m.Seq, m.Op)
	}
	if m.Off < 0 {
		return fmt.Errorf("write seq %d: negative offset", m.Seq)
	}
	return nil
}

func (m *Marker) appendFixed(b []byte) []byte {
	b = be.AppendUint64(b, m.Seq)
	return append(b, m.Kind)
}
func (m *Marker) tail() []byte { return nil }
func (m *Marker) decode(p []byte) error {
	r := reader{b: p}
	m.Seq = r.u64()
	m.Kind = r.u8()
	if r.err == nil && (m.Kind == MarkerNone || m.Kind > MarkerResyncDone) {
		return fmt.Errorf("marker seq %d: unknown kind %d", m.Seq, m.Kind)
	}
	return r.done()
}

func (m *Ack) appendFixed(b []byte) []byte { return be.AppendUint64(b, m.Seq) }
func (m *Ack) tail() []byte                { return nil }
func (m *Ack) decode(p []byte) error {
	r := reader{b: p}
	m.Seq = r.u64()
	return r.done()
}

// PointFixedLen is the size of a Point payload without its data.
const PointFixedLen = 8 + 8 + 1 + 1 + 1 + 1 + 4

func (m *Point) appendFixed(b []byte) []byte {
	b = be.AppendUint64(b, m.ID)
	b = be.AppendUint64(b, uint64(m.Time))
	b = append(b, m.Kind, m.Marker, uint8(m.Codec))
	b = appendBool(b, m.Encrypted)
	return be.AppendUint32(b, m.RawLen)
}
func (m *Point) tail() []byte          { return m.Payload }
func (m *Point) decode(p []byte) error { return m.decodeAlias(p, false) }

// decodeOwned keeps Payload as a slice of p, which the caller gives up.
func (m *Point) decodeOwned(p []byte) error { return m.decodeAlias(p, true) }
func (m *Point) keep(frame []byte)          { m.frame = frame }

func (m *Point) decodeAlias(p []byte, alias bool) error {
	r := reader{b: p}
	m.ID = r.u64()
	m.Time = int64(r.u64())
	m.Kind = r.u8()
	m.Marker = r.u8()
	m.Codec = Codec(r.u8())
	m.Encrypted = r.bool()
	m.RawLen = r.u32()
	if r.err != nil {
		return r.err
	}
	if m.Kind < PointInitial || m.Kind > PointShortTerm {
		return fmt.Errorf("point %d: unknown kind %d", m.ID, m.Kind)
	}
	if m.Marker > MarkerResyncDone {
		return fmt.Errorf("point %d: unknown marker %d", m.ID, m.Marker)
	}
	if m.Codec > codecMax {
		return fmt.Errorf("point %d: unknown codec %d", m.ID, m.Codec)
	}
	if alias {
		m.Payload = r.b
	} else {
		m.Payload = append(m.Payload[:0:0], r.b...)
	}
	return nil
}

func (m *PointAck) appendFixed(b []byte) []byte { return be.AppendUint64(b, m.ID) }
func (m *PointAck) tail() []byte                { return nil }
func (m *PointAck) decode(p []byte) error {
	r := reader{b: p}
	m.ID = r.u64()
	return r.done()
}

func (m *Status) appendFixed(b []byte) []byte {
	b = appendString(b, m.VM)
	b = appendString(b, m.Mode)
	b = be.AppendUint64(b, m.BytesDone)
	b = be.AppendUint64(b, m.BytesTotal)
	return appendString(b, m.Msg)
}
func (m *Status) tail() []byte { return nil }
func (m *Status) decode(p []byte) error {
	r := reader{b: p}
	m.VM = r.str()
	m.Mode = r.str()
	m.BytesDone = r.u64()
	m.BytesTotal = r.u64()
	m.Msg = r.str()
	return r.done()
}

func (m *Error) appendFixed(b []byte) []byte {
	b = be.AppendUint16(b, m.Code)
	return appendString(b, m.Msg)
}
func (m *Error) tail() []byte { return nil }
func (m *Error) decode(p []byte) error {
	r := reader{b: p}
	m.Code = r.u16()
	m.Msg = r.str()
	return r.done()
}

func (m *Heartbeat) appendFixed(b []byte) []byte { return b }
func (m *Heartbeat) tail() []byte                { return nil }
func (m *Heartbeat) decode(p []byte) error {
	if len(p) != 0 {
		return fmt.Errorf("%d trailing bytes", len(p))
	}
	return nil
}

func (m *Features) appendFixed(b []byte) []byte { return be.AppendUint64(b, m.Bits) }
func (m *Features) tail() []byte                { return nil }
func (m *Features) decode(p []byte) error {
	if len(p) < 8 {
		return errShort
	}
	m.Bits = be.Uint64(p)
	return nil // later fields, if any, are for later readers
}
