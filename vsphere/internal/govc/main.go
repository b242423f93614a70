// Command govc is govmomi's unmodified govc command line, built from the
// library's cli package, so tests can check with an independent client what
// the adapter did to vCenter.
package main

import (
	"os"

	"github.com/vmware/govmomi/cli"
	_ "github.com/vmware/govmomi/cli/about"
	_ "github.com/vmware/govmomi/cli/device"
	_ "github.com/vmware/govmomi/cli/storage/policy"
	_ "github.com/vmware/govmomi/cli/vm"
	_ "github.com/vmware/govmomi/cli/vm/policy"
)

func main() { os.Exit(cli.Run(os.Args[1:])) }
