package raftstore

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"github.com/continuum-cdp/continuum/internal/netutil"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
)

// Timings for loopback tests: short enough for quick elections, long enough
// not to flap on two busy cores under -race.
const (
	testHeartbeat = 300 * time.Millisecond
	testElection  = 600 * time.Millisecond
	testLease     = 300 * time.Millisecond
)

func freeAddr(t testing.TB) string {
	t.Helper()
	addr, err := netutil.FreeLoopbackAddr()
	if err != nil {
		t.Fatalf("reserve port: %v", err)
	}
	return addr
}

type testNode struct {
	cfg  Config
	node *Node
}

func testConfig(id, dir, addr string) Config {
	return Config{
		NodeID:             id,
		DataDir:            dir,
		RaftAddr:           addr,
		HeartbeatTimeout:   testHeartbeat,
		ElectionTimeout:    testElection,
		LeaderLeaseTimeout: testLease,
		CommitTimeout:      5 * time.Millisecond,
	}
}

func mustOpen(t testing.TB, cfg Config) *Node {
	t.Helper()
	n, err := Open(cfg)
	if err != nil {
		t.Fatalf("open %s: %v", cfg.NodeID, err)
	}
	return n
}

// startCluster starts size nodes: the first bootstraps, the others join
// through AddVoter with the cluster's ID and key, as the appliance does.
func startCluster(t testing.TB, size int, tlsFor func(i int) *tls.Config) []*testNode {
	t.Helper()
	return startClusterWith(t, size, tlsFor, nil)
}

// startClusterWith is startCluster with a hook to adjust each node's config.
func startClusterWith(t testing.TB, size int, tlsFor func(i int) *tls.Config, tune func(*Config)) []*testNode {
	t.Helper()
	nodes := make([]*testNode, size)
	for i := range size {
		cfg := testConfig(fmt.Sprintf("n%d", i+1), filepath.Join(t.TempDir(), fmt.Sprintf("n%d", i+1)), freeAddr(t))
		if tlsFor != nil {
			cfg.TLS = tlsFor(i)
		}
		if tune != nil {
			tune(&cfg)
		}
		if i == 0 {
			cfg.Bootstrap = true
		} else {
			cfg.ClusterID = nodes[0].node.ClusterID()
			cfg.ClusterKey = nodes[0].node.ClusterKey()
		}
		nodes[i] = &testNode{cfg: cfg, node: mustOpen(t, cfg)}
		if i == 0 {
			waitLeader(t, nodes[:1])
		} else {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := nodes[0].node.AddVoter(ctx, cfg.NodeID, cfg.RaftAddr)
			cancel()
			if err != nil {
				t.Fatalf("add voter %s: %v", cfg.NodeID, err)
			}
		}
	}
	t.Cleanup(func() {
		for _, n := range nodes {
			if n.node != nil {
				n.node.Close()
			}
		}
	})
	return nodes
}

// waitLeader waits until exactly one live node says it is leader and every
// live node agrees on it; it returns that node's index.
func waitLeader(t testing.TB, nodes []*testNode) int {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		leader := -1
		count := 0
		for i, n := range nodes {
			if n.node != nil && n.node.IsLeader() {
				leader, count = i, count+1
			}
		}
		if count == 1 {
			id := nodes[leader].cfg.NodeID
			agree := true
			for _, n := range nodes {
				if n.node == nil {
					continue
				}
				if lid, _ := n.node.Leader(); lid != id {
					agree = false
				}
			}
			if agree {
				return leader
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no leader elected within 15s")
	return -1
}

func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s", timeout, what)
}

func apply(t testing.TB, n *Node, c Command) any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := n.Apply(ctx, c)
	if err != nil {
		t.Fatalf("apply %T: %v", c, err)
	}
	return v
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func testVCenter(id, name string) model.VCenter {
	return model.VCenter{ID: id, Name: name, URL: "https://" + name + ".example/sdk", Username: "admin", CreatedAt: t0}
}

func testProxy(id, name string) model.Proxy {
	return model.Proxy{ID: id, Name: name, Role: model.RoleBoth, Kind: model.KindPhysical, Address: "127.0.0.1:9000", MaxTasks: 4, CreatedAt: t0}
}

func testPolicy(id, name, vc string) model.Policy {
	return model.Policy{
		ID: id, Name: name, Enabled: true, VCenterID: vc,
		VMs:                []model.VMRef{{MoRef: "vm-" + id}},
		Target:             model.Target{VCenterID: vc, Cluster: "c1", Datastore: "ds1"},
		RPO:                model.Duration(15 * time.Second),
		ShortTermRetention: model.Duration(time.Hour),
		ProxySelection:     model.SelectAuto,
		CreatedAt:          t0, UpdatedAt: t0,
	}
}

// stateBytes is the canonical encoding of a state, for equality checks that
// report a readable difference.
func stateBytes(t testing.TB, s *model.State) []byte {
	t.Helper()
	var buf bytesBuffer
	if err := writeSnapshot(&buf, s); err != nil {
		t.Fatalf("encode state: %v", err)
	}
	return buf.b
}

type bytesBuffer struct{ b []byte }

func (w *bytesBuffer) Write(p []byte) (int, error) { w.b = append(w.b, p...); return len(p), nil }

func nodeState(t testing.TB, n *Node) []byte {
	t.Helper()
	var b []byte
	n.Read(func(s *model.State) { b = stateBytes(t, s) })
	return b
}

// dirContents maps every file under dir to its bytes.
func dirContents(t testing.TB, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if info.IsDir() {
			out[p+"/"] = ""
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		out[p] = fmt.Sprintf("%o:%s", info.Mode().Perm(), b)
		return nil
	})
	if err != nil {
		t.Fatalf("read %s: %v", dir, err)
	}
	return out
}

// testPKI makes a CA and a certificate for 127.0.0.1 usable as server and
// client, returned as one mTLS config per call.
type testPKI struct {
	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
	pool   *x509.CertPool
}

func newTestPKI(t testing.TB, cn string) *testPKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testPKI{caCert: cert, caKey: key, pool: pool}
}

func (p *testPKI) nodeTLS(t testing.TB, name string) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		RootCAs:      p.pool,
		ClientCAs:    p.pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	}
}
