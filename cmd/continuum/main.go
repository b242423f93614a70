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
	"github.com/continuum-cdp/continuum/vcsim"
)

func main() { os.Exit(run()) }

func run() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := appliance.NewRootCommand()
	root.AddCommand(vcsim.Commands()...)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return 1
	}
	return 0
}
