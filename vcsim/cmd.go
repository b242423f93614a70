package vcsim

import "github.com/spf13/cobra"

// Commands returns the commands this package contributes: "vcsim" (a
// standalone simulated vCenter) and "lab" (the whole system on loopback).
func Commands() []*cobra.Command {
	return nil
}
