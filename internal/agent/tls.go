package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/continuum-cdp/continuum/internal/pki"
)

// TLS returns this component's certificate signed by the cluster CA
// (obtained once with the token through POST /api/v1/components/certificate,
// then loaded from StateDir) and the CA pool: components use them for the
// data hops between each other and for their admin HTTPS listener. A
// stored certificate that no longer chains to the CA, or has less than a
// fifth of its validity left, is replaced.
func (a *Agent) TLS(ctx context.Context) (tls.Certificate, *x509.CertPool, error) {
	a.certMu.Lock()
	defer a.certMu.Unlock()
	if a.cert != nil && usable(a.cert.Leaf, a.pool, time.Now()) == nil {
		return *a.cert, a.pool, nil
	}
	certPath, keyPath := filepath.Join(a.cfg.StateDir, certFile), filepath.Join(a.cfg.StateDir, keyFile)
	cert, err := a.loadCert(certPath, keyPath)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			a.log.Warn("stored certificate not usable; asking for a new one", "err", err)
		}
		if cert, err = a.requestCert(ctx, certPath, keyPath); err != nil {
			return tls.Certificate{}, nil, err
		}
	}
	a.cert = &cert
	return cert, a.pool, nil
}

func (a *Agent) loadCert(certPath, keyPath string) (tls.Certificate, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return tls.Certificate{}, err
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return tls.Certificate{}, err
	}
	return a.pair(certPEM, keyPEM)
}

// pair checks a certificate and key and builds the chain presented to peers.
func (a *Agent) pair(certPEM, keyPEM []byte) (tls.Certificate, error) {
	leaf, err := pki.ParseCertPEM(certPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("component certificate: %w", err)
	}
	key, err := pki.ParseKeyPEM(keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("component key: %w", err)
	}
	c := tls.Certificate{Certificate: [][]byte{leaf.Raw, a.ca.Raw}, PrivateKey: key, Leaf: leaf}
	if _, err := tls.X509KeyPair(pki.CertPEM(leaf), keyPEM); err != nil {
		return tls.Certificate{}, fmt.Errorf("component key does not match its certificate: %w", err)
	}
	if err := usable(leaf, a.pool, time.Now()); err != nil {
		return tls.Certificate{}, err
	}
	return c, nil
}

func usable(leaf *x509.Certificate, pool *x509.CertPool, now time.Time) error {
	if leaf == nil {
		return errors.New("no certificate")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("component certificate does not chain to the cluster CA: %w", err)
	}
	if left := leaf.NotAfter.Sub(now); left < leaf.NotAfter.Sub(leaf.NotBefore)/5 {
		return fmt.Errorf("component certificate expires at %s", leaf.NotAfter.Format(time.RFC3339))
	}
	return nil
}

type certRequest struct {
	Name  string   `json:"name"`
	Kind  string   `json:"kind"`
	Hosts []string `json:"hosts"`
}

type certResponse struct {
	CACert string `json:"ca_cert"`
	Cert   string `json:"cert"`
	Key    string `json:"key"`
}

func (a *Agent) requestCert(ctx context.Context, certPath, keyPath string) (tls.Certificate, error) {
	req := certRequest{Name: CertName(a.cfg.ID), Kind: string(a.cfg.Kind), Hosts: a.hosts()}
	var resp certResponse
	if err := a.post(ctx, certificatePath, req, &resp); err != nil {
		return tls.Certificate{}, fmt.Errorf("obtain the certificate of %s %s: %w", a.cfg.Kind, a.cfg.ID, err)
	}
	// The answer must come from our cluster: its CA is the one we pinned.
	ca, err := pki.ParseCertPEM([]byte(resp.CACert))
	if err != nil || !ca.Equal(a.ca) {
		return tls.Certificate{}, fmt.Errorf("obtain the certificate of %s %s: the coordinator's CA is not the one in %s", a.cfg.Kind, a.cfg.ID, a.cfg.CACertFile)
	}
	c, err := a.pair([]byte(resp.Cert), []byte(resp.Key))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("obtain the certificate of %s %s: %w", a.cfg.Kind, a.cfg.ID, err)
	}
	// The key first: a certificate on disk always has its key.
	if err := pki.WriteFile(keyPath, []byte(resp.Key), 0o600); err != nil {
		return tls.Certificate{}, fmt.Errorf("store the component key: %w", err)
	}
	if err := pki.WriteFile(certPath, []byte(resp.Cert), 0o600); err != nil {
		return tls.Certificate{}, fmt.Errorf("store the component certificate: %w", err)
	}
	a.log.Info("obtained a certificate from the cluster CA", "name", req.Name, "expires", c.Leaf.NotAfter.Format(time.RFC3339))
	return c, nil
}

func (a *Agent) hosts() []string {
	if len(a.cfg.Hosts) > 0 {
		return a.cfg.Hosts
	}
	out := []string{"localhost", "127.0.0.1", "::1"}
	if h, err := os.Hostname(); err == nil && h != "" && !strings.ContainsAny(h, " /\\") && net.ParseIP(h) == nil && h != "localhost" {
		out = append([]string{h}, out...)
	}
	return out
}

// CertName is the common name a component's certificate gets for its ID:
// the ID with every character a name may not hold replaced by '-' (a
// filter's "vc-1/host-21" becomes "vc-1-host-21").
func CertName(id string) string {
	alnum := func(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' }
	b := []byte(id)
	for i, c := range b {
		if !alnum(c) && c != '.' && c != '_' && c != '-' && c != ' ' {
			b[i] = '-'
		}
	}
	if len(b) == 0 || !alnum(b[0]) {
		b = append([]byte("c"), b...)
	}
	return string(b[:min(len(b), 128)])
}
