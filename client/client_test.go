package client

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
)

func tlsServer(t *testing.T, h http.HandlerFunc) (*httptest.Server, []byte) {
	t.Helper()
	s := httptest.NewTLSServer(h)
	t.Cleanup(s.Close)
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Certificate().Raw})
	return s, ca
}

func TestRetriesUnavailableThenSucceeds(t *testing.T) {
	var n atomic.Int32
	s, ca := tlsServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" {
			t.Errorf("authorization header %q", r.Header.Get("Authorization"))
		}
		if n.Add(1) < 3 {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte(`{"error":{"code":"unavailable","message":"no leader"}}`))
			return
		}
		w.Write([]byte(`{"id":"tr-1","name":"a","source_cidr":"10.0.0.0/8","target_cidr":"10.1.0.0/16","encrypt":true}`))
	})
	c, err := New(s.URL, "tok", ca)
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.CreateTrafficRule(context.Background(), &model.TrafficRule{Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if r.ID != "tr-1" || !r.Encrypt || n.Load() != 3 {
		t.Fatalf("got %+v after %d calls", r, n.Load())
	}
}

func TestAPIErrorDecodedAndNotRetried(t *testing.T) {
	var n atomic.Int32
	s, ca := tlsServer(t, func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		w.WriteHeader(http.StatusBadRequest)
		w.Write([]byte(`{"error":{"code":"invalid_argument","message":"rpo: must be positive","field":"rpo"}}`))
	})
	c, _ := New(s.URL, "tok", ca)
	_, err := c.CreatePolicy(context.Background(), &model.Policy{})
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != 400 || ae.Code != model.CodeInvalid || ae.Field != "rpo" {
		t.Fatalf("error %#v", err)
	}
	if !errors.Is(err, model.ErrInvalid) {
		t.Fatal("APIError does not unwrap to model.ErrInvalid")
	}
	if n.Load() != 1 {
		t.Fatalf("4xx retried: %d calls", n.Load())
	}
}

func TestUnavailableGivesUpAtDeadline(t *testing.T) {
	s, ca := tlsServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write([]byte(`{"error":{"code":"unavailable","message":"no leader"}}`))
	})
	c, _ := New(s.URL, "tok", ca)
	c.RetryFor = 300 * time.Millisecond
	_, err := c.ListPolicies(context.Background())
	if !errors.Is(err, model.ErrNoLeader) {
		t.Fatalf("want unavailable, got %v", err)
	}
}

func TestFailsOverToNextEndpoint(t *testing.T) {
	// A port that was just free refuses connections.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := "https://" + ln.Addr().String()
	ln.Close()
	s, ca := tlsServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("stale") != "true" {
			t.Errorf("stale flag not sent: %s", r.URL)
		}
		w.Write([]byte(`[]`))
	})
	c, err := New(dead+","+s.URL, "", ca)
	if err != nil {
		t.Fatal(err)
	}
	c.Stale = true
	if _, err := c.ListProxies(context.Background()); err != nil {
		t.Fatalf("did not fail over: %v", err)
	}
}

func TestNewRejectsBadInput(t *testing.T) {
	for _, u := range []string{"", "ftp://x", "127.0.0.1:8443", "https://"} {
		if _, err := New(u, "t", nil); err == nil {
			t.Errorf("URL %q accepted", u)
		}
	}
	if _, err := New("https://127.0.0.1:1", "t", []byte("not pem")); err == nil {
		t.Error("bad CA accepted")
	}
}

func TestWrongCARefused(t *testing.T) {
	s, _ := tlsServer(t, func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(`{}`)) })
	otherCA := selfSigned(t)
	c, _ := New(s.URL, "", otherCA)
	if _, err := c.Health(context.Background()); err == nil {
		t.Fatal("server with a certificate from another CA accepted")
	}
}

// selfSigned returns a CA certificate unrelated to httptest's.
func selfSigned(t *testing.T) []byte {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "other"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
