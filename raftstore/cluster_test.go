package raftstore

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
)

func policyCount(n *Node) int {
	c := 0
	n.Read(func(s *model.State) { c = len(s.Policies) })
	return c
}

func hasPolicy(n *Node, id string) bool {
	ok := false
	n.Read(func(s *model.State) { _, ok = s.Policies[id] })
	return ok
}

// TestClusterReplicationFailoverRestart covers election, replication to
// followers, loss of the leader, re-election with every committed write
// kept, and a restarted node catching up from its own disk.
func TestClusterReplicationFailoverRestart(t *testing.T) {
	nodes := startCluster(t, 3, nil)
	li := waitLeader(t, nodes)
	leader := nodes[li].node

	apply(t, leader, PutVCenter{VCenter: testVCenter("vc1", "vc-one"), Create: true})
	for i := range 5 {
		apply(t, leader, PutPolicy{Policy: testPolicy(fmt.Sprintf("p%d", i), fmt.Sprintf("pol-%d", i), "vc1"), Create: true})
	}
	for _, n := range nodes {
		waitFor(t, "replication to "+n.cfg.NodeID, 10*time.Second, func() bool { return policyCount(n.node) == 5 })
	}
	// Followers refuse writes and name the leader.
	fi := (li + 1) % 3
	_, err := nodes[fi].node.Apply(context.Background(), DeletePolicy{ID: "p0"})
	var nle *NotLeaderError
	if !errors.As(err, &nle) || nle.LeaderID != nodes[li].cfg.NodeID || nle.LeaderAddr != nodes[li].cfg.RaftAddr {
		t.Fatalf("apply on follower: got %v, want NotLeaderError naming %s", err, nodes[li].cfg.NodeID)
	}
	if errors.Is(err, model.ErrNoLeader) {
		t.Fatalf("NotLeaderError with a known leader must not match ErrNoLeader")
	}
	if err := nodes[fi].node.ReadConsistent(context.Background(), func(*model.State) {}); !errors.As(err, &nle) {
		t.Fatalf("consistent read on follower: got %v, want NotLeaderError", err)
	}

	// Kill the leader without a graceful leave.
	oldLeader := nodes[li]
	if err := oldLeader.node.Close(); err != nil {
		t.Fatalf("close leader: %v", err)
	}
	oldLeader.node = nil
	ni := waitLeader(t, nodes)
	newLeader := nodes[ni].node
	var got int
	if err := newLeader.ReadConsistent(context.Background(), func(s *model.State) { got = len(s.Policies) }); err != nil {
		t.Fatalf("consistent read on new leader: %v", err)
	}
	if got != 5 {
		t.Fatalf("new leader has %d policies, want the 5 committed", got)
	}
	apply(t, newLeader, PutPolicy{Policy: testPolicy("p5", "pol-5", "vc1"), Create: true})

	// The old leader comes back on the same directory and catches up.
	oldLeader.cfg.Bootstrap = true // must not re-bootstrap a directory with state
	oldLeader.node = mustOpen(t, oldLeader.cfg)
	waitFor(t, "restarted node catching up", 15*time.Second, func() bool { return hasPolicy(oldLeader.node, "p5") })
	if oldLeader.node.ClusterID() != nodes[ni].node.ClusterID() {
		t.Fatalf("restarted node has cluster %q, want %q", oldLeader.node.ClusterID(), nodes[ni].node.ClusterID())
	}
	want := nodeState(t, newLeader)
	waitFor(t, "identical state on all nodes", 10*time.Second, func() bool {
		for _, n := range nodes {
			if string(nodeState(t, n.node)) != string(want) {
				return false
			}
		}
		return true
	})
}

