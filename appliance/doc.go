// Package appliance is the coordinator service: the REST API on every node,
// the leader-only controllers and scheduler, provider mode, and the CLI
// commands. It may import raftstore, vsphere, vcd, proxy, filter, client and
// internal packages.
//
// Every coordinator node builds the policy reconciler and the long-term
// scheduler (package controllers) and registers them with its leader
// runner, so they run on the leader only. The data-path components pull
// their configuration with their heartbeats; Components checks that a
// task's filters and proxies are alive before the reconciler hands the task
// to them, and reaches a filter's admin API over HTTPS with the node's
// certificate (long-term points, restore-point lists and images).
package appliance
