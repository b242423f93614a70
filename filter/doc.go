// Package filter is the I/O filter: on the source it owns the protected
// disks (served over NBD), stamps every write with a per-VM sequence and
// streams it to a source proxy, falling back to CBT mode; on the target it
// keeps the transaction log (journal), delta disks, retention and restore.
// It imports internal/wire, internal/model, internal/pki and
// internal/agent (the component side of the coordinators' contract).
//
// In managed mode (continuum filter --coordinator ...) one process serves
// one ESXi host and runs both sides from the configuration the
// coordinators return to its heartbeats: the source side for the tasks
// whose VM runs on the host, the target side for the replicas on it. The
// configuration is cached on disk and keeps running while no coordinator
// answers.
//
// On a real ESXi host the source side is a VAIO I/O filter in the kernel;
// that cannot run here, so the source filter is a user-space process that
// owns each protected disk as a flat file on the datastore directory and
// serves it over NBD. Every guest write passes through it as it would pass
// through the kernel filter, and everything behind it (stamping, streaming,
// CBT mode, the proxies, the journal) is the product's real code.
package filter
