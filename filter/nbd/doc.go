// Package nbd is an NBD server (the fixed newstyle protocol of the NBD
// project's public specification) over a small Backend interface, so that
// any NBD client (qemu-io, qemu-img, nbdcopy, fio's nbd engine) can read and
// write a disk whose writes Continuum intercepts.
//
// It supports several named exports, concurrent clients, and requests in
// flight handled concurrently per connection with serialized replies and a
// bounded amount of in-flight work. Only simple replies are used; structured
// replies, metadata contexts, extended headers and TLS are refused during
// option haggling, which every client falls back from.
//
// TRIM and WRITE_ZEROES both leave the range reading back as zeroes, so the
// replica never depends on what a discarded range held. With exactly one
// export, the empty export name selects it (the default export).
//
// FileBackend stores an export in a sparse flat file of a fixed size.
//
// The package imports nothing of Continuum's; it is used by the source
// filter (protected disks) and the target filter (read-only points).
package nbd
