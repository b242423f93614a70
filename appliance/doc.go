// Package appliance is the coordinator service: the REST API on every node,
// the leader-only controllers and scheduler, provider mode, and the CLI
// commands. It may import raftstore, vsphere, vcd, proxy, filter, client and
// internal packages.
package appliance
