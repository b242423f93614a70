//go:build !race

package vcsim

// serialTasks makes Start serve tasks one at a time (see serial.go): on
// under the race detector.
var serialTasks = false
