package filter

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/continuum-cdp/continuum/filter/nbd"
	"github.com/continuum-cdp/continuum/filter/source"
	"github.com/continuum-cdp/continuum/filter/target"
	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/pki"
	"github.com/continuum-cdp/continuum/internal/wire"
)

// FileConfig is the static configuration of a filter process (--config
// FILE, JSON); command-line flags given explicitly override it.
type FileConfig struct {
	Role      string `json:"role"` // source | target
	NodeID    string `json:"node_id,omitempty"`
	AdminAddr string `json:"admin_addr,omitempty"`
	NBDAddr   string `json:"nbd_addr,omitempty"`
	Cert      string `json:"cert,omitempty"`
	Key       string `json:"key,omitempty"`
	CA        string `json:"ca,omitempty"`
	Plaintext bool   `json:"plaintext,omitempty"`
	LogLevel  string `json:"log_level,omitempty"`
	// BufferedIO writes the source disks and the journal through the page
	// cache even where the file system offers direct I/O.
	BufferedIO bool `json:"buffered_io,omitempty"`

	// source role
	Datastore   string         `json:"datastore,omitempty"`
	Proxy       string         `json:"proxy,omitempty"`
	BufferBytes int64          `json:"buffer_bytes,omitempty"`
	BlockSize   int64          `json:"block_size,omitempty"`
	Grace       model.Duration `json:"grace,omitempty"`
	// BackpressureWait: how long a guest write waits for room in a full
	// buffer before CBT mode (negative: no wait)
	BackpressureWait model.Duration    `json:"backpressure_wait,omitempty"`
	VMs              []source.VMConfig `json:"vms,omitempty"`

	// target role
	Listen     string         `json:"listen,omitempty"`
	JournalDir string         `json:"journal_dir,omitempty"`
	ExportDir  string         `json:"export_dir,omitempty"`
	ShortTerm  model.Duration `json:"short_term,omitempty"`
	LongTerm   model.Duration `json:"long_term,omitempty"`
	NoSync     bool           `json:"no_sync,omitempty"`
	// JournalMaxBytes caps the journal's files (0: the datastore's free
	// space is the only limit); past it appends fail as on a full disk.
	JournalMaxBytes int64 `json:"journal_max_bytes,omitempty"`
}

type durationValue struct{ d *model.Duration }

func (v durationValue) String() string { return v.d.String() }
func (v durationValue) Type() string   { return "duration" }
func (v durationValue) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*v.d = model.Duration(d)
	return nil
}

// vmValue parses --vm NAME:KEY=SIZE[,KEY=SIZE...] (sizes take K, M, G).
type vmValue struct{ vms *[]source.VMConfig }

func (v vmValue) String() string { return "" }
func (v vmValue) Type() string   { return "vm" }
func (v vmValue) Set(s string) error {
	name, disks, ok := strings.Cut(s, ":")
	if !ok || name == "" || disks == "" {
		return fmt.Errorf("want NAME:KEY=SIZE[,KEY=SIZE...], got %q", s)
	}
	vm := source.VMConfig{Name: name}
	for _, d := range strings.Split(disks, ",") {
		k, sz, ok := strings.Cut(d, "=")
		if !ok {
			return fmt.Errorf("disk %q: want KEY=SIZE", d)
		}
		key, err := strconv.ParseInt(k, 10, 32)
		if err != nil {
			return fmt.Errorf("disk key %q: %w", k, err)
		}
		size, err := parseSize(sz)
		if err != nil {
			return err
		}
		vm.Disks = append(vm.Disks, source.DiskConfig{Key: int32(key), Capacity: size})
	}
	*v.vms = append(*v.vms, vm)
	return nil
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "K"):
		mult, s = 1<<10, strings.TrimSuffix(s, "K")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("size %q: want a positive number with an optional K, M or G", s)
	}
	return n * mult, nil
}

