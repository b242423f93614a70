package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Validity periods. The CA outlives every certificate it issues.
const (
	CAValidity   = 10 * 365 * 24 * time.Hour
	LeafValidity = 2 * 365 * 24 * time.Hour
)

// CA is a certificate authority: its certificate and private key.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// Leaf is an issued certificate with its key.
type Leaf struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

func serial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	return n, nil
}

// NewCA creates a self-signed ECDSA P-256 CA named after the cluster.
func NewCA(commonName string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"Continuum"}},
		NotBefore:             now.Add(-5 * time.Minute), // tolerate small clock skew between nodes
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("self-sign CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// OUComponent marks the certificates of components (proxies, filters):
// they may talk to the coordinators' component routes and to each other,
// never act as a coordinator (raft peer or admin).
const OUComponent = "component"

// IsComponent reports whether a certificate was issued to a component.
func IsComponent(c *x509.Certificate) bool {
	return slices.Contains(c.Subject.OrganizationalUnit, OUComponent)
}

// Issue signs a coordinator node's certificate, usable as both TLS server
// and client, with DNS and IP SANs taken from hosts (each entry is a name or
// an IP literal; a host:port is accepted and its port dropped).
func (ca *CA) Issue(commonName string, hosts []string, validity time.Duration) (*Leaf, error) {
	return ca.issue(commonName, "", hosts, validity)
}

// IssueComponent signs a component's certificate (OU "component").
func (ca *CA) IssueComponent(commonName string, hosts []string, validity time.Duration) (*Leaf, error) {
	return ca.issue(commonName, OUComponent, hosts, validity)
}

func (ca *CA) issue(commonName, ou string, hosts []string, validity time.Duration) (*Leaf, error) {
	if commonName == "" {
		return nil, errors.New("issue certificate: common name required")
	}
	if validity <= 0 {
		validity = LeafValidity
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key for %s: %w", commonName, err)
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: commonName, Organization: []string{"Continuum"}},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	if ou != "" {
		tmpl.Subject.OrganizationalUnit = []string{ou}
	}
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	seen := map[string]bool{}
	for _, h := range append([]string{commonName}, hosts...) {
		if hh, _, err := net.SplitHostPort(h); err == nil {
			h = hh
		}
		if h == "" || seen[h] {
			continue
		}
		seen[h] = true
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("sign certificate for %s: %w", commonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse certificate for %s: %w", commonName, err)
	}
	return &Leaf{Cert: cert, Key: key}, nil
}

// CertPEM encodes a certificate as PEM.
func CertPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// KeyPEM encodes an ECDSA private key as PKCS#8 PEM.
func KeyPEM(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseCertPEM decodes the first certificate of a PEM block.
func ParseCertPEM(b []byte) (*x509.Certificate, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, errors.New("parse certificate: no CERTIFICATE PEM block")
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		return c, nil
	}
}

// ParseKeyPEM decodes an ECDSA private key (PKCS#8 or SEC 1).
func ParseKeyPEM(b []byte) (*ecdsa.PrivateKey, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, errors.New("parse private key: no PRIVATE KEY PEM block")
		}
		switch blk.Type {
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("parse private key: %w", err)
			}
			ek, ok := k.(*ecdsa.PrivateKey)
			if !ok {
				return nil, fmt.Errorf("parse private key: want ECDSA, got %T", k)
			}
			return ek, nil
		case "EC PRIVATE KEY":
			k, err := x509.ParseECPrivateKey(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("parse private key: %w", err)
			}
			return k, nil
		}
	}
}

// ParseCA decodes a CA from its certificate and key PEM, checking they match.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	c, err := ParseCertPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	if !c.IsCA {
		return nil, errors.New("load CA: certificate is not a CA")
	}
	k, err := ParseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	if !k.PublicKey.Equal(c.PublicKey) {
		return nil, errors.New("load CA: key does not match certificate")
	}
	return &CA{Cert: c, Key: k}, nil
}

