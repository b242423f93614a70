// Package vcd is the Cloud Director adapter.
package vcd