// TestMinorityCannotCommit stops two of three nodes: the survivor must not
// commit anything.
func TestMinorityCannotCommit(t *testing.T) {
	nodes := startCluster(t, 3, nil)
	li := waitLeader(t, nodes)
	leader := nodes[li].node
	apply(t, leader, PutVCenter{VCenter: testVCenter("vc1", "vc-one"), Create: true})
	for i, n := range nodes {
		if i != li {
			waitFor(t, "replication", 10*time.Second, func() bool {
				ok := false
				n.node.Read(func(s *model.State) { ok = s.VCenters["vc1"] != nil })
				return ok
			})
			n.node.Close()
			n.node = nil
		}
	}
	before := nodeState(t, leader)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err := leader.Apply(ctx, PutVCenter{VCenter: testVCenter("vc2", "vc-two"), Create: true})
	if err == nil {
		t.Fatalf("apply on a minority succeeded")
	}
	t.Logf("apply on minority: %v", err)
	// Whatever raft still holds in its log, nothing may have been applied.
	if after := nodeState(t, leader); string(after) != string(before) {
		t.Fatalf("state changed on a minority")
	}
	waitFor(t, "survivor stepping down", 5*time.Second, func() bool { return !leader.IsLeader() })
	err = leader.ReadConsistent(context.Background(), func(*model.State) {})
	if !errors.Is(err, model.ErrNoLeader) {
		t.Fatalf("consistent read without quorum: got %v, want ErrNoLeader", err)
	}

	// One node back gives a quorum again: writes succeed and the two agree.
	var back *testNode
	for i, n := range nodes {
		if i != li {
			back = n
			break
		}
	}
	back.node = mustOpen(t, back.cfg)
	ni := waitLeader(t, nodes)
	apply(t, nodes[ni].node, PutVCenter{VCenter: testVCenter("vc3", "vc-three"), Create: true})
	waitFor(t, "healed nodes agreeing", 10*time.Second, func() bool {
		return bytes.Equal(nodeState(t, leader), nodeState(t, back.node))
	})
}

// TestTLSTransferAndRemove runs a cluster over mutual TLS with certificates
// made here, moves leadership and removes a member.
func TestTLSTransferAndRemove(t *testing.T) {
	pki := newTestPKI(t, "test-ca")
	configs := make([]*tls.Config, 3)
	for i := range configs {
		configs[i] = pki.nodeTLS(t, fmt.Sprintf("n%d", i+1))
	}
	nodes := startCluster(t, 3, func(i int) *tls.Config { return configs[i] })
	li := waitLeader(t, nodes)
	leader := nodes[li].node
	changes := leader.LeadershipChanges()
	apply(t, leader, PutVCenter{VCenter: testVCenter("vc1", "vc-one"), Create: true})

	// A node with a certificate from another CA cannot take part.
	other := newTestPKI(t, "other-ca")
	cfg := testConfig("rogue", t.TempDir(), freeAddr(t))
	cfg.TLS = other.nodeTLS(t, "rogue")
	cfg.ClusterID, cfg.ClusterKey = leader.ClusterID(), leader.ClusterKey()
	rogue := mustOpen(t, cfg)
	defer rogue.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	_ = leader.AddVoter(ctx, "rogue", cfg.RaftAddr)
	cancel()
	time.Sleep(300 * time.Millisecond)
	rogue.Read(func(s *model.State) {
		if len(s.VCenters) != 0 {
			t.Errorf("node with a foreign certificate received state")
		}
	})
	if err := leader.RemoveServer(context.Background(), "rogue"); err != nil {
		t.Fatalf("remove rogue: %v", err)
	}

	to := nodes[(li+1)%3]
	if err := leader.TransferLeadership(context.Background(), to.cfg.NodeID); err != nil {
		t.Fatalf("transfer leadership: %v", err)
	}
	waitFor(t, "leadership moved", 10*time.Second, func() bool { return to.node.IsLeader() })
	waitFor(t, "old leader told it lost leadership", 5*time.Second, func() bool {
		for {
			select {
			case v := <-changes:
				if !v {
					return true
				}
			default:
				return false
			}
		}
	})
	if err := to.node.TransferLeadership(context.Background(), "nobody"); !errors.Is(err, model.ErrNotFound) {
		t.Fatalf("transfer to unknown node: got %v, want ErrNotFound", err)
	}

	gone := nodes[li]
	if err := to.node.RemoveServer(context.Background(), gone.cfg.NodeID); err != nil {
		t.Fatalf("remove server: %v", err)
	}
	members, err := to.node.Members()
	if err != nil {
		t.Fatalf("members: %v", err)
	}
	if len(members) != 2 {
		t.Fatalf("members after remove: %+v", members)
	}
	leaders := 0
	for _, m := range members {
		if m.ID == gone.cfg.NodeID {
			t.Fatalf("removed node still a member: %+v", members)
		}
		if m.Suffrage != "Voter" {
			t.Fatalf("member %s has suffrage %q", m.ID, m.Suffrage)
		}
		if m.Leader {
			leaders++
		}
	}
	if leaders != 1 {
		t.Fatalf("want exactly one leader in %+v", members)
	}
	gone.node.Close()
	gone.node = nil
	// Two voters remain and still commit.
	apply(t, to.node, PutVCenter{VCenter: testVCenter("vc2", "vc-two"), Create: true})
	if to.node.Stats()["num_peers"] != "1" {
		t.Fatalf("stats num_peers = %q, want 1", to.node.Stats()["num_peers"])
	}
}

