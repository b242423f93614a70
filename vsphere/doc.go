// Package vsphere is the govmomi adapter: inventory, replicas, the CDP storage
// policy, filter installation, the change feed and power operations. It is
// the only package besides vcsim that sees govmomi types.
package vsphere
