// Package ova builds and reads the appliance OVA: the OVF descriptor, the
// OVF environment parsed at first boot, and the image build.
package ova
