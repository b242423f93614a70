package proxy

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/pki"
	"github.com/continuum-cdp/continuum/internal/wire"
)

// FileConfig is the static configuration of a proxy process (--config
// FILE, JSON); command-line flags given explicitly override it.
type FileConfig struct {
	Role      string `json:"role"` // source | target
	NodeID    string `json:"node_id,omitempty"`
	Listen    string `json:"listen"`
	AdminAddr string `json:"admin_addr,omitempty"`
	Cert      string `json:"cert,omitempty"`
	Key       string `json:"key,omitempty"`
	CA        string `json:"ca,omitempty"`
	// Plaintext disables TLS on every hop of this process (benchmarks only).
	Plaintext bool `json:"plaintext,omitempty"`
	// EncryptionKeyFile holds the AES-256 key (64 hex digits) of the traffic
	// rule: the source encrypts points with it, the target requires it.
	EncryptionKeyFile string `json:"encryption_key_file,omitempty"`
	LogLevel          string `json:"log_level,omitempty"`

	// source role
	Target              string         `json:"target,omitempty"`
	RPO                 model.Duration `json:"rpo,omitempty"`
	CutBytes            int64          `json:"cut_bytes,omitempty"`
	Codec               string         `json:"codec,omitempty"`
	ThrottleBytesPerSec int64          `json:"throttle_bytes_per_sec,omitempty"`
	// TrafficRules choose encryption and throttle per target connection
	// (first match on source and target address wins) and, on both
	// roles, what protects the connections with host filters
	// (host_traffic).
	TrafficRules []model.TrafficRule `json:"traffic_rules,omitempty"`
	MemoryBytes  int64               `json:"memory_bytes,omitempty"`
	SpillDir     string              `json:"spill_dir,omitempty"`
	SpillBytes   int64               `json:"spill_bytes,omitempty"`

	// target role
	TargetFilter  string            `json:"target_filter,omitempty"`
	TargetFilters map[string]string `json:"target_filters,omitempty"` // per VM
	VMs           []string          `json:"vms,omitempty"`
}

// durationValue binds a model.Duration to a flag.
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

