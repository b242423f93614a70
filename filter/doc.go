// Package filter is the I/O filter: on the source it owns the protected
// disks (served over NBD), stamps every write with a per-VM sequence and
// streams it to a source proxy, falling back to CBT mode; on the target it
// keeps the transaction log (journal), delta disks, retention and restore.
// It imports internal/wire and internal/model.
package filter
