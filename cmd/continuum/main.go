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
	root.AddCommand(vcsim.Commands()...)
	root.AddCommand(ova.Command())
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return 1
	}
	return 0
}
