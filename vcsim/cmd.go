package vcsim

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
)

// Commands returns the commands this package contributes: "vcsim" (a
// standalone simulated vCenter). The lab supervisor adds "lab" beside it.
func Commands() []*cobra.Command {
	return append([]*cobra.Command{newVcsimCommand()}, extraCommands...)
}

// extraCommands lets other files of this package (the lab supervisor)
// contribute commands without editing this one.
var extraCommands []*cobra.Command

func newVcsimCommand() *cobra.Command {
	o := DefaultOptions()
	var verbose bool
	cmd := &cobra.Command{
		Use:   "vcsim",
		Short: "Serve a simulated vCenter with the lab inventory",
		Long: `Serve a simulated vCenter over HTTPS (self-signed certificate) on a loopback
address, with a source cluster, a target cluster, protected VMs and VM proxies.
Login: ` + Username + ` / ` + Password + `.

When serving, writes DIR/vcsim.env (GOVC_URL, GOVC_USERNAME, GOVC_PASSWORD,
GOVC_INSECURE, CONTINUUM_VCSIM_DATASTORES), prints "vcsim ready" and runs until
interrupted. Datastores are directories under DIR/datastores.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.Listen == "" {
				return fmt.Errorf("vcsim: --listen HOST:PORT is required")
			}
			if o.Dir == "" {
				return fmt.Errorf("vcsim: --dir must not be empty")
			}
			level := slog.LevelWarn
			if verbose {
				level = slog.LevelInfo
			}
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
			ctx := cmd.Context()
			s, err := Start(ctx, o, log)
			if err != nil {
				return err
			}
			defer s.Close()
			if err := s.EnvFile(filepath.Join(s.Dir, "vcsim.env")); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "vcsim ready")
			<-ctx.Done()
			log.Info("vcsim stopping")
			return nil
		},
	}
	f := cmd.Flags()
	wd, _ := os.Getwd()
	o.Dir = wd
	f.StringVar(&o.Listen, "listen", "", "loopback address to serve on, HOST:PORT (required)")
	f.StringVar(&o.Dir, "dir", o.Dir, "directory for vcsim.env and the datastore directories")
	f.IntVar(&o.SourceHosts, "source-hosts", o.SourceHosts, "hosts in the source cluster")
	f.IntVar(&o.SourceDatastores, "source-datastores", o.SourceDatastores, "datastores shared by the source hosts")
	f.IntVar(&o.ProtectedVMs, "vms", o.ProtectedVMs, "VMs to protect in the source cluster (negative: none)")
	f.IntVar(&o.TargetHosts, "target-hosts", o.TargetHosts, "hosts in the target cluster")
	f.IntVar(&o.TargetDatastores, "target-datastores", o.TargetDatastores, "datastores shared by the target hosts")
	f.IntVar(&o.ProxyVMs, "proxy-vms", o.ProxyVMs, "VM proxies per cluster (negative: none)")
	f.Int64SliceVar(&o.DiskSizesMB, "disk-sizes-mb", o.DiskSizesMB, "disk sizes cycled through for the protected VMs")
	f.StringVar(&o.Site, "site", "", `serve one site only, "source" or "target" (run two for a vCenter per site)`)
	f.BoolVar(&verbose, "verbose", false, "log at info level")
	return cmd
}
