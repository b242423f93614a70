package controllers

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/vsphere"
)

// Connector keeps one logged-in vsphere.Client per registered vCenter and
// logs in again when the registration changes. Its Get is an Inventories.
type Connector struct {
	Store Store
	// Unseal opens a sealed password (raftstore.Node.Unseal).
	Unseal func(sealed []byte) ([]byte, error)
	// Dir holds CA bundles written from registrations (vsphere.Config
	// reads a file); empty: the system temporary directory.
	Dir    string
	Logger *slog.Logger

	mu      sync.Mutex
	clients map[string]*conn
}

type conn struct {
	fingerprint string
	client      *vsphere.Client
}

// Get returns the connection to vCenter id, connecting on first use.
func (c *Connector) Get(ctx context.Context, id string) (Inventory, error) {
	var vc model.VCenter
	found := false
	c.Store.Read(func(s *model.State) {
		if v, ok := s.VCenters[id]; ok {
			vc, found = *v, true
		}
	})
	if !found {
		return nil, fmt.Errorf("connect to vCenter %s: %w", id, model.NotFound("vcenter_id", "vcenter", id))
	}
	fp := fmt.Sprintf("%x", sha256.Sum256(fmt.Appendf(nil, "%s\x00%s\x00%x\x00%s\x00%s\x00%v", vc.URL, vc.Username, vc.PasswordSealed, vc.Thumbprint, vc.CACert, vc.Insecure)))
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.clients == nil {
		c.clients = map[string]*conn{}
	}
	if cur, ok := c.clients[id]; ok {
		if cur.fingerprint == fp {
			return cur.client, nil
		}
		_ = cur.client.Close(ctx)
		delete(c.clients, id)
	}
	cfg := vsphere.Config{URL: vc.URL, Username: vc.Username, Thumbprint: vc.Thumbprint, Insecure: vc.Insecure, Logger: c.Logger}
	if len(vc.PasswordSealed) > 0 {
		if c.Unseal == nil {
			return nil, fmt.Errorf("connect to vCenter %s: no key to open its password", vc.Name)
		}
		pw, err := c.Unseal(vc.PasswordSealed)
		if err != nil {
			return nil, fmt.Errorf("connect to vCenter %s: open password: %w", vc.Name, err)
		}
		cfg.Password = string(pw)
	}
	if vc.CACert != "" {
		dir := c.Dir
		if dir == "" {
			dir = os.TempDir()
		}
		f := filepath.Join(dir, "vcenter-"+fp[:16]+".pem")
		if err := os.WriteFile(f, []byte(vc.CACert), 0o600); err != nil {
			return nil, fmt.Errorf("connect to vCenter %s: write CA bundle: %w", vc.Name, err)
		}
		cfg.CAFile = f
	}
	cl, err := vsphere.Connect(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to vCenter %s: %w", vc.Name, err)
	}
	c.clients[id] = &conn{fingerprint: fp, client: cl}
	return cl, nil
}

// Close logs out of every vCenter.
func (c *Connector) Close(ctx context.Context) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, cur := range c.clients {
		_ = cur.client.Close(ctx)
		delete(c.clients, id)
	}
}
