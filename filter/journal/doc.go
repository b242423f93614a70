// Package journal is the target side's transaction log: per VM, a base disk
// (sparse flat file per disk), delta disks for long-term points and a small
// manifest replaced atomically; and, shared by all VMs of the store,
// append-only preallocated segment files of checksummed records (one record
// per restore point, group-committed: one fsync per touched segment per
// batch, whatever the number of VMs in it). It rebuilds its in-memory indexes at
// Open by scanning the segments, cuts torn tails, folds points into deltas or
// the base under retention, and reads any listed point byte-exact.
//
// Layout of a store directory:
//
//	<dir>/journal/seg-<n>.log              journal segments (records name their VM)
//	<dir>/vm-<escaped vm>/manifest.json    listing, deltas, what is folded into the base
//	<dir>/vm-<escaped vm>/disk-<key>.base  base disk, full capacity, sparse
//	<dir>/vm-<escaped vm>/delta-<id>.dlt   delta disks (long-term points and folds)
//
// Reading point P of a disk takes, for every byte, the newest version among
// the journal records in (floor, P] where floor is the newest layer at or
// before P, then the layers (delta disks) at or before P newest first, then
// the base. Folding never changes what a listed point reads.
//
// A record is written with one vectored write from the point's own extent
// data, so an asynchronous append's caller keeps that data until the append
// is answered.
//
// It imports internal/model, golang.org/x/sys/unix (pwritev) and the
// standard library.
package journal
