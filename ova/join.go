package ova

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// parseJoinToken splits a join token "<ca-sha256>.<secret>" and returns
// the CA fingerprint it pins.
func parseJoinToken(tok string) (string, error) {
	fp, sec, ok := strings.Cut(strings.TrimSpace(tok), ".")
	if !ok || sec == "" {
		return "", errors.New("must look like <ca-sha256>.<secret>")
	}
	if b, err := hex.DecodeString(fp); err != nil || len(b) != sha256.Size {
		return "", errors.New("the part before '.' must be the 64-hex-digit SHA-256 of the cluster CA")
	}
	return strings.ToLower(fp), nil
}

// pinnedTLS trusts a server whose chain ends in the CA the join token
// pins, and whose leaf that CA signed.
func pinnedTLS(pin string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // replaced by the pin check below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("server presented no certificate")
			}
			root := raw[len(raw)-1]
			sum := sha256.Sum256(root)
			if hex.EncodeToString(sum[:]) != pin {
				return fmt.Errorf("server CA does not match the join token")
			}
			ca, err := x509.ParseCertificate(root)
			if err != nil {
				return fmt.Errorf("parse server CA: %w", err)
			}
			leaf, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return fmt.Errorf("parse server certificate: %w", err)
			}
			pool := x509.NewCertPool()
			pool.AddCert(ca)
			_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
			return err
		},
	}
}

// fetchProxyMaterial obtains the cluster CA and a component certificate
// for this proxy from a coordinator (POST /api/v1/components/certificate,
// with the join or a component token; the coordinator pinned by the token),
// and writes them where the proxy's command line expects them (dir/ca.pem,
// cert.pem, key.pem). A component's certificate can neither join raft nor
// call the admin routes, and the CA key never leaves the coordinators.
func fetchProxyMaterial(ctx context.Context, cfg *Config, addr, dir string) error {
	pin, err := parseJoinToken(cfg.JoinToken)
	if err != nil {
		return fmt.Errorf("join token: %w", err)
	}
	body, _ := json.Marshal(map[string]any{"name": cfg.NodeID, "kind": "proxy", "hosts": []string{addr}})
	hc := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{TLSClientConfig: pinnedTLS(pin)}}
	defer hc.CloseIdleConnections()
	u := strings.TrimRight(cfg.JoinURL, "/") + "/api/v1/components/certificate"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("join via %s: %w", cfg.JoinURL, err)
	}
	req.Header.Set("Authorization", "Bearer "+cfg.JoinToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("join via %s: %w", cfg.JoinURL, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("join via %s refused: %s: %s", cfg.JoinURL, resp.Status, bytes.TrimSpace(data))
	}
	var jr struct {
		CACert   string `json:"ca_cert"`
		NodeCert string `json:"cert"`
		NodeKey  string `json:"key"`
	}
	if err := json.Unmarshal(data, &jr); err != nil {
		return fmt.Errorf("join via %s: decode answer: %w", cfg.JoinURL, err)
	}
	if jr.CACert == "" || jr.NodeCert == "" || jr.NodeKey == "" {
		return fmt.Errorf("join via %s: answer lacks the CA, certificate or key", cfg.JoinURL)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	// The key last: its presence means the set is complete.
	for _, f := range []struct{ name, data string }{{"ca.pem", jr.CACert}, {"cert.pem", jr.NodeCert}, {"key.pem", jr.NodeKey}} {
		if err := writeFileAtomic(filepath.Join(dir, f.name), []byte(f.data), 0o600); err != nil {
			return err
		}
	}
	return nil
}

func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
