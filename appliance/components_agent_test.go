package appliance

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/internal/agent"
	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/pki"
)

// A proxy's agent, given a dead coordinator first and the real one second,
// obtains its certificate, reports its VMs' lag and applies the config the
// coordinator computes, which it finds cached after a restart.
func TestAgentAgainstCoordinator(t *testing.T) {
	e := newEnv(t)
	vc, src, dst := e.seed(t)
	task := e.seedTask(t, vc, src, dst)
	_, tok := e.componentClient(t)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pki.CertPEM(e.ca.Cert), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := agent.Config{Coordinators: []string{"https://" + freeAddr(t), e.url}, Token: tok, CACertFile: caFile,
		Kind: model.ComponentProxy, ID: "src", StateDir: dir, Interval: 20 * time.Millisecond}
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cert, _, err := a.TLS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: pki.Pool(e.ca.Cert), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil || !pki.IsComponent(cert.Leaf) {
		t.Fatalf("certificate: %v", err)
	}

	var mu sync.Mutex
	var applied []model.ComponentConfig
	done := make(chan error, 1)
	go func() {
		done <- a.Run(ctx, func() model.ComponentReport {
			return model.ComponentReport{VMs: []model.VMReport{{TaskID: task.ID, VM: "web", LagSeconds: 0.5}}}
		}, func(c model.ComponentConfig) error {
			mu.Lock()
			applied = append(applied, c)
			mu.Unlock()
			return nil
		})
	}()
	waitFor(t, "config applied and lag stored", func() bool {
		mu.Lock()
		n := len(applied)
		mu.Unlock()
		var lag float64
		e.node.Read(func(s *model.State) { lag = s.Tasks[task.ID].LagSeconds })
		return n == 1 && lag == 0.5
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	got := applied[0]
	if got.ID != src.ID || len(got.Tasks) != 1 || got.Tasks[0].TaskID != task.ID || len(got.Tasks[0].Key) != 32 {
		t.Fatalf("applied: %+v", got)
	}
	b, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if last, ok := b.Last(); !ok || last.Version != got.Version {
		t.Fatalf("cached after restart: %v %+v", ok, last)
	}
}
