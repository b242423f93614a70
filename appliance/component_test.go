package appliance

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/client"
	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/pki"
)

// A component obtains a certificate with a component (or join) token; the
// answer never carries the CA key; the certificate is marked as a
// component's, and neither the component token nor the certificate opens
// the admin or coordinator routes.
func TestComponentCertificate(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	tok, err := e.cl.CreateToken(ctx, model.TokenComponent)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(e.url, tok.Token, pki.CertPEM(e.ca.Cert))
	if err != nil {
		t.Fatal(err)
	}
	cl.RetryFor = 0
	resp, err := cl.ComponentCertificate(ctx, client.ComponentCertRequest{Name: "px-1", Kind: "proxy", Hosts: []string{"127.0.0.1:7000", "px-1.lab"}})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := pki.ParseCertPEM([]byte(resp.Cert))
	if err != nil {
		t.Fatal(err)
	}
	if !pki.IsComponent(leaf) || leaf.Subject.CommonName != "px-1" || len(leaf.IPAddresses) != 1 || len(leaf.DNSNames) != 2 {
		t.Fatalf("certificate: cn %q ou %v ips %v names %v", leaf.Subject.CommonName, leaf.Subject.OrganizationalUnit, leaf.IPAddresses, leaf.DNSNames)
	}
	if _, err := leaf.Verify(x509Opts(e.ca)); err != nil {
		t.Fatalf("not signed by the cluster CA: %v", err)
	}
	if resp.CACert != string(pki.CertPEM(e.ca.Cert)) {
		t.Fatal("wrong CA in the answer")
	}
	status, _, body := e.raw(t, "POST", "/api/v1/components/certificate", tok.Token, `{"name":"px-2","kind":"proxy","hosts":["127.0.0.1"]}`)
	if status != 200 || bytes.Contains(body, []byte("ca_key")) || bytes.Count(body, []byte("PRIVATE KEY-----")) != 2 {
		t.Fatalf("answer: %d %s", status, trunc(body))
	}

	// The component token opens nothing else.
	for _, rt := range [][2]string{{"GET", "/api/v1/policies"}, {"POST", "/api/v1/cluster/join"}, {"POST", "/api/v1/tokens"}} {
		if status, _, _ := e.raw(t, rt[0], rt[1], tok.Token, `{}`); status != http.StatusForbidden {
			t.Errorf("component token on %s %s: %d", rt[0], rt[1], status)
		}
	}
	// Nor does the certificate, presented over mutual TLS.
	key, err := pki.ParseKeyPEM([]byte(resp.Key))
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: pki.ClientTLS(e.ca.Cert, &cert)}}
	get := func(path string) int {
		t.Helper()
		r, err := hc.Get(e.url + path)
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		return r.StatusCode
	}
	if code := get("/api/v1/policies"); code != http.StatusForbidden {
		t.Fatalf("component certificate on an admin route: %d", code)
	}
	// A coordinator's certificate still is one.
	node, err := e.ca.Issue("n9", []string{"127.0.0.1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	ncert := node.TLSCertificate(e.ca.Cert)
	hc.Transport = &http.Transport{TLSClientConfig: pki.ClientTLS(e.ca.Cert, &ncert)}
	if code := get("/api/v1/policies"); code != http.StatusOK {
		t.Fatalf("node certificate on an admin route: %d", code)
	}

	// A join token also obtains a component certificate (an appliance
	// deployed as a proxy with the join token its console showed).
	status, _, _ = e.raw(t, "POST", "/api/v1/components/certificate", "join-secret", `{"name":"px-3","kind":"proxy","hosts":["127.0.0.1"]}`)
	if status != 200 {
		t.Fatalf("join token: %d", status)
	}
	// Bad input: a clear error naming the field.
	for _, tc := range []struct{ body, field string }{
		{`{"name":"","kind":"proxy","hosts":["h"]}`, "name"},
		{`{"name":"p","kind":"coordinator","hosts":["h"]}`, "kind"},
		{`{"name":"p","kind":"filter","hosts":[]}`, "hosts"},
		{`{"name":"p","kind":"filter","hosts":["a b"]}`, "hosts[0]"},
	} {
		status, eb, _ := e.raw(t, "POST", "/api/v1/components/certificate", tok.Token, tc.body)
		if status != http.StatusBadRequest || eb.Error.Field != tc.field {
			t.Errorf("%s: %d %+v", tc.body, status, eb)
		}
	}
	if status, _, _ := e.raw(t, "POST", "/api/v1/components/certificate", "", `{}`); status != http.StatusUnauthorized {
		t.Fatalf("no token: %d", status)
	}
	var ae *client.APIError
	if _, err := cl.ListPolicies(ctx); !errors.As(err, &ae) || ae.Status != http.StatusForbidden {
		t.Fatalf("client with a component token listing policies: %v", err)
	}
}

// A proxy reports it is alive with a component token or its own
// certificate; the heartbeat lands in the replicated state. Another
// component's certificate cannot report for it; unknown proxies are 404.
func TestProxyHeartbeat(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	_, _, _ = e.seed(t) // proxies "src" and "dst"
	tok, err := e.cl.CreateToken(ctx, model.TokenComponent)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(e.url, tok.Token, pki.CertPEM(e.ca.Cert))
	if err != nil {
		t.Fatal(err)
	}
	cl.RetryFor = 0
	before := time.Now().UTC().Add(-time.Second)
	px, err := cl.ProxyHeartbeat(ctx, "src")
	if err != nil {
		t.Fatal(err)
	}
	var stored time.Time
	e.node.Read(func(s *model.State) { stored = s.Proxies[px.ID].LastHeartbeat })
	if stored.Before(before) || !stored.Equal(px.LastHeartbeat) {
		t.Fatalf("heartbeat not stored: %v (answer %v)", stored, px.LastHeartbeat)
	}
	var ae *client.APIError
	if _, err := cl.ProxyHeartbeat(ctx, "nope"); !errors.As(err, &ae) || ae.Status != http.StatusNotFound || ae.Field != "id" {
		t.Fatalf("unknown proxy: %v", err)
	}
	if status, _, _ := e.raw(t, "POST", "/api/v1/proxies/src/heartbeat", "", ""); status != http.StatusUnauthorized {
		t.Fatalf("no token: %d", status)
	}

	// With certificates: "src" may report for itself, not for "dst".
	leaf, err := e.ca.IssueComponent("src", []string{"127.0.0.1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	cert := leaf.TLSCertificate(e.ca.Cert)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: pki.ClientTLS(e.ca.Cert, &cert)}}
	post := func(path string) int {
		t.Helper()
		r, err := hc.Post(e.url+path, "application/json", nil)
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		return r.StatusCode
	}
	if code := post("/api/v1/proxies/src/heartbeat"); code != http.StatusOK {
		t.Fatalf("own heartbeat with certificate: %d", code)
	}
	var dstBeat time.Time
	snapshot := e.snapshot(t)
	if code := post("/api/v1/proxies/dst/heartbeat"); code != http.StatusForbidden {
		t.Fatalf("heartbeat for another proxy: %d", code)
	}
	e.node.Read(func(s *model.State) {
		if p := s.ProxyByName("dst"); p != nil {
			dstBeat = p.LastHeartbeat
		}
	})
	if !dstBeat.IsZero() || e.snapshot(t) != snapshot {
		t.Fatal("a refused heartbeat changed the state")
	}
}