// NewCommand is the filter role: `continuum filter --role source|target ...`.
func NewCommand() *cobra.Command {
	var cfg FileConfig
	var mo managedOptions
	var configFile, genCerts string
	cfg.Grace = model.Duration(30 * time.Second)
	cfg.BackpressureWait = model.Duration(time.Second)
	cmd := &cobra.Command{
		Use:   "filter",
		Short: "Run an I/O filter (source: protected disks over NBD; target: journal and restore)",
		Long: `Run an I/O filter.

A source filter owns the protected disks of its VMs (flat sparse files in
<datastore>/<vm>/), serves each over NBD (export "<vm>/<disk key>") so that
any NBD client writes through it, and streams every write to a source proxy
(initial sync, CBT mode, resync). A target filter keeps the journal of
restore points and serves restores.

With --coordinator (managed mode), one filter process serves one host and
runs both sides: the source side for the VMs that run on the host (their
flat files in <datastore>/<vm>/, NBD exports on --nbd-addr), the target side
for the replicas on it (journal in --journal-dir, data listener --listen).
Its configuration comes from the coordinators with each heartbeat and is
cached in --state-dir; while no coordinator answers, the cached one keeps
running, also across restarts. Its certificate (from the cluster CA,
obtained once with the component token) secures the data hops and the
admin listener, which is HTTPS: /healthz and /metrics are open, the rest
needs a client certificate of the cluster CA (a coordinator's).

  continuum filter --coordinator https://10.0.0.1:8443 --cacert ca.pem \
    --token TOKEN --state-dir /var/lib/continuum/filter --host host-21 \
    --datastore /ds/source --journal-dir /ds/journal --listen :9500 \
    --nbd-addr :10809 --admin-addr :9501

Without a coordinator, the configuration is static: flags or --config FILE
(JSON with the flag names in snake case, and "vms": [{"name", "disks":
[{"key", "capacity"}]}]; explicit flags win).

--gen-certs DIR writes a CA, one certificate for every process of a static
lab (ca.pem, cert.pem, key.pem) and an encryption key (encryption.key), then
exits.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if genCerts != "" {
				return GenerateCerts(genCerts)
			}
			if configFile != "" {
				if err := loadConfig(cmd.Flags(), configFile, &cfg); err != nil {
					return err
				}
			}
			if len(mo.Coordinators) > 0 {
				if mo.Token == "" {
					mo.Token = strings.TrimSpace(os.Getenv(tokenEnv))
				}
				log, err := newLogger(cfg.LogLevel)
				if err != nil {
					return err
				}
				return runManaged(cmd.Context(), cmd, cfg, mo, log)
			}
			return run(cmd.Context(), cmd, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "JSON configuration file")
	f.StringVar(&genCerts, "gen-certs", "", "write a CA, a certificate and an encryption key into DIR and exit")
	f.StringVar(&cfg.Role, "role", "", "source or target")
	f.StringVar(&cfg.NodeID, "node-id", "", "name of this filter in logs and handshakes")
	f.StringVar(&cfg.AdminAddr, "admin-addr", "", "HTTP listener for /healthz, /metrics and the API")
	f.StringVar(&cfg.NBDAddr, "nbd-addr", "127.0.0.1:10809", "NBD listener (source: protected disks; target: served points)")
	f.StringVar(&cfg.Cert, "cert", "", "PEM certificate of this filter")
	f.StringVar(&cfg.Key, "key", "", "PEM private key of this filter")
	f.StringVar(&cfg.CA, "ca", "", "PEM CA certificate that peers' certificates must chain to")
	f.BoolVar(&cfg.Plaintext, "plaintext", false, "no TLS on the data path (benchmarks on loopback only)")
	f.StringVar(&cfg.LogLevel, "log-level", "info", "debug, info, warn or error")
	f.BoolVar(&cfg.BufferedIO, "buffered-io", false, "write disks and the journal through the page cache even where the file system offers direct I/O")
	f.StringVar(&cfg.Datastore, "datastore", "", "source role: datastore directory holding the VMs' folders")
	f.StringVar(&cfg.Proxy, "proxy", "", "source role: address of the source proxy (of the VMs that do not name theirs)")
	f.Int64Var(&cfg.BufferBytes, "buffer-bytes", 256<<20, "source role: unacknowledged bytes per VM before CBT mode")
	f.Int64Var(&cfg.BlockSize, "block-size", 64<<10, "source role: CBT block size")
	f.Var(durationValue{&cfg.Grace}, "grace", "source role: how long the proxy may be unreachable before CBT mode")
	f.Var(durationValue{&cfg.BackpressureWait}, "backpressure-wait", "source role: how long a guest write waits for room in a full buffer before CBT mode (negative: no wait)")
	f.Var(vmValue{&cfg.VMs}, "vm", "source role: protected VM as NAME:KEY=SIZE[,KEY=SIZE...] (repeatable)")
	f.StringVar(&cfg.Listen, "listen", "", "target role: data listener for target proxies")
	f.StringVar(&cfg.JournalDir, "journal-dir", "", "target role: target datastore directory for the journal")
	f.StringVar(&cfg.ExportDir, "export-dir", "", "target role: the only directory exports may write into")
	f.Var(durationValue{&cfg.ShortTerm}, "short-term", "target role: short-term retention (0 keeps all)")
	f.Var(durationValue{&cfg.LongTerm}, "long-term", "target role: long-term retention (0 keeps all)")
	f.BoolVar(&cfg.NoSync, "no-sync", false, "target role: do not fsync the journal (benchmarks only)")
	f.StringSliceVar(&mo.Coordinators, "coordinator", nil, "managed mode: https://HOST:PORT of a coordinator (repeatable or comma-separated)")
	f.StringVar(&mo.Token, "token", "", "managed mode: component token (default $"+tokenEnv+")")
	f.StringVar(&mo.CACert, "cacert", "", "managed mode: PEM of the cluster CA")
	f.StringVar(&mo.StateDir, "state-dir", "", "managed mode: keeps the cached configuration and the certificate")
	f.StringVar(&mo.Host, "host", "", "managed mode: this filter's ESXi host (MoRef or name)")
	f.StringVar(&mo.VCenterID, "vcenter-id", "", "managed mode: the host's vCenter (needed with several vCenters)")
	f.DurationVar(&mo.Interval, "heartbeat-interval", 2*time.Second, "managed mode: heartbeat period")
	f.Int64Var(&cfg.JournalMaxBytes, "journal-max-bytes", 0, "target role: bytes the journal's files may use (0: no cap); past it appends fail as on a full datastore")
	return cmd
}

func loadConfig(fs *pflag.FlagSet, path string, cfg *FileConfig) error {
	explicit := map[string]string{}
	fs.Visit(func(f *pflag.Flag) {
		if f.Name != "vm" {
			explicit[f.Name] = f.Value.String()
		}
	})
	flagVMs := cfg.VMs
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(cfg); err != nil {
		return fmt.Errorf("parse config %s: %w", path, err)
	}
	cfg.VMs = append(cfg.VMs, flagVMs...)
	for name, v := range explicit {
		if name == "config" || name == "gen-certs" {
			continue
		}
		if err := fs.Set(name, v); err != nil {
			return fmt.Errorf("flag --%s: %w", name, err)
		}
	}
	return nil
}

func tlsConfig(cfg FileConfig) (*tls.Config, error) {
	if cfg.Plaintext {
		return nil, nil
	}
	if cfg.Cert == "" || cfg.Key == "" || cfg.CA == "" {
		return nil, errors.New("TLS needs --cert, --key and --ca (or --plaintext)")
	}
	pair, err := tls.LoadX509KeyPair(cfg.Cert, cfg.Key)
	if err != nil {
		return nil, fmt.Errorf("load certificate: %w", err)
	}
	caPEM, err := os.ReadFile(cfg.CA)
	if err != nil {
		return nil, fmt.Errorf("read CA: %w", err)
	}
	ca, err := pki.ParseCertPEM(caPEM)
	if err != nil {
		return nil, fmt.Errorf("parse CA %s: %w", cfg.CA, err)
	}
	return pki.RaftServerTLS(ca, pair), nil
}

// GenerateCerts writes ca.pem, ca-key.pem, cert.pem, key.pem (valid for
// 127.0.0.1 and localhost, client and server) and encryption.key into dir.
func GenerateCerts(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	ca, err := pki.NewCA("continuum static lab CA")
	if err != nil {
		return fmt.Errorf("create CA: %w", err)
	}
	leaf, err := ca.Issue("continuum data path", []string{"127.0.0.1", "localhost", "::1"}, 5*365*24*time.Hour)
	if err != nil {
		return fmt.Errorf("issue certificate: %w", err)
	}
	caKey, err := pki.KeyPEM(ca.Key)
	if err != nil {
		return fmt.Errorf("encode CA key: %w", err)
	}
	leafKey, err := pki.KeyPEM(leaf.Key)
	if err != nil {
		return fmt.Errorf("encode key: %w", err)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("encryption key: %w", err)
	}
	files := []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{"ca.pem", pki.CertPEM(ca.Cert), 0o644},
		{"ca-key.pem", caKey, 0o600},
		{"cert.pem", append(pki.CertPEM(leaf.Cert), pki.CertPEM(ca.Cert)...), 0o644},
		{"key.pem", leafKey, 0o600},
		{"encryption.key", []byte(hex.EncodeToString(key) + "\n"), 0o600},
	}
	for _, f := range files {
		if err := pki.WriteFile(filepath.Join(dir, f.name), f.data, f.perm); err != nil {
			return fmt.Errorf("write %s: %w", f.name, err)
		}
	}
	return nil
}

func newLogger(levelName string) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(levelName)); err != nil {
		return nil, fmt.Errorf("log level %q: %w", levelName, err)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})), nil
}

func run(ctx context.Context, cmd *cobra.Command, cfg FileConfig) error {
	log, err := newLogger(cfg.LogLevel)
	if err != nil {
		return err
	}
	tlsCfg, err := tlsConfig(cfg)
	if err != nil {
		return err
	}
	switch cfg.Role {
	case "source":
		return runSource(ctx, cmd, cfg, tlsCfg, log.With("role", "source-filter"))
	case "target":
		return runTarget(ctx, cmd, cfg, tlsCfg, log.With("role", "target-filter"))
	}
	return fmt.Errorf("--role must be source or target, not %q", cfg.Role)
}

func runSource(ctx context.Context, cmd *cobra.Command, cfg FileConfig, tlsCfg *tls.Config, log *slog.Logger) error {
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		d := &net.Dialer{KeepAlive: 15 * time.Second}
		if tlsCfg == nil {
			return d.DialContext(ctx, "tcp", addr)
		}
		return wire.DialTLS(ctx, d, addr, tlsCfg)
	}
	opts := source.Options{
		NodeID: cfg.NodeID, Datastore: cfg.Datastore, VMs: cfg.VMs, BufferBytes: cfg.BufferBytes,
		BlockSize: cfg.BlockSize, Grace: cfg.Grace.D(), BackpressureWait: cfg.BackpressureWait.D(), Logger: log,
		BufferedIO: cfg.BufferedIO,
		// a VM of the configuration file may name its own proxy
		DialProxy: dial,
	}
	if proxyAddr := cfg.Proxy; proxyAddr != "" {
		opts.Dial = func(ctx context.Context) (net.Conn, error) { return dial(ctx, proxyAddr) }
	}
	svc, err := source.New(opts)
	if err != nil {
		if cfg.Proxy == "" {
			return fmt.Errorf("source role: --proxy is required unless every vm names its proxy: %w", err)
		}
		return err
	}
	defer svc.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := svc.Register(reg); err != nil {
		return err
	}
	srv := nbd.NewServer(log.With("component", "nbd"), nbd.WithRegisterer(reg))
	defer srv.Close()
	nl, err := net.Listen("tcp", cfg.NBDAddr)
	if err != nil {
		return fmt.Errorf("listen nbd %s: %w", cfg.NBDAddr, err)
	}
	for _, d := range svc.Disks() {
		if err := srv.AddExport(nbd.Export{Name: d.ExportName(), Description: d.Path(), Backend: d}); err != nil {
			return fmt.Errorf("export disk %s: %w", d.ExportName(), err)
		}
	}
	if cfg.AdminAddr != "" {
		al, err := net.Listen("tcp", cfg.AdminAddr)
		if err != nil {
			return fmt.Errorf("listen admin %s: %w", cfg.AdminAddr, err)
		}
		hs := &http.Server{Handler: svc.Handler(reg), ReadHeaderTimeout: 10 * time.Second}
		go hs.Serve(al)
		defer hs.Close()
	}
	if err := svc.Start(ctx); err != nil {
		return err
	}
	nbdErr := make(chan error, 1)
	go func() { nbdErr <- srv.Serve(nl) }()
	out := cmd.OutOrStdout()
	for _, d := range svc.Disks() {
		fmt.Fprintf(out, "disk %s %s %s\n", d.ExportName(), nbd.URI(nl.Addr().String(), d.ExportName()), d.Path())
	}
	fmt.Fprintln(out, "filter ready")
	select {
	case <-ctx.Done():
		nl.Close()
		return nil
	case err := <-nbdErr:
		return fmt.Errorf("nbd server: %w", err)
	}
}

func runTarget(ctx context.Context, cmd *cobra.Command, cfg FileConfig, tlsCfg *tls.Config, log *slog.Logger) error {
	if cfg.Listen == "" {
		return errors.New("target role: --listen is required")
	}
	tc := target.Config{
		NodeID: cfg.NodeID, JournalDir: cfg.JournalDir, ListenAddr: cfg.Listen, TLS: tlsCfg,
		AdminAddr: cfg.AdminAddr, NBDAddr: cfg.NBDAddr, ExportDir: cfg.ExportDir,
		ShortTerm: cfg.ShortTerm.D(), LongTerm: cfg.LongTerm.D(), Logger: log,
	}
	tc.Journal.NoSync = cfg.NoSync
	tc.Journal.BufferedIO = cfg.BufferedIO
	if cfg.JournalMaxBytes < 0 {
		return fmt.Errorf("target role: --journal-max-bytes must not be negative, got %d", cfg.JournalMaxBytes)
	}
	tc.Journal.MaxBytes = cfg.JournalMaxBytes
	svc, err := target.New(tc)
	if err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "filter ready data=%s admin=%s nbd=%s\n", svc.Addr(), svc.AdminAddr(), svc.NBDAddr())
	return svc.Run(ctx)
}
