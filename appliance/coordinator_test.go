package appliance

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/client"
	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/raftstore"
)

// runNode starts RunCoordinator in the background and waits until it
// serves; the returned stop function cancels it and waits for the return.
func runNode(t *testing.T, o CoordinatorOptions) (stop func() error) {
	t.Helper()
	ready := make(chan struct{})
	o.Ready = ready
	o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- RunCoordinator(ctx, o) }()
	select {
	case <-ready:
	case err := <-errc:
		cancel()
		t.Fatalf("coordinator exited: %v", err)
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatal("coordinator not ready")
	}
	var stopped bool
	var stopErr error
	stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			stopErr = <-errc
		}
		return stopErr
	}
	t.Cleanup(func() { stop() })
	return stop
}

func TestBootstrapRestartKeepsTokens(t *testing.T) {
	dir := t.TempDir()
	o := CoordinatorOptions{NodeID: "c1", DataDir: dir, APIAddr: freeAddr(t), RaftAddr: freeAddr(t), Bootstrap: true}
	stop := runNode(t, o)
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	admin, join, ca := read(FileAdminToken), read(FileJoinToken), read(FileCA)
	for _, f := range []string{FileCAKey, FileNodeKey, FileAdminToken, FileJoinToken} {
		if st, _ := os.Stat(filepath.Join(dir, f)); st.Mode().Perm() != 0o600 {
			t.Fatalf("%s mode %v", f, st.Mode().Perm())
		}
	}
	cl, err := client.New("https://"+o.APIAddr, strings.TrimSpace(string(admin)), ca)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.CreateTrafficRule(context.Background(), &model.TrafficRule{Name: "keep", SourceCIDR: "10.0.0.0/8", TargetCIDR: "10.0.0.0/8"}); err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatalf("graceful stop: %v", err)
	}

	// Same flags again: starts from the directory, tokens untouched, data kept.
	stop = runNode(t, o)
	if !bytes.Equal(admin, read(FileAdminToken)) || !bytes.Equal(join, read(FileJoinToken)) || !bytes.Equal(ca, read(FileCA)) {
		t.Fatal("restart rewrote tokens or CA")
	}
	cl.RetryFor = 20 * time.Second
	rules, err := cl.ListTrafficRules(context.Background())
	if err != nil || len(rules) != 1 || rules[0].Name != "keep" {
		t.Fatalf("after restart: %v %v", rules, err)
	}
	h, err := cl.Health(context.Background())
	if err != nil || h.NodeID != "c1" {
		t.Fatalf("health: %+v %v", h, err)
	}
	stop()

	// Still exactly one admin and one join token in the state.
	node, err := raftstore.Open(raftstore.Config{NodeID: "c1", DataDir: dir, RaftAddr: o.RaftAddr})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	waitFor(t, "leader", node.IsLeader)
	if err := node.Barrier(context.Background()); err != nil {
		t.Fatal(err)
	}
	roles := map[model.TokenRole]int{}
	node.Read(func(s *model.State) {
		for _, tk := range s.Tokens {
			roles[tk.Role]++
		}
	})
	if roles[model.TokenAdmin] != 1 || roles[model.TokenJoin] != 1 {
		t.Fatalf("tokens after restart: %v", roles)
	}
}

func TestStartRefusesEmptyDirWithoutBootstrapOrJoin(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "d")
	err := RunCoordinator(context.Background(), CoordinatorOptions{NodeID: "c1", DataDir: dir, APIAddr: freeAddr(t), RaftAddr: freeAddr(t),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err == nil || !strings.Contains(err.Error(), "--bootstrap") {
		t.Fatalf("got %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatal("data directory created on refusal")
	}
}
