package raftstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"

	"github.com/continuum-cdp/continuum/internal/model"
)

// Config configures a Node.
type Config struct {
	NodeID    string
	DataDir   string      // raft.db (bolt), snapshots/, cluster.key (0600), node.json
	RaftAddr  string      // host:port to bind and advertise; port 0 is refused
	TLS       *tls.Config // mTLS for the raft transport; nil: plain TCP
	Bootstrap bool        // create a new single-voter cluster if this dir has no raft state
	// ClusterID is required when joining (from the join response); generated
	// on bootstrap.
	ClusterID string
	// ClusterKey is 32 bytes; when joining it is written to cluster.key if
	// absent; nil: read the file or generate a key.
	ClusterKey []byte
	Logger     *slog.Logger

	// Optional tuning; zero means defaults for a LAN (failover in ~1-2 s).
	HeartbeatTimeout, ElectionTimeout, LeaderLeaseTimeout, CommitTimeout time.Duration
	SnapshotThreshold                                                    uint64
	SnapshotInterval                                                     time.Duration
	// TrailingLogs is how many entries a snapshot leaves in the log for slow
	// followers; zero: raft's default (10240).
	TrailingLogs uint64
}

const (
	nodeFileName   = "node.json"
	keyFileName    = "cluster.key"
	raftDBName     = "raft.db"
	snapshotsDir   = "snapshots"
	nodeFileFormat = 1

	defaultApplyTimeout = 10 * time.Second
	closeTimeout        = 15 * time.Second
)

// nodeFile is DATA/node.json: which cluster and node a data directory
// belongs to, so a node never starts on someone else's state.
type nodeFile struct {
	Format    int    `json:"format"`
	ClusterID string `json:"cluster_id"`
	NodeID    string `json:"node_id"`
}

// Node is one member of the coordinator's raft cluster.
type Node struct {
	// barrierTerm is the term of the last barrier ReadConsistent waited for
	barrierTerm atomic.Uint64

	cfg       Config
	log       *slog.Logger
	clusterID string
	key       []byte
	sealer    *sealer

	fsm   *FSM
	raft  *raft.Raft
	store *raftboltdb.BoltStore
	trans *raft.NetworkTransport
	snaps *raft.FileSnapshotStore
}

// NotLeaderError says this node cannot serve the request and who can.
type NotLeaderError struct {
	LeaderID, LeaderAddr string
}

func (e *NotLeaderError) Error() string {
	if e.LeaderID == "" {
		return "not the leader, and no leader is known"
	}
	return fmt.Sprintf("not the leader; leader is %s at %s", e.LeaderID, e.LeaderAddr)
}

// Is matches model.ErrNoLeader only when no leader is known.
func (e *NotLeaderError) Is(target error) bool {
	return target == model.ErrNoLeader && e.LeaderID == ""
}

// Member is one server of the raft configuration.
type Member struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	Suffrage string `json:"suffrage"`
	Leader   bool   `json:"leader"`
}

