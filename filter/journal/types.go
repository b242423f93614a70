package journal

import (
	"errors"
	"log/slog"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
)

// DiskSpec names one disk of a VM by its key and its capacity in bytes.
type DiskSpec struct {
	Key      int32
	Capacity int64
}

// Op is what an extent does to its byte range. The values match the wire
// protocol's so a caller may convert directly.
type Op uint8

const (
	OpData Op = 1 // the extent carries its bytes
	OpZero Op = 2 // the range reads back as zeroes (write-zeroes)
	OpTrim Op = 3 // stored as OpZero: trim reads back as zeroes
)

// Extent is one byte range of one disk in a point.
type Extent struct {
	Disk int32
	Off  int64
	Op   Op
	Len  int64
	Data []byte // len(Data)==Len for OpData, empty otherwise
}

// Kind says what a point holds. The values match the wire protocol's.
type Kind uint8

const (
	KindInitial   Kind = 1 // initial-sync data; not listed
	KindResync    Kind = 2 // CBT resync in progress; not listed
	KindShortTerm Kind = 3 // consistent; listed
)

// Marker travels as a flag on a point. The values match the wire protocol's.
type Marker uint8

const (
	MarkerNone            Marker = 0
	MarkerInitialSyncDone Marker = 1
	MarkerResyncStart     Marker = 2
	MarkerResyncDone      Marker = 3
)

// Point is one restore point of a VM as received from the target proxy: the
// latest data of every range written since the previous point, all disks.
// Extents of one point may overlap; a later extent wins.
type Point struct {
	ID      uint64
	Time    time.Time
	Kind    Kind
	Marker  Marker
	Extents []Extent
}

// PointInfo describes a listed restore point.
type PointInfo struct {
	ID   uint64
	Time time.Time
	Kind model.PointKind
}

// Options configure a Store.
type Options struct {
	// SegmentBytes is the preallocated size of a journal segment (default
	// 64 MiB). A record larger than that gets a segment of its own size.
	SegmentBytes int64
	Logger       *slog.Logger
	// Sync is accepted for compatibility; fsync is on unless NoSync is set.
	Sync bool
	// NoSync skips every fsync. Benchmarks only: nothing is durable.
	NoSync bool
	// MaxBytes, when positive, caps the bytes of segment and delta files the
	// store may allocate; going over fails with an error wrapping
	// syscall.ENOSPC, exactly like a full datastore.
	MaxBytes int64
	// CommitWindow is how long the committer waits for more appends after
	// the first of a batch (default 0: it takes what is queued).
	CommitWindow time.Duration
	// CommitBytes ends a batch early once this many bytes are queued
	// (default 64 MiB).
	CommitBytes int64
	// BufferedIO writes every record through the page cache, even where
	// the file system offers direct I/O (see direct.go).
	BufferedIO bool
}

// Errors callers can test with errors.Is.
var (
	// ErrCorrupt: a file of the journal does not check out.
	ErrCorrupt = errors.New("journal corrupt")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("journal closed")
	// ErrNotListed: the point is not (or no longer) listed.
	ErrNotListed = errors.New("point not listed")
	// ErrRemoved: the VM was removed from the journal (RemoveVM).
	ErrRemoved = errors.New("vm removed from the journal")
)

const (
	defaultSegmentBytes = 64 << 20
	defaultCommitBytes  = 64 << 20
	// maxRecordBytes bounds what the decoder accepts from a length prefix.
	maxRecordBytes = 1 << 30
)
