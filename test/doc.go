// Package test holds black-box tests that span processes: end to end,
// faults and HA drills.
package test
