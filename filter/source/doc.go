// Package source is the source side of the I/O filter. For every protected
// VM it owns the disks (flat sparse files on the source datastore), offers
// each disk as a backend for the NBD server, stamps every write with one
// per-VM sequence and streams it to a source proxy. It runs the initial
// sync, delays the guest's writes for a bounded time when the buffer toward
// the proxy is full (backpressure), falls back to CBT mode (a dirty-block
// bitmap) when the buffer still overflows or the proxy stays unreachable,
// resyncs dirty blocks when the path is back, and keeps the dirty bitmap on
// disk so that a crash of the filter loses nothing.
//
// The protected VMs change at run time (Service.Apply): a VM opened on a
// folder that already holds its state (a restart, or a vMotion between
// hosts sharing the datastore) resumes from its dirty bitmap and sequence
// file, or resyncs; a disk added to a running VM is synced in full while
// the others keep streaming; a VM moved to another proxy resends what was
// never acknowledged, and a target that resumes below what it once
// acknowledged gets every block again. A disk file that already has data
// but no bitmap is dirty throughout: nothing says what the target has.
//
// It imports filter/nbd, internal/wire, internal/model and
// golang.org/x/sys/unix (SEEK_DATA, to skip holes while scanning).
package source