// Fingerprint is the lowercase hex SHA-256 of a certificate's DER bytes.
func Fingerprint(der []byte) string {
	s := sha256.Sum256(der)
	return hex.EncodeToString(s[:])
}

// TLSCertificate converts a leaf into a tls.Certificate with its chain.
func (l *Leaf) TLSCertificate(ca *x509.Certificate) tls.Certificate {
	chain := [][]byte{l.Cert.Raw}
	if ca != nil {
		chain = append(chain, ca.Raw)
	}
	return tls.Certificate{Certificate: chain, PrivateKey: l.Key, Leaf: l.Cert}
}

// Pool returns a cert pool holding only the given CA.
func Pool(ca *x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca)
	return p
}

// RaftServerTLS is the raft transport's configuration: both ends present a
// certificate from the cluster CA and verify the other's. The same config is
// used for dialing and accepting because every node is both.
func RaftServerTLS(ca *x509.Certificate, node tls.Certificate) *tls.Config {
	pool := Pool(ca)
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{node},
		ClientCAs:    pool,
		RootCAs:      pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		// Raft addresses may be given as IPs or names that differ from
		// the dialed form, so the peer is verified against the CA only.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if err := VerifyChain(raw, pool); err != nil {
				return err
			}
			// verifyChain parsed raw[0] successfully.
			if leaf, _ := x509.ParseCertificate(raw[0]); IsComponent(leaf) {
				return errors.New("a component certificate cannot join the raft transport")
			}
			return nil
		},
	}
}

// verifyChain checks that the peer's leaf chains to the pool, without
// checking the host name.
func VerifyChain(raw [][]byte, pool *x509.CertPool) error {
	if len(raw) == 0 {
		return errors.New("peer presented no certificate")
	}
	leaf, err := x509.ParseCertificate(raw[0])
	if err != nil {
		return fmt.Errorf("parse peer certificate: %w", err)
	}
	inter := x509.NewCertPool()
	for _, r := range raw[1:] {
		if c, err := x509.ParseCertificate(r); err == nil {
			inter.AddCert(c)
		}
	}
	_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return fmt.Errorf("verify peer certificate: %w", err)
	}
	return nil
}

// APIServerTLS serves the HTTPS API with the node certificate; client
// certificates are optional (tokens authenticate), but one presented must
// come from the cluster CA.
func APIServerTLS(ca *x509.Certificate, node tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{node},
		ClientCAs:    Pool(ca),
		ClientAuth:   tls.VerifyClientCertIfGiven,
	}
}

// ClientTLS verifies a server against the cluster CA. Only the chain is
// verified, not the host name: reaching a node by an address missing from
// its SANs (NAT, a renamed host) is a real use.
func ClientTLS(ca *x509.Certificate, cert *tls.Certificate) *tls.Config {
	pool := Pool(ca)
	c := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		RootCAs:            pool,
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return VerifyChain(raw, pool)
		},
	}
	if cert != nil {
		c.Certificates = []tls.Certificate{*cert}
	}
	return c
}

// PinnedTLS trusts a server only if its presented chain ends in a CA whose
// fingerprint is pin: the joiner does not have the CA yet, only its hash
// from the join token.
func PinnedTLS(pin string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) < 2 {
				return errors.New("server did not present its CA certificate")
			}
			root := raw[len(raw)-1]
			if Fingerprint(root) != pin {
				return fmt.Errorf("server CA fingerprint %s does not match the join token's %s", Fingerprint(root), pin)
			}
			ca, err := x509.ParseCertificate(root)
			if err != nil {
				return fmt.Errorf("parse server CA: %w", err)
			}
			return VerifyChain(raw[:len(raw)-1], Pool(ca))
		},
	}
}

// WriteFile writes data with mode 0600 (or perm), atomically via rename so a
// crash never leaves a half-written key.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	name := tmp.Name()
	defer os.Remove(name)
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(name, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