// NewCommand is the proxy role: `continuum proxy --role source|target ...`,
// or managed by coordinators with --coordinator.
func NewCommand() *cobra.Command {
	var cfg FileConfig
	var mf managedFlags
	var configFile string
	cfg.RPO = model.Duration(5 * time.Second)
	cfg.Codec = wire.DefaultCodec.String()
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Run a CDP proxy (source: cut, compress, encrypt, throttle; target: verify, decrypt, deliver)",
		Long: `Run a CDP proxy.

A source proxy accepts the write streams of source filters (one TLS
connection per VM), cuts a restore point per VM every RPO, compresses,
encrypts when an encryption key is configured, throttles and sends the
points to a target proxy; it keeps every point until the target made it
durable. A target proxy verifies, decrypts and decompresses points and
delivers them to the target filter.

Without a coordinator, the configuration is static: flags or --config FILE
(JSON with the flag names in snake case; explicit flags win).

With --coordinator (managed mode) the proxy takes its VMs from the
coordinators: it heartbeats with the component token, gets a certificate of
the cluster CA for its data hops and admin listener, and is the source
proxy of every task naming its --listen address (or --advertise) as source
proxy and the target proxy of every task naming it as target proxy. It
keeps its last configuration in --state-dir and runs it while no
coordinator answers.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configFile != "" {
				if err := loadConfig(cmd.Flags(), configFile, &cfg); err != nil {
					return err
				}
			}
			if len(mf.Coordinators) > 0 {
				if mf.Token == "" {
					mf.Token = os.Getenv("CONTINUUM_COMPONENT_TOKEN")
				}
				return runManaged(cmd.Context(), cfg, mf)
			}
			return runProxy(cmd.Context(), cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "JSON configuration file")
	f.StringVar(&cfg.Role, "role", "", "source or target")
	f.StringVar(&cfg.NodeID, "node-id", "", "name of this proxy in logs and handshakes")
	f.StringVar(&cfg.Listen, "listen", "", "data listener address (filters or source proxies connect here)")
	f.StringVar(&cfg.AdminAddr, "admin-addr", "", "HTTP listener for /healthz, /metrics and /v1/status")
	f.StringVar(&cfg.Cert, "cert", "", "PEM certificate of this proxy")
	f.StringVar(&cfg.Key, "key", "", "PEM private key of this proxy")
	f.StringVar(&cfg.CA, "ca", "", "PEM CA certificate that peers' certificates must chain to")
	f.BoolVar(&cfg.Plaintext, "plaintext", false, "no TLS on any hop (benchmarks on loopback only)")
	f.StringVar(&cfg.EncryptionKeyFile, "encryption-key", "", "file with the AES-256 point key (64 hex digits); empty: no encryption")
	f.StringVar(&cfg.LogLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&cfg.Target, "target", "", "source role: address of the target proxy")
	f.Var(durationValue{&cfg.RPO}, "rpo", "source role: interval between restore points")
	f.Int64Var(&cfg.CutBytes, "cut-bytes", 4<<20, "source role: cut early when a VM's open interval holds this many bytes")
	f.StringVar(&cfg.Codec, "codec", cfg.Codec, "source role: compression (none, s2, zstd)")
	f.Int64Var(&cfg.ThrottleBytesPerSec, "throttle", 0, "source role: bandwidth limit toward the target in bytes/s (0: none)")
	f.Var(trafficRulesValue{&cfg.TrafficRules}, "traffic-rule", "name=N,source=CIDR,target=CIDR,encrypt=BOOL,throttle=BYTES/S,host_traffic=encrypted|integrity (repeatable; first match wins): toward target proxies (source role) and between host filters and this proxy (both roles)")
	f.Int64Var(&cfg.MemoryBytes, "memory-bytes", 512<<20, "source role: memory for open intervals and unacknowledged points")
	f.StringVar(&cfg.SpillDir, "spill-dir", "", "source role: directory for points beyond the memory limit")
	f.Int64Var(&cfg.SpillBytes, "spill-bytes", 4<<30, "source role: size of the spill directory")
	f.StringVar(&cfg.TargetFilter, "target-filter", "", "target role: address of the target filter")
	f.StringSliceVar(&mf.Coordinators, "coordinator", nil, "managed mode: https://host:port of a coordinator (repeatable or comma-separated)")
	f.StringVar(&mf.Token, "token", "", "managed mode: component token (default $CONTINUUM_COMPONENT_TOKEN)")
	f.StringVar(&mf.CACert, "cacert", "", "managed mode: PEM of the cluster CA")
	f.StringVar(&mf.StateDir, "state-dir", "", "managed mode: directory for the cached configuration and this proxy's certificate")
	f.StringVar(&mf.ProxyID, "proxy-id", "", "managed mode: ID (or name) of this proxy's record")
	f.StringVar(&mf.Advertise, "advertise", "", "managed mode: data address as registered (default --listen)")
	return cmd
}

// loadConfig reads the JSON file, then re-applies the flags that were set
// explicitly so that they win.
func loadConfig(fs *pflag.FlagSet, path string, cfg *FileConfig) error {
	explicit := map[string]string{}
	fs.Visit(func(f *pflag.Flag) { explicit[f.Name] = f.Value.String() })
	flagRules := append([]model.TrafficRule(nil), cfg.TrafficRules...)
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(cfg); err != nil {
		return fmt.Errorf("parse config %s: %w", path, err)
	}
	for name, v := range explicit {
		if name == "config" {
			continue
		}
		if name == "traffic-rule" {
			// rules given as flags replace the file's list
			cfg.TrafficRules = flagRules
			continue
		}
		if err := fs.Set(name, v); err != nil {
			return fmt.Errorf("flag --%s: %w", name, err)
		}
	}
	return nil
}

// TLSConfig builds the mutual TLS configuration of a data-path hop from PEM
// files: the peer must present a certificate of the same CA.
func TLSConfig(certFile, keyFile, caFile string) (*tls.Config, error) {
	if certFile == "" || keyFile == "" || caFile == "" {
		return nil, errors.New("TLS needs --cert, --key and --ca (or --plaintext)")
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load certificate: %w", err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read CA: %w", err)
	}
	ca, err := pki.ParseCertPEM(caPEM)
	if err != nil {
		return nil, fmt.Errorf("parse CA %s: %w", caFile, err)
	}
	return pki.RaftServerTLS(ca, pair), nil
}

// LoadKey reads an AES-256 key file (64 hex digits, or 32 raw bytes).
func LoadKey(path string) (*wire.Sealer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read encryption key: %w", err)
	}
	key := b
	if s := strings.TrimSpace(string(b)); len(s) == 2*wire.KeySize {
		if key, err = hex.DecodeString(s); err != nil {
			return nil, fmt.Errorf("encryption key %s: %w", path, err)
		}
	}
	return wire.NewSealer(key)
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: %w", level, err)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

func runProxy(ctx context.Context, cfg FileConfig) error {
	log, err := newLogger(cfg.LogLevel)
	if err != nil {
		return err
	}
	if cfg.Listen == "" {
		return errors.New("--listen is required")
	}
	var tlsCfg *tls.Config
	if !cfg.Plaintext {
		if tlsCfg, err = TLSConfig(cfg.Cert, cfg.Key, cfg.CA); err != nil {
			return err
		}
	}
	var sealer *wire.Sealer
	if cfg.EncryptionKeyFile != "" {
		if sealer, err = LoadKey(cfg.EncryptionKeyFile); err != nil {
			return err
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })

	l, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	defer l.Close()
	var serve func() error
	var closeFn func() error
	switch cfg.Role {
	case "source":
		if cfg.Target == "" {
			return errors.New("source role: --target is required")
		}
		codec, err := wire.ParseCodec(cfg.Codec)
		if err != nil {
			return err
		}
		target := cfg.Target
		p, err := NewSource(SourceConfig{
			NodeID: cfg.NodeID,
			DialTarget: func(ctx context.Context) (net.Conn, error) {
				return dialData(ctx, target, tlsCfg)
			},
			RPO: cfg.RPO.D(), CutBytes: cfg.CutBytes, Codec: codec, Sealer: sealer,
			ThrottleBytesPerSec: cfg.ThrottleBytesPerSec, Rules: cfg.TrafficRules, MemoryBytes: cfg.MemoryBytes,
			SpillDir: cfg.SpillDir, SpillBytes: cfg.SpillBytes, Logger: log.With("role", "source-proxy"),
		})
		if err != nil {
			return err
		}
		if err := p.Register(reg); err != nil {
			return fmt.Errorf("register metrics: %w", err)
		}
		mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(p.Status())
		})
		sl := l
		if tlsCfg != nil {
			sl = wire.TLSListener(l, tlsCfg)
		}
		serve = func() error { return p.Serve(sl) }
		closeFn = p.Close
	case "target":
		if cfg.TargetFilter == "" && len(cfg.TargetFilters) == 0 {
			return errors.New("target role: --target-filter is required")
		}
		t, err := NewTarget(TargetConfig{
			NodeID: cfg.NodeID, TLS: tlsCfg, FilterAddr: cfg.TargetFilter, FilterAddrs: cfg.TargetFilters,
			FilterTLS: tlsCfg, Sealer: sealer, VMs: cfg.VMs, Rules: cfg.TrafficRules, Logger: log.With("role", "target-proxy"), Registerer: reg,
		})
		if err != nil {
			return err
		}
		serve = func() error { return t.Serve(ctx, l) }
		closeFn = t.Close
	default:
		return fmt.Errorf("--role must be source or target, not %q", cfg.Role)
	}
	if cfg.AdminAddr != "" {
		al, err := net.Listen("tcp", cfg.AdminAddr)
		if err != nil {
			return fmt.Errorf("listen admin %s: %w", cfg.AdminAddr, err)
		}
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(al)
		defer srv.Close()
		log.Info("admin listening", "addr", al.Addr().String())
	}
	log.Info("proxy listening", "role", cfg.Role, "addr", l.Addr().String(), "tls", tlsCfg != nil, "encrypt", sealer != nil)
	errc := make(chan error, 1)
	go func() { errc <- serve() }()
	select {
	case <-ctx.Done():
		l.Close()
		closeFn()
		<-errc
		return nil
	case err := <-errc:
		closeFn()
		return err
	}
}

func dialData(ctx context.Context, addr string, cfg *tls.Config) (net.Conn, error) {
	d := &net.Dialer{KeepAlive: 15 * time.Second}
	if cfg == nil {
		return d.DialContext(ctx, "tcp", addr)
	}
	return wire.DialTLS(ctx, d, addr, cfg)
}
