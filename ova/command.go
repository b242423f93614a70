package ova

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// Command is the hidden "appliance-init" subcommand: the appliance's
// supervisor, started by init at boot. It reads the OVF environment,
// configures the network and runs the role. With --env-file and --dry-run
// it only validates an environment and prints the role's command line.
func Command() *cobra.Command {
	var envFile string
	var dryRun bool
	cmd := &cobra.Command{
		Use:    "appliance-init",
		Short:  "Configure the appliance from its OVF environment and supervise its role",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dryRun {
				return dryRunEnv(cmd.OutOrStdout(), envFile)
			}
			return runAppliance(cmd.Context(), envFile)
		},
	}
	cmd.Flags().StringVar(&envFile, "env-file", "", "read the OVF environment from this file instead of the CD-ROM or guestinfo")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "validate the environment, print the role's command line and exit (needs --env-file)")
	return cmd
}

func dryRunEnv(w io.Writer, envFile string) error {
	if envFile == "" {
		return errors.New("--dry-run needs --env-file")
	}
	data, err := os.ReadFile(envFile)
	if err != nil {
		return fmt.Errorf("read OVF environment: %w", err)
	}
	env, err := ParseEnvironment(bytes.NewReader(data))
	if err != nil {
		return err
	}
	cfg, err := ParseConfig(env.Properties)
	if err != nil {
		fmt.Fprint(w, ProblemReport(err))
		return err
	}
	addr := cfg.IP
	if addr == nil {
		addr = []byte{0, 0, 0, 0}
	}
	fmt.Fprintln(w, "continuum "+strings.Join(redactArgs(cfg.RoleArgs(addr)), " "))
	return nil
}

// ProblemReport renders what the console shows when the appliance cannot
// start its role: every wrong property on its own line, and what to do.
func ProblemReport(err error) string {
	var b strings.Builder
	line := strings.Repeat("=", 72)
	fmt.Fprintf(&b, "\n%s\n Continuum appliance: configuration needs attention\n", line)
	var ce *ConfigError
	switch {
	case errors.As(err, &ce):
		b.WriteString(" These vApp properties of this VM are wrong or missing:\n")
		for _, p := range ce.Problems {
			fmt.Fprintf(&b, "   - %s\n", p.Error())
		}
	case errors.Is(err, ErrNoEnvironment):
		b.WriteString(" No OVF environment was found (neither on the CD-ROM nor in guestinfo).\n")
		fmt.Fprintf(&b, "   (%v)\n", err)
		b.WriteString(" Enable vApp options with the ISO image or VMware Tools transport.\n")
	default:
		fmt.Fprintf(&b, "   %v\n", err)
	}
	b.WriteString(" Fix them in vCenter (VM > Configure > vApp Options) and restart the VM.\n")
	b.WriteString(" The appliance checks again every 30 seconds and stays up meanwhile.\n")
	fmt.Fprintf(&b, "%s\n", line)
	return b.String()
}

// consoleLogger logs to w in text form.
func consoleLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}