// Open checks the data directory, opens the stores and starts raft. It
// refuses a directory that belongs to another node or cluster, or whose files
// cannot be read, and never rewrites existing files in that case.
func Open(cfg Config) (*Node, error) {
	if cfg.NodeID == "" {
		return nil, fmt.Errorf("open raft node: node ID is required")
	}
	if cfg.DataDir == "" {
		return nil, fmt.Errorf("open raft node %s: data directory is required", cfg.NodeID)
	}
	if cfg.RaftAddr == "" {
		return nil, fmt.Errorf("open raft node %s: raft address is required", cfg.NodeID)
	}
	if _, err := advertisable(cfg.RaftAddr); err != nil {
		return nil, fmt.Errorf("open raft node %s: %w", cfg.NodeID, err)
	}
	if cfg.ClusterKey != nil && len(cfg.ClusterKey) != ClusterKeySize {
		return nil, fmt.Errorf("open raft node %s: cluster key is %d bytes, want %d", cfg.NodeID, len(cfg.ClusterKey), ClusterKeySize)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("node", cfg.NodeID)
	n := &Node{cfg: cfg, log: logger}
	if err := n.prepareDir(); err != nil {
		return nil, fmt.Errorf("open raft node %s in %s: %w", cfg.NodeID, cfg.DataDir, err)
	}
	if err := n.start(); err != nil {
		n.closeStores()
		return nil, fmt.Errorf("open raft node %s in %s: %w", cfg.NodeID, cfg.DataDir, err)
	}
	return n, nil
}

// prepareDir checks node.json and cluster.key and creates them on a fresh
// directory. Every check runs before anything is written.
func (n *Node) prepareDir() error {
	cfg := n.cfg
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	nodePath := filepath.Join(cfg.DataDir, nodeFileName)
	keyPath := filepath.Join(cfg.DataDir, keyFileName)
	dbPath := filepath.Join(cfg.DataDir, raftDBName)

	nf, nodeExists, err := readNodeFile(nodePath)
	if err != nil {
		return err
	}
	key, keyExists, err := readKeyFile(keyPath)
	if err != nil {
		return err
	}
	dbExists, err := exists(dbPath)
	if err != nil {
		return err
	}
	snapExists, err := nonEmptyDir(filepath.Join(cfg.DataDir, snapshotsDir))
	if err != nil {
		return err
	}

	if nodeExists {
		if nf.NodeID != cfg.NodeID {
			return fmt.Errorf("data directory belongs to node %q, not %q", nf.NodeID, cfg.NodeID)
		}
		if cfg.ClusterID != "" && nf.ClusterID != cfg.ClusterID {
			return fmt.Errorf("data directory belongs to cluster %q, not %q", nf.ClusterID, cfg.ClusterID)
		}
		if !keyExists {
			return fmt.Errorf("%s is missing although %s exists", keyPath, nodePath)
		}
		if cfg.ClusterKey != nil && !bytes.Equal(cfg.ClusterKey, key) {
			return fmt.Errorf("%s holds a different cluster key than the one given", keyPath)
		}
		n.clusterID, n.key = nf.ClusterID, key
		return n.initSealer()
	}

	// No node.json: only a directory without raft state may be adopted.
	if dbExists || snapExists {
		return fmt.Errorf("raft state present without %s: not a data directory of this product, refusing to use it", nodePath)
	}
	clusterID := cfg.ClusterID
	if clusterID == "" {
		if !cfg.Bootstrap {
			return fmt.Errorf("cluster ID is required to join a cluster")
		}
		clusterID = randomID()
	}
	switch {
	case keyExists && cfg.ClusterKey != nil && !bytes.Equal(cfg.ClusterKey, key):
		return fmt.Errorf("%s holds a different cluster key than the one given", keyPath)
	case keyExists:
	case cfg.ClusterKey != nil:
		key = bytes.Clone(cfg.ClusterKey)
	default:
		key = make([]byte, ClusterKeySize)
		if _, err := rand.Read(key); err != nil {
			return fmt.Errorf("generate cluster key: %w", err)
		}
	}
	n.clusterID, n.key = clusterID, key
	if err := n.initSealer(); err != nil {
		return err
	}
	if !keyExists {
		if err := writeFileAtomic(keyPath, []byte(hex.EncodeToString(key)+"\n"), 0o600); err != nil {
			return fmt.Errorf("write cluster key: %w", err)
		}
	}
	b, err := json.Marshal(nodeFile{Format: nodeFileFormat, ClusterID: clusterID, NodeID: cfg.NodeID})
	if err != nil {
		return err
	}
	if err := writeFileAtomic(nodePath, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", nodeFileName, err)
	}
	return nil
}

func (n *Node) initSealer() error {
	s, err := newSealer(n.key)
	if err != nil {
		return err
	}
	n.sealer = s
	return nil
}

func readNodeFile(path string) (nodeFile, bool, error) {
	var nf nodeFile
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nf, false, nil
	}
	if err != nil {
		return nf, false, fmt.Errorf("read %s: %w", path, err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&nf); err != nil {
		return nf, false, fmt.Errorf("%s is corrupt: %w", path, err)
	}
	if nf.Format != nodeFileFormat {
		return nf, false, fmt.Errorf("%s has format %d, want %d", path, nf.Format, nodeFileFormat)
	}
	if nf.NodeID == "" || nf.ClusterID == "" {
		return nf, false, fmt.Errorf("%s is corrupt: node_id and cluster_id are required", path)
	}
	return nf, true, nil
}

func readKeyFile(path string) ([]byte, bool, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read %s: %w", path, err)
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(key) != ClusterKeySize {
		return nil, false, fmt.Errorf("%s is corrupt: want %d hex-encoded bytes", path, ClusterKeySize)
	}
	return key, true, nil
}

func exists(path string) (bool, error) {
	_, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("stat %s: %w", path, err)
	}
	return true, nil
}

