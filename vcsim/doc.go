// Package vcsim is the lab: govmomi's simulator with the CDP extras (I/O
// filter manager, storage profile associations), a Cloud Director
// simulator, and the lab supervisor behind "continuum lab".
package vcsim
