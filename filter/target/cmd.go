package target

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

// EnvFilterAPI stands in for --filter-api.
const EnvFilterAPI = "CONTINUUM_FILTER_API"

type rpOpts struct {
	api, output       string
	cacert, cert, key string
}

func (o *rpOpts) client() (*Client, error) {
	if o.output != "table" && o.output != "json" {
		return nil, fmt.Errorf("-o: want table or json, got %q", o.output)
	}
	api := o.api
	if api == "" {
		api = os.Getenv(EnvFilterAPI)
	}
	if api == "" {
		return nil, errors.New("no target filter API given: use --filter-api http://HOST:PORT or set " + EnvFilterAPI)
	}
	if o.cacert == "" && o.cert == "" {
		return NewClient(api, nil)
	}
	conf, err := o.tlsConfig()
	if err != nil {
		return nil, err
	}
	return NewClient(api, &http.Client{Timeout: time.Hour, Transport: &http.Transport{TLSClientConfig: conf}})
}

// tlsConfig verifies the filter against --cacert and presents --cert.
// Only the chain is checked, not the host name: filters are reached by
// whatever address the operator has.
func (o *rpOpts) tlsConfig() (*tls.Config, error) {
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.cacert != "" {
		pem, err := os.ReadFile(o.cacert)
		if err != nil {
			return nil, fmt.Errorf("read --cacert: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--cacert %s: no PEM certificate", o.cacert)
		}
		conf.InsecureSkipVerify = true
		conf.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("filter presented no certificate")
			}
			certs := make([]*x509.Certificate, len(raw))
			for i, r := range raw {
				c, err := x509.ParseCertificate(r)
				if err != nil {
					return fmt.Errorf("filter certificate: %w", err)
				}
				certs[i] = c
			}
			inter := x509.NewCertPool()
			for _, c := range certs[1:] {
				inter.AddCert(c)
			}
			_, err := certs[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
			return err
		}
	}
	if (o.cert == "") != (o.key == "") {
		return nil, errors.New("--cert and --key go together")
	}
	if o.cert != "" {
		pair, err := tls.LoadX509KeyPair(o.cert, o.key)
		if err != nil {
			return nil, fmt.Errorf("load --cert/--key: %w", err)
		}
		conf.Certificates = []tls.Certificate{pair}
	}
	return conf, nil
}

func (o *rpOpts) print(w io.Writer, v any, table func(tw *tabwriter.Writer)) error {
	if o.output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

// NewRestorePointCommand is `restore-point`: list, export and serve the
// restore points of a VM, or purge them, by talking to the target filter's
// admin API.
func NewRestorePointCommand() *cobra.Command {
	o := &rpOpts{}
	root := &cobra.Command{
		Use:   "restore-point",
		Short: "List, export, serve and purge restore points of a replicated VM",
		Args:  cobra.NoArgs,
	}
	root.PersistentFlags().StringVar(&o.api, "filter-api", "", "target filter admin API URL (env "+EnvFilterAPI+")")
	root.PersistentFlags().StringVarP(&o.output, "output", "o", "table", "output format: table or json")
	root.PersistentFlags().StringVar(&o.cacert, "filter-cacert", "", "CA certificate (PEM) of an https filter API")
	root.PersistentFlags().StringVar(&o.cert, "filter-cert", "", "client certificate (PEM) for an https filter API")
	root.PersistentFlags().StringVar(&o.key, "filter-key", "", "client key (PEM) for --filter-cert")

	list := &cobra.Command{
		Use:   "list VM",
		Short: "List a VM's restore points, oldest first",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			return runList(cmd.Context(), c, o, cmd.OutOrStdout(), args[0])
		},
	}

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
			c, err := o.client()
			if err != nil {
				return err
			}
			return runExport(cmd.Context(), c, o, cmd.OutOrStdout(), args[0], disk, point, out)
		},
	}
	export.Flags().Int32Var(&disk, "disk", 0, "disk key")
	export.Flags().Uint64Var(&point, "point", 0, "restore point ID")
	export.Flags().StringVar(&out, "out", "", "output file")

	var servePoint uint64
	serve := &cobra.Command{
		Use:   "serve VM --point ID",
		Short: "Serve every disk of a VM at a restore point read-only over NBD",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("point") {
				return errors.New("--point is required")
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			return runServe(cmd.Context(), c, o, cmd.OutOrStdout(), args[0], servePoint)
		},
	}
	serve.Flags().Uint64Var(&servePoint, "point", 0, "restore point ID")

	var yes bool
	purge := &cobra.Command{
		Use:   "purge VM --yes",
		Short: "Delete every restore point and the replica disks of a VM the filter no longer replicates",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !yes {
				return fmt.Errorf("purge deletes every restore point of %s for good: add --yes", args[0])
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			if err := c.RemoveVM(ctxOr(cmd.Context()), args[0]); err != nil {
				return fmt.Errorf("purge %s: %w", args[0], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "purged the restore points and replica disks of %s\n", args[0])
			return nil
		},
	}
	purge.Flags().BoolVar(&yes, "yes", false, "confirm: the restore points cannot be recovered")

	root.AddCommand(list, export, serve, purge)
	return root
}

func ctxOr(ctx context.Context) context.Context {
	if ctx == nil {
		return context.Background()
	}
	return ctx
}

func runList(ctx context.Context, c *Client, o *rpOpts, w io.Writer, vm string) error {
	pts, err := c.Points(ctxOr(ctx), vm)
	if err != nil {
		return fmt.Errorf("list restore points of %s: %w", vm, err)
	}
	return o.print(w, pts, func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "ID\tTIME\tKIND")
		for _, p := range pts {
			fmt.Fprintf(tw, "%d\t%s\t%s\n", p.ID, p.Time.UTC().Format(time.RFC3339Nano), p.Kind)
		}
	})
}

// ExportResultCLI is what `restore-point export -o json` prints.
type ExportResultCLI struct {
	VM    string `json:"vm"`
	Disk  int32  `json:"disk"`
	Point uint64 `json:"point"`
	Path  string `json:"path"`
	Bytes int64  `json:"bytes"`
}

func runExport(ctx context.Context, c *Client, o *rpOpts, w io.Writer, vm string, disk int32, point uint64, out string) error {
	abs, err := filepath.Abs(out)
	if err != nil {
		return fmt.Errorf("--out %s: %w", out, err)
	}
	n, err := c.Export(ctxOr(ctx), vm, disk, point, abs)
	if err != nil {
		return err
	}
	res := ExportResultCLI{VM: vm, Disk: disk, Point: point, Path: abs, Bytes: n}
	return o.print(w, res, func(tw *tabwriter.Writer) {
		fmt.Fprintf(tw, "exported %s disk %d at point %d to %s (%d bytes)\n", vm, disk, point, abs, n)
	})
}

func runServe(ctx context.Context, c *Client, o *rpOpts, w io.Writer, vm string, point uint64) error {
	res, err := c.Serve(ctxOr(ctx), vm, point)
	if err != nil {
		return fmt.Errorf("serve %s at point %d: %w", vm, point, err)
	}
	return o.print(w, res, func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "DISK\tURI")
		for _, e := range res.Exports {
			fmt.Fprintf(tw, "%d\t%s\n", e.Disk, e.URI)
		}
	})
}