func nonEmptyDir(path string) (bool, error) {
	ents, err := os.ReadDir(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	return len(ents) > 0, nil
}

// writeFileAtomic writes a new file through a temporary name so a crash
// leaves either nothing or the whole file.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

func randomID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// start opens the stores and the transport and starts raft.
func (n *Node) start() error {
	cfg := n.cfg
	hl := newHCLogger(n.log)

	// Everything that can refuse the directory runs read-only first: opening
	// bolt read-write commits a transaction, so a refusal after that would
	// already have rewritten raft.db.
	if err := verifyStores(cfg.DataDir); err != nil {
		return err
	}
	rc, err := n.raftConfig(hl)
	if err != nil {
		return err
	}
	stream, err := newStreamLayer(cfg.RaftAddr, cfg.TLS)
	if err != nil {
		return err
	}
	n.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  stream,
		MaxPool: 3,
		Timeout: 5 * time.Second,
		Logger:  hl.Named("net"),
		// One RPC in flight turns off pipelined replication. With the
		// default of 2 the pipeline can deadlock when a follower rejects an
		// append (the response reader waits for a consumer that has quit),
		// which stops replication to that follower and hangs Shutdown.
		MaxRPCsInFlight: 1,
	})

	store, err := raftboltdb.New(raftboltdb.Options{
		Path:        filepath.Join(cfg.DataDir, raftDBName),
		BoltOptions: &bbolt.Options{Timeout: time.Second},
	})
	if err != nil {
		return fmt.Errorf("open %s: %w", raftDBName, err)
	}
	n.store = store

	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, 2, hl.Named("snapshot")) // keeps them in DATA/snapshots/
	if err != nil {
		return fmt.Errorf("open snapshot store: %w", err)
	}
	n.snaps = snaps

	hasState, err := raft.HasExistingState(store, store, snaps)
	if err != nil {
		return fmt.Errorf("inspect raft state: %w", err)
	}
	n.fsm = NewFSM(n.log)
	r, err := raft.NewRaft(rc, n.fsm, store, store, snaps, n.trans)
	if err != nil {
		return fmt.Errorf("start raft: %w", err)
	}
	n.raft = r

	if cfg.Bootstrap && !hasState {
		f := r.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{
			Suffrage: raft.Voter,
			ID:       rc.LocalID,
			Address:  n.trans.LocalAddr(),
		}}})
		if err := f.Error(); err != nil {
			return fmt.Errorf("bootstrap cluster: %w", err)
		}
		n.log.Info("bootstrapped new cluster", "cluster_id", n.clusterID)
	}
	n.log.Info("raft node started", "addr", cfg.RaftAddr, "tls", cfg.TLS != nil, "existing_state", hasState)
	return nil
}

// raftConfig builds and validates raft's configuration from ours.
func (n *Node) raftConfig(hl hclog.Logger) (*raft.Config, error) {
	cfg := n.cfg
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.Logger = hl
	// A second without contact before a follower stands or a leader steps
	// down: on a busy two-core appliance a leader's heartbeats can be late
	// by more than half a second, and each needless election restarts the
	// controllers.
	rc.HeartbeatTimeout = orDefault(cfg.HeartbeatTimeout, time.Second)
	rc.ElectionTimeout = orDefault(cfg.ElectionTimeout, time.Second)
	rc.LeaderLeaseTimeout = orDefault(cfg.LeaderLeaseTimeout, time.Second)
	if rc.LeaderLeaseTimeout > rc.HeartbeatTimeout {
		rc.LeaderLeaseTimeout = rc.HeartbeatTimeout
	}
	rc.CommitTimeout = orDefault(cfg.CommitTimeout, rc.CommitTimeout)
	if cfg.SnapshotThreshold > 0 {
		rc.SnapshotThreshold = cfg.SnapshotThreshold
	}
	rc.SnapshotInterval = orDefault(cfg.SnapshotInterval, rc.SnapshotInterval)
	if cfg.TrailingLogs > 0 {
		rc.TrailingLogs = cfg.TrailingLogs
	}
	if err := raft.ValidateConfig(rc); err != nil {
		return nil, fmt.Errorf("raft configuration: %w", err)
	}
	return rc, nil
}