// TestFollowerCatchesUpFromSnapshot makes the leader compact its log while a
// follower is down, so the follower must be brought back by an installed
// snapshot (FSM.Restore through raft).
func TestFollowerCatchesUpFromSnapshot(t *testing.T) {
	var logs syncBuffer
	nodes := startClusterWith(t, 3, nil, func(c *Config) {
		c.TrailingLogs = 2
		c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	})
	li := waitLeader(t, nodes)
	leader := nodes[li].node
	apply(t, leader, PutVCenter{VCenter: testVCenter("vc1", "one"), Create: true})
	lagging := nodes[(li+1)%3]
	waitFor(t, "replication", 10*time.Second, func() bool {
		ok := false
		lagging.node.Read(func(s *model.State) { ok = s.VCenters["vc1"] != nil })
		return ok
	})
	lagging.node.Close()
	lagging.node = nil

	for i := range 20 {
		apply(t, leader, PutPolicy{Policy: testPolicy(fmt.Sprintf("p%d", i), fmt.Sprintf("pol-%d", i), "vc1"), Create: true})
	}
	// The caller's struct is not aliased by the stored copy.
	p := testPolicy("alias", "alias", "vc1")
	apply(t, leader, PutPolicy{Policy: p, Create: true})
	p.VMs[0].MoRef = "changed-after-apply"
	leader.Read(func(s *model.State) {
		if s.Policies["alias"].VMs[0].MoRef != "vm-alias" {
			t.Fatalf("stored policy aliases the caller's slice")
		}
	})
	if err := leader.raft.Snapshot().Error(); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	apply(t, leader, SetPolicyEnabled{ID: "p0", Enabled: false})

	lagging.node = mustOpen(t, lagging.cfg)
	want := nodeState(t, leader)
	waitFor(t, "lagging follower restored from snapshot", 15*time.Second, func() bool {
		return bytes.Equal(nodeState(t, lagging.node), want)
	})
	// Node IDs are in every log line; the follower must have installed it.
	installed := false
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "Installed remote snapshot") && strings.Contains(line, "node="+lagging.cfg.NodeID) {
			installed = true
		}
	}
	if !installed {
		t.Fatalf("follower %s caught up without installing a snapshot", lagging.cfg.NodeID)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestNotLeaderErrorIs(t *testing.T) {
	if !errors.Is(&NotLeaderError{}, model.ErrNoLeader) {
		t.Fatalf("NotLeaderError without a leader must match ErrNoLeader")
	}
	if errors.Is(&NotLeaderError{LeaderID: "n1", LeaderAddr: "127.0.0.1:1"}, model.ErrNoLeader) {
		t.Fatalf("NotLeaderError with a leader must not match ErrNoLeader")
	}
	wrapped := fmt.Errorf("apply: %w", &NotLeaderError{})
	if model.ErrorCode(wrapped) != model.CodeUnavailable {
		t.Fatalf("code %q, want %q", model.ErrorCode(wrapped), model.CodeUnavailable)
	}
}
