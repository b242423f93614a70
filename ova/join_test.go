package ova

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFetchProxyMaterial(t *testing.T) {
	var got struct {
		Name  string   `json:"name"`
		Kind  string   `json:"kind"`
		Hosts []string `json:"hosts"`
	}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/api/v1/components/certificate" {
			http.NotFound(w, r)
			return
		}
		if !strings.HasSuffix(r.Header.Get("Authorization"), ".good") {
			http.Error(w, `{"error":{"message":"bad token"}}`, http.StatusUnauthorized)
			return
		}
		_ = json.NewDecoder(r.Body).Decode(&got)
		_ = json.NewEncoder(w).Encode(map[string]string{"ca_cert": "CA", "cert": "CERT", "key": "KEY"})
	}))
	defer srv.Close()
	sum := sha256.Sum256(srv.Certificate().Raw)
	pin := hex.EncodeToString(sum[:])

	cfg := &Config{NodeID: "p1", JoinURL: srv.URL, JoinToken: pin + ".good"}
	dir := filepath.Join(t.TempDir(), "proxy")
	if err := fetchProxyMaterial(context.Background(), cfg, "10.0.0.5:8443", dir); err != nil {
		t.Fatal(err)
	}
	if got.Name != "p1" || got.Kind != "proxy" || len(got.Hosts) != 1 || got.Hosts[0] != "10.0.0.5:8443" {
		t.Errorf("certificate request = %+v", got)
	}
	for name, want := range map[string]string{"ca.pem": "CA", "cert.pem": "CERT", "key.pem": "KEY"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", name, b, err, want)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 3 {
		t.Errorf("%d files written, want 3", len(entries))
	}

	// A server whose CA is not the one pinned is not trusted; nothing is written.
	other := filepath.Join(t.TempDir(), "proxy")
	cfg.JoinToken = strings.Repeat("00", 32) + ".good"
	if err := fetchProxyMaterial(context.Background(), cfg, "10.0.0.5:8443", other); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("err = %v, want a pin mismatch", err)
	}
	cfg.JoinToken = pin + ".bad"
	if err := fetchProxyMaterial(context.Background(), cfg, "10.0.0.5:8443", other); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("err = %v, want refusal", err)
	}
	if _, err := os.Stat(other); !os.IsNotExist(err) {
		t.Errorf("material written after a failed join: %v", err)
	}
}