// verifyStores opens raft.db and the newest snapshot read-only and checks
// that they can be used, without writing anything.
func verifyStores(dir string) error {
	dbPath := filepath.Join(dir, raftDBName)
	if ok, err := exists(dbPath); err != nil {
		return err
	} else if ok {
		db, err := bbolt.Open(dbPath, 0o600, &bbolt.Options{ReadOnly: true, Timeout: time.Second})
		if err != nil {
			return fmt.Errorf("open %s: %w", raftDBName, err)
		}
		err = db.View(func(tx *bbolt.Tx) error {
			for _, b := range []string{"logs", "conf"} {
				if tx.Bucket([]byte(b)) == nil {
					return fmt.Errorf("bucket %q is missing: not a raft log", b)
				}
			}
			return nil
		})
		if cerr := db.Close(); err == nil && cerr != nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("check %s: %w", raftDBName, err)
		}
	}
	if ok, err := nonEmptyDir(filepath.Join(dir, snapshotsDir)); err != nil || !ok {
		return err
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, hclog.NewNullLogger())
	if err != nil {
		return fmt.Errorf("open snapshot store: %w", err)
	}
	list, err := snaps.List()
	if err != nil {
		return fmt.Errorf("list snapshots: %w", err)
	}
	if len(list) == 0 {
		// Only an interrupted snapshot (a .tmp directory) may be ignored;
		// a finished one that cannot be listed is damage.
		ents, err := os.ReadDir(filepath.Join(dir, snapshotsDir))
		if err != nil {
			return fmt.Errorf("read snapshots: %w", err)
		}
		for _, e := range ents {
			if e.IsDir() && !strings.HasSuffix(e.Name(), ".tmp") {
				return fmt.Errorf("snapshot %s cannot be read", e.Name())
			}
		}
		return nil
	}
	_, rc, err := snaps.Open(list[0].ID)
	if err != nil {
		return fmt.Errorf("snapshot %s is corrupt: %w", list[0].ID, err)
	}
	defer rc.Close()
	if _, err := readSnapshot(rc); err != nil {
		return fmt.Errorf("snapshot %s is corrupt: %w", list[0].ID, err)
	}
	return nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// closeStores releases whatever start managed to open.
func (n *Node) closeStores() {
	if n.raft != nil {
		_ = n.raft.Shutdown().Error()
	}
	if n.trans != nil {
		_ = n.trans.Close()
	}
	if n.store != nil {
		_ = n.store.Close()
	}
}

// Close stops raft, then the transport and the stores. It does not leave the
// cluster: the node is expected to come back.
func (n *Node) Close() error {
	var errs []error
	done := make(chan error, 1)
	go func() { done <- n.raft.Shutdown().Error() }()
	var shutErr error
	stopped := true
	select {
	case shutErr = <-done:
	case <-time.After(closeTimeout):
		// Closing the transport fails any RPC raft may be stuck on.
		_ = n.trans.Close()
		select {
		case shutErr = <-done:
		case <-time.After(closeTimeout / 3):
			stopped = false
		}
	}
	if shutErr != nil {
		errs = append(errs, fmt.Errorf("shutdown raft: %w", shutErr))
	}
	if err := n.trans.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close transport: %w", err))
	}
	if !stopped {
		// The log store stays open: raft may still write to it.
		return errors.Join(append(errs, fmt.Errorf("raft did not shut down within %s", closeTimeout+closeTimeout/3))...)
	}
	if err := n.store.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close %s: %w", raftDBName, err))
	}
	return errors.Join(errs...)
}

// ClusterID is the ID of the cluster this node belongs to.
func (n *Node) ClusterID() string { return n.clusterID }

// ClusterKey returns a copy of the key that seals secrets, to hand to
// joining nodes.
func (n *Node) ClusterKey() []byte { return bytes.Clone(n.key) }

// Seal encrypts a secret with the cluster key; callers seal before proposing
// so that no secret enters the raft log in clear.
func (n *Node) Seal(plain []byte) ([]byte, error) { return n.sealer.seal(plain) }

