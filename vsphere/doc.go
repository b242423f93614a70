// Package vsphere is the govmomi adapter: inventory, replicas, the CDP storage
// policy, filter installation, the change feed and power operations. It is
// the only package besides vcsim that sees govmomi types; callers get small
// types of ours (VM, Disk, Inventory, Change) and errors that match the
// kinds ErrNotFound, ErrAuth, ErrUnreachable, ErrDatastoreNotMounted,
// ErrCertificate, ErrInvalid, ErrConflict, ErrTaskFailed, ErrFault with
// errors.Is, the vSphere fault staying beneath for fault.Is.
//
// A Client logs in with a URL, credentials and a thumbprint or CA bundle,
// keeps its session alive, logs in again when vCenter dropped the session,
// and retries transient faults a bounded number of times with backoff. Tasks
// are waited for by polling their state, which answers as soon as the task
// ends instead of at the next batch of property updates.
//
// Every operation is idempotent so that a new coordinator leader can re-run
// it: InstallFilter finds an installed filter and an existing profile;
// EnsureReplica finds the replica by an instance UUID derived from the
// source's instance UUID and the policy ID and checks the marker written to
// its ExtraConfig, so a replica is never created twice even when two
// leaders race or a create task fails after registering the VM; ApplyPolicy
// skips disks that already have the profile.
//
// It may import govmomi and the standard library, nothing of ours.
package vsphere
