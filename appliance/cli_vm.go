package appliance

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/continuum-cdp/continuum/client"
	"github.com/continuum-cdp/continuum/filter/target"
	"github.com/continuum-cdp/continuum/internal/pki"
)

// ---- vm ----

func newVMCommand() *cobra.Command {
	root := &cobra.Command{Use: "vm", Short: "Inspect protected VMs", Args: cobra.NoArgs}
	o := &clientOpts{}
	disks := &cobra.Command{
		Use:   "disks VM",
		Short: "List a protected VM's disks: key, capacity and the NBD URI that writes through its filter",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			d, err := c.VMDisks(ctxOf(cmd), args[0])
			if err != nil {
				return fmt.Errorf("disks of %s: %w", args[0], err)
			}
			return o.print(cmd.OutOrStdout(), d, func(tw *tabwriter.Writer) {
				row(tw, "KEY", "CAPACITY", "NBD URI")
				for _, k := range d.Disks {
					row(tw, k.Key, k.CapacityBytes, k.NBDURI)
				}
			})
		},
	}
	addClientFlags(disks.Flags(), o)
	root.AddCommand(disks)
	return root
}

// ---- restore-point ----

// rpOpts are the flags of the restore-point commands: the coordinator's
// (the default), or a target filter's admin API reached directly.
type rpOpts struct {
	clientOpts
	filterAPI, filterCA, filterCert, filterKey string
}

func (o *rpOpts) bind(fs *pflag.FlagSet) {
	addClientFlags(fs, &o.clientOpts)
	fs.StringVar(&o.filterAPI, "filter-api", "", "talk to this target filter's admin API (http(s)://HOST:PORT) instead of the coordinator (env "+target.EnvFilterAPI+" when no coordinator is given)")
	fs.StringVar(&o.filterCA, "filter-cacert", "", "CA certificate (PEM) of an https filter API")
	fs.StringVar(&o.filterCert, "filter-cert", "", "client certificate (PEM) for an https filter API")
	fs.StringVar(&o.filterKey, "filter-key", "", "client key (PEM) for --filter-cert")
}

