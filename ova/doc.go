// Package ova builds and runs the appliance OVA.
//
// Build side: the OVF descriptor (Descriptor) with its property table
// (Properties), the SHA-256 manifest and the OVA archive (BuildOVA, used by
// ova/mkova and ova/image/build.sh).
//
// Guest side: the hidden "continuum appliance-init" command (Command), which
// busybox init starts at boot. It reads the OVF environment from the CD-ROM
// (ISO transport) or from guestinfo over the VMware backdoor, validates the
// properties (ParseConfig reports every wrong one), configures hostname,
// network, DNS and time, mounts the data partition and supervises the
// coordinator or proxy process.
//
// It imports only the standard library and cobra (govmomi in tests).
package ova
