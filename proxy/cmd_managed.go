package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/continuum-cdp/continuum/internal/agent"
	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/wire"
)

// managedFlags are the flags of managed mode.
type managedFlags struct {
	Coordinators []string
	Token        string
	CACert       string
	StateDir     string
	ProxyID      string
	Advertise    string
}

// ManagedStatus is the admin view of a managed proxy (/v1/status).
type ManagedStatus struct {
	ID            string           `json:"id"`
	ConfigVersion string           `json:"config_version"`
	SourceVMs     []SourceVMStatus `json:"source_vms"`
	TargetVMs     []string         `json:"target_vms"`
}

func runManaged(ctx context.Context, cfg FileConfig, mf managedFlags) error {
	log, err := newLogger(cfg.LogLevel)
	if err != nil {
		return err
	}
	switch {
	case mf.ProxyID == "":
		return errors.New("managed mode: --proxy-id is required")
	case mf.Token == "":
		return errors.New("managed mode: --token (or CONTINUUM_COMPONENT_TOKEN) is required")
	case mf.CACert == "":
		return errors.New("managed mode: --cacert is required")
	case mf.StateDir == "":
		return errors.New("managed mode: --state-dir is required")
	case cfg.Listen == "":
		return errors.New("--listen is required")
	case cfg.Plaintext:
		return errors.New("managed mode always uses TLS: --plaintext is not allowed")
	}
	codec, err := wire.ParseCodec(cfg.Codec)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	defer l.Close()
	advertise := mf.Advertise
	if advertise == "" {
		advertise = cfg.Listen
		if _, port, _ := net.SplitHostPort(cfg.Listen); port == "0" {
			advertise = l.Addr().String()
		}
	}
	host, _, err := net.SplitHostPort(advertise)
	if err != nil {
		return fmt.Errorf("data address %q: %w", advertise, err)
	}
	ag, err := agent.New(agent.Config{Coordinators: mf.Coordinators, Token: mf.Token, CACertFile: mf.CACert,
		Kind: model.ComponentProxy, ID: mf.ProxyID, StateDir: mf.StateDir, Logger: log.With("part", "agent"),
		Hosts: []string{host}})
	if err != nil {
		return err
	}
	if err := ag.CachedConfigError(); err != nil {
		log.Warn("cached configuration not usable; waiting for a coordinator", "err", err)
	}
	cert, pool, err := certificate(ctx, ag, log)
	if err != nil {
		return err
	}
	if ctx.Err() != nil {
		return nil
	}
	var current atomic.Pointer[tls.Certificate]
	current.Store(&cert)
	dataTLS := renewingDataTLS(&current, pool)
	go renewCertificate(ctx, ag, &current, log)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m, err := NewManaged(ManagedConfig{ID: mf.ProxyID, Advertise: advertise, AdminAddr: cfg.AdminAddr, TLS: dataTLS,
		Source: SourceConfig{RPO: cfg.RPO.D(), CutBytes: cfg.CutBytes, Codec: codec, MemoryBytes: cfg.MemoryBytes,
			SpillDir: cfg.SpillDir, SpillBytes: cfg.SpillBytes},
		Logger: log, Registerer: reg})
	if err != nil {
		return err
	}
	defer m.Close()

	if cfg.AdminAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
		mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(ManagedStatus{ID: mf.ProxyID, ConfigVersion: m.Version(),
				SourceVMs: m.src.Status(), TargetVMs: m.tgt.Routes()})
		})
		al, err := net.Listen("tcp", cfg.AdminAddr)
		if err != nil {
			return fmt.Errorf("listen admin %s: %w", cfg.AdminAddr, err)
		}
		// HTTPS with the cluster certificate; a client certificate is
		// optional (the admin routes only read) but must chain to the CA
		adminTLS := &tls.Config{MinVersion: tls.VersionTLS12, ClientCAs: pool, ClientAuth: tls.VerifyClientCertIfGiven,
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return current.Load(), nil }}
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(tls.NewListener(al, adminTLS))
		defer srv.Close()
		log.Info("admin listening", "addr", al.Addr().String(), "tls", true)
	}
	log.Info("proxy listening", "role", "managed", "id", mf.ProxyID, "addr", l.Addr().String(), "advertise", advertise, "tls", true)
	errc := make(chan error, 1)
	go func() { errc <- m.Serve(ctx, l) }()
	runErr := make(chan error, 1)
	go func() { runErr <- ag.Run(ctx, m.Report, m.Apply) }()
	select {
	case <-ctx.Done():
		l.Close()
		<-errc
		<-runErr
		return nil
	case err := <-errc:
		return err
	case err := <-runErr:
		if err == nil && ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("coordinator link: %w", err)
	}
}

// certificate gets this proxy's certificate, from the state directory or a
// coordinator, retrying while none answers: the proxy cannot open a data
// hop without it.
func certificate(ctx context.Context, ag *agent.Agent, log *slog.Logger) (tls.Certificate, *x509.CertPool, error) {
	wait := time.Second
	for n := 1; ; n++ {
		cert, pool, err := ag.TLS(ctx)
		if err == nil {
			return cert, pool, nil
		}
		var apiErr *agent.APIError
		if errors.As(err, &apiErr) && apiErr.Status >= 400 && apiErr.Status < 500 {
			// a refused token or ID does not get better by retrying
			return tls.Certificate{}, nil, fmt.Errorf("get this proxy's certificate: %w", err)
		}
		if n == 1 || n%10 == 0 {
			log.Warn("no certificate yet; retrying", "attempt", n, "err", err)
		}
		select {
		case <-ctx.Done():
			return tls.Certificate{}, nil, nil
		case <-time.After(wait):
		}
		wait = min(2*wait, 10*time.Second)
	}
}

// renewCertificate asks the agent for the certificate twice a day; the
// agent replaces it when little of its validity is left, and the next
// handshakes use the new one.
func renewCertificate(ctx context.Context, ag *agent.Agent, current *atomic.Pointer[tls.Certificate], log *slog.Logger) {
	t := time.NewTicker(12 * time.Hour)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cert, _, err := ag.TLS(ctx)
		if err != nil {
			log.Warn("renew certificate; keeping the current one", "err", err)
			continue
		}
		current.Store(&cert)
	}
}