// Unseal reverses Seal.
func (n *Node) Unseal(sealed []byte) ([]byte, error) { return n.sealer.unseal(sealed) }

func (n *Node) notLeader() *NotLeaderError {
	addr, id := n.raft.LeaderWithID()
	return &NotLeaderError{LeaderID: string(id), LeaderAddr: string(addr)}
}

func ctxTimeout(ctx context.Context) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		d := time.Until(dl)
		if d <= 0 {
			return time.Millisecond
		}
		return d
	}
	return defaultApplyTimeout
}

// wait blocks on a raft future until it completes or ctx ends; a context
// without a deadline gets the default timeout, so no call waits forever.
func wait(ctx context.Context, f raft.Future) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultApplyTimeout)
		defer cancel()
	}
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// raftErr turns raft's leadership errors into NotLeaderError.
func (n *Node) raftErr(what string, err error) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost),
		errors.Is(err, raft.ErrLeadershipTransferInProgress), errors.Is(err, raft.ErrNotVoter):
		return fmt.Errorf("%s: %w", what, n.notLeader())
	}
	return fmt.Errorf("%s: %w", what, err)
}

// Apply proposes cmd and waits until it is applied on this (leader) node.
// A state error (validation, conflict, not found, precondition) is returned
// as is and the state is unchanged.
func (n *Node) Apply(ctx context.Context, cmd Command) (any, error) {
	if n.raft.State() != raft.Leader {
		return nil, n.notLeader()
	}
	b, err := EncodeCommand(cmd)
	if err != nil {
		return nil, err
	}
	if ctx == nil {
		ctx = context.Background()
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultApplyTimeout)
		defer cancel()
	}
	f := n.raft.Apply(b, ctxTimeout(ctx))
	if err := wait(ctx, f); err != nil {
		return nil, n.raftErr(fmt.Sprintf("apply %T", cmd), err)
	}
	res, ok := f.Response().(applyResult)
	if !ok {
		return nil, fmt.Errorf("apply %T: unexpected response %T", cmd, f.Response())
	}
	if res.Err != nil {
		return nil, res.Err
	}
	return res.Value, nil
}

// Read runs fn on the local state under the read lock. It may be stale on a
// follower. fn must not keep or modify anything it is given.
func (n *Node) Read(fn func(s *model.State)) { n.fsm.Read(fn) }

// ReadConsistent confirms leadership with a quorum, waits until everything
// committed before is applied here, then reads.
func (n *Node) ReadConsistent(ctx context.Context, fn func(s *model.State)) error {
	if n.raft.State() != raft.Leader {
		return n.notLeader()
	}
	if ctx == nil {
		ctx = context.Background()
	}
	if err := wait(ctx, n.raft.VerifyLeader()); err != nil {
		return n.raftErr("verify leadership", err)
	}
	// A new leader may not have applied entries committed by its
	// predecessor yet; the barrier makes the read include them. Raft
	// counts an entry applied once it is handed to the FSM, which may
	// not have consumed it: after a command of this term has been applied
	// here, or a barrier of this term has returned, the FSM holds
	// everything committed before.
	term := n.raft.CurrentTerm()
	caughtUp := n.fsm.term.Load() == term || n.barrierTerm.Load() == term
	if !caughtUp || n.raft.AppliedIndex() < n.raft.CommitIndex() || n.raft.LastIndex() > n.raft.AppliedIndex() {
		if err := n.Barrier(ctx); err != nil {
			return err
		}
		n.barrierTerm.Store(term)
	}
	n.fsm.Read(fn)
	return nil
}

// IsLeader reports whether this node is the raft leader.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// Leader returns the leader's ID and raft address, "" when unknown.
func (n *Node) Leader() (id, raftAddr string) {
	addr, sid := n.raft.LeaderWithID()
	return string(sid), string(addr)
}

// LeadershipChanges delivers true when this node becomes leader and false
// when it stops being leader. Raft never blocks on it: when the consumer is
// behind, only the latest value is kept. It has one consumer.
func (n *Node) LeadershipChanges() <-chan bool { return n.raft.LeaderCh() }

