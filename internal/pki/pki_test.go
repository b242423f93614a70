package pki

import (
	"crypto/tls"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestIssueAndPEMRoundTrip(t *testing.T) {
	ca, err := NewCA("continuum-test")
	if err != nil {
		t.Fatal(err)
	}
	if !ca.Cert.IsCA || ca.Cert.NotAfter.Sub(ca.Cert.NotBefore) < 9*365*24*time.Hour {
		t.Fatalf("CA not a long-lived CA: isCA=%v validity=%v", ca.Cert.IsCA, ca.Cert.NotAfter.Sub(ca.Cert.NotBefore))
	}
	leaf, err := ca.Issue("node-1", []string{"127.0.0.1:7000", "localhost", "::1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(leaf.Cert.IPAddresses) != 2 || len(leaf.Cert.DNSNames) != 2 {
		t.Fatalf("SANs: ips=%v dns=%v", leaf.Cert.IPAddresses, leaf.Cert.DNSNames)
	}
	if err := leaf.Cert.VerifyHostname("127.0.0.1"); err != nil {
		t.Fatalf("verify IP SAN: %v", err)
	}
	kp, err := KeyPEM(ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	ca2, err := ParseCA(CertPEM(ca.Cert), kp)
	if err != nil {
		t.Fatal(err)
	}
	if Fingerprint(ca2.Cert.Raw) != Fingerprint(ca.Cert.Raw) || len(Fingerprint(ca.Cert.Raw)) != 64 {
		t.Fatalf("fingerprint mismatch after round trip")
	}
	other, _ := NewCA("other")
	okp, _ := KeyPEM(other.Key)
	if _, err := ParseCA(CertPEM(ca.Cert), okp); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("mismatched key accepted: %v", err)
	}
	if _, err := ParseCA(CertPEM(leaf.Cert), kp); err == nil {
		t.Fatal("leaf accepted as CA")
	}
	if _, err := ParseCertPEM([]byte("garbage")); err == nil {
		t.Fatal("garbage accepted as certificate")
	}
	if _, err := ParseKeyPEM(CertPEM(ca.Cert)); err == nil {
		t.Fatal("certificate accepted as key")
	}
}

// handshake runs one TLS exchange on loopback and returns the client's and
// server's errors.
func handshake(t *testing.T, srv, cli *tls.Config) (clientErr, serverErr error) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		err = c.(*tls.Conn).Handshake()
		if err == nil {
			_, err = c.Write([]byte("ok"))
		}
		done <- err
	}()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(), cli)
	if err == nil {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = io.ReadAll(io.LimitReader(c, 2))
		c.Close()
	}
	return err, <-done
}

func TestRaftMutualTLS(t *testing.T) {
	ca, _ := NewCA("c1")
	a, _ := ca.Issue("a", []string{"127.0.0.1"}, 0)
	b, _ := ca.Issue("b", []string{"127.0.0.1"}, 0)
	foreign, _ := NewCA("c2")
	x, _ := foreign.Issue("x", []string{"127.0.0.1"}, 0)

	srv := RaftServerTLS(ca.Cert, a.TLSCertificate(ca.Cert))
	if ce, se := handshake(t, srv, RaftServerTLS(ca.Cert, b.TLSCertificate(ca.Cert))); ce != nil || se != nil {
		t.Fatalf("same-CA peers: client %v server %v", ce, se)
	}
	// A peer from another cluster is refused by the server.
	if _, se := handshake(t, srv, RaftServerTLS(foreign.Cert, x.TLSCertificate(foreign.Cert))); se == nil {
		t.Fatal("foreign peer accepted")
	}
	// A peer with no certificate is refused.
	noCert := RaftServerTLS(ca.Cert, tls.Certificate{})
	noCert.Certificates = nil
	if _, se := handshake(t, srv, noCert); se == nil {
		t.Fatal("peer without certificate accepted")
	}
	// A component's certificate from the same CA is not a raft peer.
	comp, err := ca.IssueComponent("proxy-1", []string{"127.0.0.1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !IsComponent(comp.Cert) || IsComponent(a.Cert) {
		t.Fatal("component marking wrong")
	}
	if _, se := handshake(t, srv, RaftServerTLS(ca.Cert, comp.TLSCertificate(ca.Cert))); se == nil {
		t.Fatal("component certificate accepted on the raft transport")
	}
}

func TestPinnedAndClientTLS(t *testing.T) {
	ca, _ := NewCA("c1")
	n, _ := ca.Issue("n", []string{"127.0.0.1"}, 0)
	srv := APIServerTLS(ca.Cert, n.TLSCertificate(ca.Cert))
	if ce, _ := handshake(t, srv, PinnedTLS(Fingerprint(ca.Cert.Raw))); ce != nil {
		t.Fatalf("right pin refused: %v", ce)
	}
	if ce, _ := handshake(t, srv, PinnedTLS(strings.Repeat("0", 64))); ce == nil || !strings.Contains(ce.Error(), "fingerprint") {
		t.Fatalf("wrong pin accepted: %v", ce)
	}
	if ce, _ := handshake(t, srv, ClientTLS(ca.Cert, nil)); ce != nil {
		t.Fatalf("client with cluster CA refused: %v", ce)
	}
	other, _ := NewCA("c2")
	if ce, _ := handshake(t, srv, ClientTLS(other.Cert, nil)); ce == nil {
		t.Fatal("client trusting another CA accepted the server")
	}
}

func TestWriteFileMode(t *testing.T) {
	p := filepath.Join(t.TempDir(), "key.pem")
	if err := WriteFile(p, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode().Perm())
	}
	if err := WriteFile(filepath.Join(t.TempDir(), "missing", "x"), nil, 0o600); err == nil {
		t.Fatal("write into missing directory succeeded")
	}
}
