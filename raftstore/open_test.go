package raftstore

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/continuum-cdp/continuum/internal/model"
)

func copyDir(t testing.TB, src, dst string) {
	t.Helper()
	err := filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if info.IsDir() {
			return os.MkdirAll(target, info.Mode().Perm())
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, info.Mode().Perm())
	})
	if err != nil {
		t.Fatalf("copy %s: %v", src, err)
	}
}

// bootstrappedDir makes a closed single-node data directory with some state.
func bootstrappedDir(t testing.TB) (Config, string) {
	t.Helper()
	cfg := testConfig("n1", filepath.Join(t.TempDir(), "n1"), freeAddr(t))
	cfg.Bootstrap = true
	n := mustOpen(t, cfg)
	waitFor(t, "leader", 10*time.Second, n.IsLeader)
	apply(t, n, PutVCenter{VCenter: testVCenter("vc1", "one"), Create: true})
	if err := n.raft.Snapshot().Error(); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	id := n.ClusterID()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	return cfg, id
}

// TestOpenRefusesForeignOrCorruptDir checks every refusal leaves the
// directory byte-identical and says why.
func TestOpenRefusesForeignOrCorruptDir(t *testing.T) {
	good, clusterID := bootstrappedDir(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	cases := []struct {
		name   string
		damage func(dir string)
		cfg    func(c *Config)
		want   string
	}{
		{"other node id", nil, func(c *Config) { c.NodeID = "n2" }, `belongs to node "n1"`},
		{"other cluster id", nil, func(c *Config) { c.ClusterID = "someone-else" }, "belongs to cluster"},
		{"bootstrap into another cluster's dir", nil, func(c *Config) { c.Bootstrap, c.ClusterID = true, "fresh" }, "belongs to cluster"},
		{"other cluster key", nil, func(c *Config) { c.ClusterKey = bytes.Repeat([]byte{7}, 32) }, "different cluster key"},
		{"raft address in use", nil, func(c *Config) { c.RaftAddr = busy.Addr().String() }, "listen on raft address"},
		{"corrupt node.json", func(d string) { os.WriteFile(filepath.Join(d, nodeFileName), []byte("{nope"), 0o600) }, nil, "node.json is corrupt"},
		{"node.json of a future format", func(d string) {
			os.WriteFile(filepath.Join(d, nodeFileName), []byte(`{"format":2,"cluster_id":"x","node_id":"n1"}`), 0o600)
		}, nil, "format 2"},
		{"corrupt raft.db", func(d string) {
			os.WriteFile(filepath.Join(d, raftDBName), bytes.Repeat([]byte("garbage!"), 4096), 0o600)
		}, nil, "open raft.db"},
		{"raft state without node.json", func(d string) { os.Remove(filepath.Join(d, nodeFileName)) }, nil, "without"},
		{"corrupt snapshot", func(d string) {
			files, _ := filepath.Glob(filepath.Join(d, snapshotsDir, "*", "state.bin"))
			for _, f := range files {
				b, _ := os.ReadFile(f)
				b[len(b)/2] ^= 0xff
				os.WriteFile(f, b, 0o600)
			}
			if len(files) == 0 {
				t.Fatalf("no snapshot to damage")
			}
		}, nil, "snapshot"},
		{"snapshot metadata unreadable", func(d string) {
			files, _ := filepath.Glob(filepath.Join(d, snapshotsDir, "*", "meta.json"))
			for _, f := range files {
				os.WriteFile(f, []byte("{"), 0o600)
			}
		}, nil, "cannot be read"},
		{"bolt file of something else", func(d string) {
			os.Remove(filepath.Join(d, raftDBName))
			db, err := bbolt.Open(filepath.Join(d, raftDBName), 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			db.Update(func(tx *bbolt.Tx) error { _, err := tx.CreateBucket([]byte("other")); return err })
			db.Close()
		}, nil, "not a raft log"},
		{"corrupt cluster key", func(d string) { os.WriteFile(filepath.Join(d, keyFileName), []byte("zz"), 0o600) }, nil, "cluster.key is corrupt"},
		{"missing cluster key", func(d string) { os.Remove(filepath.Join(d, keyFileName)) }, nil, "cluster.key is missing"},
		{"unreadable node.json", func(d string) {
			os.Remove(filepath.Join(d, nodeFileName))
			os.Mkdir(filepath.Join(d, nodeFileName), 0o700)
		}, nil, "read"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "copy")
			copyDir(t, good.DataDir, dir)
			if tc.damage != nil {
				tc.damage(dir)
			}
			cfg := good
			cfg.DataDir = dir
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			before := dirContents(t, dir)
			n, err := Open(cfg)
			if err == nil {
				n.Close()
				t.Fatalf("Open succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
			if after := dirContents(t, dir); !reflect.DeepEqual(before, after) {
				for p := range after {
					if before[p] != after[p] {
						t.Errorf("changed: %s", p)
					}
				}
				t.Fatalf("refused Open changed the directory")
			}
		})
	}

	t.Run("directory in use", func(t *testing.T) {
		n := mustOpen(t, good)
		defer n.Close()
		other := good
		other.RaftAddr = freeAddr(t)
		if n2, err := Open(other); err == nil {
			n2.Close()
			t.Fatalf("second Open of a directory in use succeeded")
		}
	})

	t.Run("reopen with matching identity", func(t *testing.T) {
		cfg := good
		cfg.ClusterID = clusterID
		n := mustOpen(t, cfg)
		defer n.Close()
		waitFor(t, "leader", 10*time.Second, n.IsLeader)
		if err := n.Barrier(context.Background()); err != nil {
			t.Fatal(err)
		}
		n.Read(func(s *model.State) {
			if s.VCenters["vc1"] == nil {
				t.Fatalf("state lost on reopen")
			}
		})
	})
}

func TestOpenConfigErrors(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "d")
	cases := []struct {
		name string
		cfg  Config
		want string
	}{
		{"port zero", Config{NodeID: "n1", DataDir: dir, RaftAddr: "127.0.0.1:0", Bootstrap: true}, "not advertisable"},
		{"unspecified host", Config{NodeID: "n1", DataDir: dir, RaftAddr: ":7000", Bootstrap: true}, "not advertisable"},
		{"no node id", Config{DataDir: dir, RaftAddr: "127.0.0.1:7000"}, "node ID"},
		{"short key", Config{NodeID: "n1", DataDir: dir, RaftAddr: "127.0.0.1:7000", ClusterKey: []byte{1}}, "cluster key"},
		{"join without cluster id", Config{NodeID: "n1", DataDir: dir, RaftAddr: freeAddr(t)}, "cluster ID is required"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n, err := Open(tc.cfg)
			if err == nil {
				n.Close()
				t.Fatalf("Open succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
			if _, err := os.Stat(filepath.Join(dir, nodeFileName)); err == nil {
				t.Fatalf("refused Open wrote node.json")
			}
		})
	}
}

// TestSecretsNeverInClear seals secrets the way the appliance does and greps
// the raft log and snapshots for the plaintext.
func TestSecretsNeverInClear(t *testing.T) {
	cfg := testConfig("n1", filepath.Join(t.TempDir(), "n1"), freeAddr(t))
	cfg.Bootstrap = true
	n := mustOpen(t, cfg)
	waitFor(t, "leader", 10*time.Second, n.IsLeader)

	password := []byte("Tr0ub4dor&3-vcenter-password")
	tenantKey := []byte("tenant-key-material-0123456789ab")
	sealedPw, err := n.Seal(password)
	if err != nil {
		t.Fatal(err)
	}
	sealedKey, err := n.Seal(tenantKey)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := n.Seal(password); bytes.Equal(again, sealedPw) {
		t.Fatalf("sealing twice gave the same bytes: nonce reuse")
	}
	vc := testVCenter("vc1", "one")
	vc.PasswordSealed = sealedPw
	apply(t, n, PutVCenter{VCenter: vc, Create: true})
	apply(t, n, PutTenant{Tenant: model.Tenant{ID: "tn1", Name: "acme", KeySealed: sealedKey, CreatedAt: t0}, Create: true})
	if err := n.raft.Snapshot().Error(); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	key := n.ClusterKey()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}

	info, err := os.Stat(filepath.Join(cfg.DataDir, keyFileName))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("cluster.key mode: %v %v", info, err)
	}
	snapFiles := 0
	for p, content := range dirContents(t, cfg.DataDir) {
		if strings.Contains(p, snapshotsDir) && strings.HasSuffix(p, "state.bin") {
			snapFiles++
		}
		if strings.HasSuffix(p, keyFileName) {
			continue
		}
		if bytes.Contains([]byte(content), password) || bytes.Contains([]byte(content), tenantKey) {
			t.Fatalf("plaintext secret found in %s", p)
		}
	}
	if snapFiles == 0 {
		t.Fatalf("no snapshot was written")
	}

	// The secret survives a restart sealed, and only the cluster key opens it.
	n = mustOpen(t, cfg)
	defer n.Close()
	if !bytes.Equal(n.ClusterKey(), key) {
		t.Fatalf("cluster key changed across restart")
	}
	waitFor(t, "leader", 10*time.Second, n.IsLeader)
	if err := n.Barrier(context.Background()); err != nil {
		t.Fatal(err)
	}
	var stored []byte
	n.Read(func(s *model.State) { stored = bytes.Clone(s.VCenters["vc1"].PasswordSealed) })
	plain, err := n.Unseal(stored)
	if err != nil || !bytes.Equal(plain, password) {
		t.Fatalf("unseal stored password: %q, %v", plain, err)
	}
	stored[len(stored)-1] ^= 1
	if _, err := n.Unseal(stored); !errors.Is(err, ErrSealed) {
		t.Fatalf("unseal of altered bytes: %v, want ErrSealed", err)
	}
	other, _ := newSealer(bytes.Repeat([]byte{9}, 32))
	if _, err := other.unseal(sealedPw); !errors.Is(err, ErrSealed) {
		t.Fatalf("unseal with another key: %v, want ErrSealed", err)
	}
}