// direct returns the target filter client when the command talks to a
// filter rather than to the coordinator: --filter-api given, or only
// CONTINUUM_FILTER_API set.
func (o *rpOpts) direct() (*target.Client, error) {
	api := o.filterAPI
	if api == "" && o.api == "" && os.Getenv(EnvAPI) == "" {
		api = os.Getenv(target.EnvFilterAPI)
	}
	if api == "" {
		return nil, nil
	}
	if o.output != "table" && o.output != "json" {
		return nil, fmt.Errorf("-o: want table or json, got %q", o.output)
	}
	if o.filterCA == "" && o.filterCert == "" {
		return target.NewClient(api, nil)
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.filterCA != "" {
		pemb, err := os.ReadFile(o.filterCA)
		if err != nil {
			return nil, fmt.Errorf("read --filter-cacert: %w", err)
		}
		ca, err := pki.ParseCertPEM(pemb)
		if err != nil {
			return nil, fmt.Errorf("--filter-cacert %s: %w", o.filterCA, err)
		}
		conf = pki.ClientTLS(ca, nil)
	}
	if (o.filterCert == "") != (o.filterKey == "") {
		return nil, errors.New("--filter-cert and --filter-key go together")
	}
	if o.filterCert != "" {
		pair, err := tls.LoadX509KeyPair(o.filterCert, o.filterKey)
		if err != nil {
			return nil, fmt.Errorf("load --filter-cert/--filter-key: %w", err)
		}
		conf.Certificates = []tls.Certificate{pair}
	}
	return target.NewClient(api, &http.Client{Timeout: time.Hour, Transport: &http.Transport{TLSClientConfig: conf}})
}

// ExportResult is what `restore-point export -o json` prints.
type ExportResult struct {
	VM    string `json:"vm"`
	Disk  int32  `json:"disk"`
	Point uint64 `json:"point"`
	Path  string `json:"path"`
	Bytes int64  `json:"bytes"`
}

func newRestorePointCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "restore-point",
		Short: "List and export the restore points of a protected VM",
		Long: `List and export the restore points of a protected VM.

The coordinator finds the filter that keeps the VM's journal (the one on its
replica's host) and asks it. With --filter-api the command talks to that
filter's admin API directly instead.`,
		Args: cobra.NoArgs,
	}

	lo := &rpOpts{}
	list := &cobra.Command{
		Use:   "list VM",
		Short: "List a VM's restore points, oldest first",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			vm := args[0]
			pts, err := listPoints(ctxOf(cmd), lo, vm)
			if err != nil {
				return fmt.Errorf("list restore points of %s: %w", vm, err)
			}
			return lo.print(cmd.OutOrStdout(), pts, func(tw *tabwriter.Writer) {
				row(tw, "ID", "TIME", "KIND")
				for _, p := range pts {
					row(tw, p.ID, p.Time.UTC().Format(time.RFC3339Nano), p.Kind)
				}
			})
		},
	}
	lo.bind(list.Flags())

	eo := &rpOpts{}
	var disk int32
	var point uint64
	var out string
	export := &cobra.Command{
		Use:   "export VM --disk KEY --point ID --out FILE",
		Short: "Write a disk of a VM at a restore point as a raw (sparse) image",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("disk") || !cmd.Flags().Changed("point") || out == "" {
				return errors.New("--disk, --point and --out are required")
			}
			abs, err := filepath.Abs(out)
			if err != nil {
				return fmt.Errorf("--out %s: %w", out, err)
			}
			vm := args[0]
			n, err := exportPoint(ctxOf(cmd), eo, vm, disk, point, abs)
			if err != nil {
				return err
			}
			res := ExportResult{VM: vm, Disk: disk, Point: point, Path: abs, Bytes: n}
			return eo.print(cmd.OutOrStdout(), res, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "exported %s disk %d at point %d to %s (%d bytes)\n", vm, disk, point, abs, n)
			})
		},
	}
	export.Flags().Int32Var(&disk, "disk", 0, "disk key")
	export.Flags().Uint64Var(&point, "point", 0, "restore point ID")
	export.Flags().StringVar(&out, "out", "", "output file")
	eo.bind(export.Flags())

	so := &rpOpts{}
	var servePoint uint64
	serve := &cobra.Command{
		Use:   "serve VM --point ID --filter-api URL",
		Short: "Serve every disk of a VM at a restore point read-only over NBD (talks to the target filter)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("point") {
				return errors.New("--point is required")
			}
			fc, err := so.direct()
			if err != nil {
				return err
			}
			if fc == nil {
				return errors.New("serve talks to the target filter: give --filter-api http(s)://HOST:PORT")
			}
			res, err := fc.Serve(ctxOf(cmd), args[0], servePoint)
			if err != nil {
				return fmt.Errorf("serve %s at point %d: %w", args[0], servePoint, err)
			}
			return so.print(cmd.OutOrStdout(), res, func(tw *tabwriter.Writer) {
				row(tw, "DISK", "URI")
				for _, e := range res.Exports {
					row(tw, e.Disk, e.URI)
				}
			})
		},
	}
	serve.Flags().Uint64Var(&servePoint, "point", 0, "restore point ID")
	so.bind(serve.Flags())

	root.AddCommand(list, export, serve)
	return root
}

func listPoints(ctx context.Context, o *rpOpts, vm string) ([]client.RestorePointInfo, error) {
	fc, err := o.direct()
	if err != nil {
		return nil, err
	}
	if fc != nil {
		pts, err := fc.Points(ctx, vm)
		if err != nil {
			return nil, err
		}
		out := make([]client.RestorePointInfo, len(pts))
		for i, p := range pts {
			out[i] = client.RestorePointInfo{ID: p.ID, Time: p.Time, Kind: p.Kind}
		}
		return out, nil
	}
	c, err := o.client()
	if err != nil {
		return nil, err
	}
	pts, err := c.RestorePoints(ctx, vm)
	if pts == nil {
		pts = []client.RestorePointInfo{}
	}
	return pts, err
}

func exportPoint(ctx context.Context, o *rpOpts, vm string, disk int32, point uint64, out string) (int64, error) {
	fc, err := o.direct()
	if err != nil {
		return 0, err
	}
	if fc != nil {
		return fc.Export(ctx, vm, disk, point, out)
	}
	c, err := o.client()
	if err != nil {
		return 0, err
	}
	return c.ExportRestorePoint(ctx, vm, disk, point, out)
}
