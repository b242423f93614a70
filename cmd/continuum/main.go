// Command continuum is the one binary of Continuum; its roles and client
// commands are subcommands.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/continuum-cdp/continuum/appliance"
	"github.com/continuum-cdp/continuum/filter"
	"github.com/continuum-cdp/continuum/ova"
	"github.com/continuum-cdp/continuum/proxy"
	"github.com/continuum-cdp/continuum/vcsim"
)

func main() { os.Exit(run()) }

func run() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := appliance.NewRootCommand(proxy.NewCommand(), filter.NewCommand())
	for _, c := range vcsim.Commands() {
		// The simulator package's own lab supervisor, when it has one,
		// takes the place of the coordinator-only lab.
		if old, _, err := root.Find([]string{c.Name()}); err == nil && old != root && old.Name() == c.Name() {
			root.RemoveCommand(old)
		}
		root.AddCommand(c)
	}
	root.AddCommand(ova.Command())
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return 1
	}
	return 0
}