// TestSnapshotThroughRaft forces a raft snapshot, writes more, restarts and
// expects the same state from snapshot plus log.
func TestSnapshotThroughRaft(t *testing.T) {
	cfg := testConfig("n1", filepath.Join(t.TempDir(), "n1"), freeAddr(t))
	cfg.Bootstrap = true
	n := mustOpen(t, cfg)
	waitFor(t, "leader", 10*time.Second, n.IsLeader)
	apply(t, n, PutVCenter{VCenter: testVCenter("vc1", "one"), Create: true})
	for i := range 20 {
		p := testPolicy("p"+string(rune('a'+i)), "pol-"+string(rune('a'+i)), "vc1")
		apply(t, n, PutPolicy{Policy: p, Create: true})
	}
	if err := n.raft.Snapshot().Error(); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	apply(t, n, SetPolicyEnabled{ID: "pa", Enabled: false})
	// An entry of a type from a newer release, flagged ignorable, is
	// committed and skipped; it must not stop the node now or on replay.
	if err := n.raft.Apply(append([]byte{0x70 | byte(IgnoreUnknownFlag)}, `{"future":true}`...), 5*time.Second).Error(); err != nil {
		t.Fatalf("apply flagged unknown entry: %v", err)
	}
	apply(t, n, DeletePolicy{ID: "pb"})
	want := nodeState(t, n)
	applied := n.AppliedIndex()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}

	n = mustOpen(t, cfg)
	defer n.Close()
	waitFor(t, "replay", 10*time.Second, func() bool { return n.AppliedIndex() >= applied })
	// raft counts an entry applied once it is handed to the FSM, which may
	// not have consumed it yet: a consistent read waits for it
	waitFor(t, "leader", 10*time.Second, n.IsLeader)
	var got []byte
	if err := n.ReadConsistent(context.Background(), func(s *model.State) { got = stateBytes(t, s) }); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("state after restart from snapshot differs")
	}
}
