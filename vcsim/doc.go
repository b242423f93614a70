// Package vcsim is the lab: govmomi's simulator with the CDP extras (I/O
// filter manager, storage profile associations), a Cloud Director
// simulator, and the lab supervisor behind "continuum lab".
//
// Start builds the lab vCenter through the vSphere API: a source cluster and
// a target cluster whose hosts share local datastores (real directories
// under Dir/datastores), protected VMs with one to three disks, and VM
// proxies. What the simulator lacks is added as objects in its registries,
// so production code calls the real API unchanged: an IoFilterManager
// (install, uninstall, query per cluster; a host has a cluster's filters
// because it is in the cluster), and an SPBM profile manager that remembers
// the profiles ReconfigVM applied and answers PbmQueryAssociatedProfile(s)
// and PbmFetchComplianceResult. Fault injection for tests: FailMethod (the
// simulator's injector), SlowCalls, FailCreateVMAfterCreate and
// DropSessions.
//
// "continuum vcsim --listen HOST:PORT --dir DIR" serves it over TLS with
// fixed credentials, writes DIR/vcsim.env and prints "vcsim ready".
//
// It may import govmomi (simulator included) and the standard library.
package vcsim
