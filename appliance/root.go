package appliance

import (
	"github.com/spf13/cobra"
)

// Version is set at build time with -ldflags "-X ...appliance.Version=...".
var Version = "dev"

// NewRootCommand builds the continuum command tree for the roles and client
// commands that live in this package and below it.
func NewRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "continuum",
		Short:         "Continuous data protection for VMware vSphere and Cloud Director",
		Version:       Version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	return root
}
