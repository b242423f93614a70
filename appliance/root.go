package appliance

import (
	"github.com/spf13/cobra"
)

// Version is set at build time with -ldflags "-X ...appliance.Version=...".
var Version = "dev"

// NewRootCommand builds the continuum command tree for the roles and client
// commands that live in this package and below it. roleCommands are role
// commands written elsewhere (proxy, filter, ...): a "proxy" or "filter"
// among them receives the client subcommands; otherwise a plain parent of
// that name is created for them.
func NewRootCommand(roleCommands ...*cobra.Command) *cobra.Command {
	root := &cobra.Command{
		Use:           "continuum",
		Short:         "Continuous data protection for VMware vSphere and Cloud Director",
		Version:       Version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	var proxyCmd, filterCmd *cobra.Command
	for _, c := range roleCommands {
		switch c.Name() {
		case "proxy":
			proxyCmd = c
		case "filter":
			filterCmd = c
		}
		root.AddCommand(c)
	}
	if proxyCmd == nil {
		proxyCmd = &cobra.Command{Use: "proxy", Short: "Manage CDP proxies registered with the coordinator"}
		root.AddCommand(proxyCmd)
	}
	AddProxyClientCommands(proxyCmd)
	if filterCmd == nil {
		filterCmd = &cobra.Command{Use: "filter", Short: "Manage the I/O filter on clusters"}
		root.AddCommand(filterCmd)
	}
	AddFilterClientCommands(filterCmd)
	root.AddCommand(newCoordinatorCommand(), newClusterCommand(), newVCenterCommand(), newPolicyCommand(),
		newDrillCommand(), newLabCommand(), newVMCommand(), newRestorePointCommand())
	return root
}
