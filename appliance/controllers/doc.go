// Package controllers holds the coordinator's leader-only reconcile loops:
// the policy reconciler (the configuration algorithm: tasks, component
// checks, replicas, storage policy, proxy selection, configuration push),
// reconfiguration from the vCenter change feed, per-VM and per-policy
// statuses, and the long-term restore-point scheduler.
//
// Each loop is a func(ctx) error that the coordinator's leader runner starts
// when this node becomes leader and cancels when it stops being leader. The
// loops see the replicated state, vCenter and the data-path components only
// through the small interfaces Store, Inventory and Components, which
// raftstore.Node, vsphere.Client and the component registry satisfy.
//
// It may import raftstore, vsphere, internal/model and the standard library.
package controllers