// Barrier waits until every entry committed before it is applied here.
func (n *Node) Barrier(ctx context.Context) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if err := wait(ctx, n.raft.Barrier(ctxTimeout(ctx))); err != nil {
		return n.raftErr("barrier", err)
	}
	return nil
}

// AddVoter adds (or updates) a voting member.
func (n *Node) AddVoter(ctx context.Context, id, raftAddr string) error {
	if id == "" || raftAddr == "" {
		return fmt.Errorf("add voter: %w", model.Invalid("id", "node ID and raft address are required"))
	}
	if ctx == nil {
		ctx = context.Background()
	}
	f := n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(raftAddr), 0, ctxTimeout(ctx))
	if err := wait(ctx, f); err != nil {
		return n.raftErr(fmt.Sprintf("add voter %s at %s", id, raftAddr), err)
	}
	return nil
}

// RemoveServer removes a member from the configuration.
func (n *Node) RemoveServer(ctx context.Context, id string) error {
	if ctx == nil {
		ctx = context.Background()
	}
	members, err := n.Members()
	if err != nil {
		return fmt.Errorf("remove server %s: %w", id, err)
	}
	found := false
	for _, m := range members {
		found = found || m.ID == id
	}
	if !found {
		return fmt.Errorf("remove server %s: %w", id, model.NotFound("id", "member", id))
	}
	f := n.raft.RemoveServer(raft.ServerID(id), 0, ctxTimeout(ctx))
	if err := wait(ctx, f); err != nil {
		return n.raftErr(fmt.Sprintf("remove server %s", id), err)
	}
	return nil
}

// TransferLeadership hands leadership to toID, or to any other voter when
// toID is "".
func (n *Node) TransferLeadership(ctx context.Context, toID string) error {
	if ctx == nil {
		ctx = context.Background()
	}
	var f raft.Future
	if toID == "" {
		f = n.raft.LeadershipTransfer()
	} else {
		members, err := n.Members()
		if err != nil {
			return fmt.Errorf("transfer leadership to %s: %w", toID, err)
		}
		addr := ""
		for _, m := range members {
			if m.ID == toID && m.Suffrage == raft.Voter.String() {
				addr = m.RaftAddr
			}
		}
		if addr == "" {
			return fmt.Errorf("transfer leadership: %w", model.NotFound("id", "voter", toID))
		}
		f = n.raft.LeadershipTransferToServer(raft.ServerID(toID), raft.ServerAddress(addr))
	}
	if err := wait(ctx, f); err != nil {
		return n.raftErr("transfer leadership", err)
	}
	return nil
}

// Members lists the servers of the latest raft configuration.
func (n *Node) Members() ([]Member, error) {
	f := n.raft.GetConfiguration()
	if err := wait(context.Background(), f); err != nil {
		return nil, fmt.Errorf("read raft configuration: %w", err)
	}
	_, leader := n.raft.LeaderWithID()
	var out []Member
	for _, s := range f.Configuration().Servers {
		out = append(out, Member{
			ID:       string(s.ID),
			RaftAddr: string(s.Address),
			Suffrage: s.Suffrage.String(),
			Leader:   s.ID == leader,
		})
	}
	return out, nil
}

// Stats returns raft's statistics.
func (n *Node) Stats() map[string]string { return n.raft.Stats() }

// AppliedIndex is the index of the last entry applied to the FSM.
func (n *Node) AppliedIndex() uint64 { return n.raft.AppliedIndex() }

// newHCLogger routes raft's hclog output into slog.
func newHCLogger(l *slog.Logger) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:        "raft",
		Level:       hclog.Info,
		Output:      &slogWriter{l: l},
		DisableTime: true, // slog stamps the time
	})
}

type slogWriter struct{ l *slog.Logger }

func (w *slogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	lvl := slog.LevelInfo
	for prefix, l := range map[string]slog.Level{
		"[ERROR]": slog.LevelError, "[WARN]": slog.LevelWarn, "[INFO]": slog.LevelInfo,
		"[DEBUG]": slog.LevelDebug, "[TRACE]": slog.LevelDebug,
	} {
		if rest, ok := strings.CutPrefix(line, prefix); ok {
			line, lvl = strings.TrimSpace(rest), l
			break
		}
	}
	w.l.Log(context.Background(), lvl, line, "component", "raft")
	return len(p), nil
}

var _ io.Writer = (*slogWriter)(nil)
