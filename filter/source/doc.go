// Package source is the source side of the I/O filter. For every protected
// VM it owns the disks (flat sparse files on the source datastore), offers
// each disk as a backend for the NBD server, stamps every write with one
// per-VM sequence and streams it to a source proxy. It runs the initial
// sync, falls back to CBT mode (a dirty-block bitmap) when the buffer
// overflows or the proxy stays unreachable, resyncs dirty blocks when the
// path is back, and keeps the dirty bitmap on disk so that a crash of the
// filter loses nothing. It imports internal/wire and internal/model.
package source
