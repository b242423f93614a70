package appliance

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/internal/pki"
	"github.com/continuum-cdp/continuum/raftstore"
)

// TestLeaderRunnerFollowsRealTransfer runs a 3-node raft cluster in this
// process with a runner per node and checks that the counting controller
// runs only on the leader, before and after a leadership transfer.
func TestLeaderRunnerFollowsRealTransfer(t *testing.T) {
	ca, err := pki.NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{"n1", "n2", "n3"}
	nodes := map[string]*raftstore.Node{}
	running := map[string]*atomic.Int32{}
	starts := map[string]*atomic.Int32{}
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	defer func() {
		cancel()
		wg.Wait()
		for _, n := range nodes {
			n.Close()
		}
	}()
	var clusterID string
	var key []byte
	addrs := map[string]string{}
	for i, id := range ids {
		leaf, err := ca.Issue(id, []string{"127.0.0.1"}, 0)
		if err != nil {
			t.Fatal(err)
		}
		addrs[id] = freeAddr(t)
		cfg := raftstore.Config{NodeID: id, DataDir: t.TempDir(), RaftAddr: addrs[id],
			TLS:              pki.RaftServerTLS(ca.Cert, leaf.TLSCertificate(ca.Cert)),
			HeartbeatTimeout: 200 * time.Millisecond, ElectionTimeout: 200 * time.Millisecond,
			LeaderLeaseTimeout: 100 * time.Millisecond, CommitTimeout: 5 * time.Millisecond}
		if i == 0 {
			cfg.Bootstrap = true
		} else {
			cfg.ClusterID, cfg.ClusterKey = clusterID, key
		}
		n, err := raftstore.Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		nodes[id] = n
		if i == 0 {
			clusterID, key = n.ClusterID(), n.ClusterKey()
		}
		running[id], starts[id] = &atomic.Int32{}, &atomic.Int32{}
		lr := NewLeaderRunner(n.LeadershipChanges(), n, nil)
		r, s := running[id], starts[id]
		lr.Register(Controller{Name: "count", Run: func(ctx context.Context) error {
			s.Add(1)
			r.Add(1)
			defer r.Add(-1)
			<-ctx.Done()
			return nil
		}})
		wg.Add(1)
		go func() { defer wg.Done(); lr.Run(ctx) }()
		if i == 0 {
			waitFor(t, "first leader", n.IsLeader)
		}
	}
	for _, id := range ids[1:] {
		actx, acancel := context.WithTimeout(ctx, 10*time.Second)
		if err := nodes["n1"].AddVoter(actx, id, addrs[id]); err != nil {
			t.Fatal(err)
		}
		acancel()
	}
	onlyOn := func(leader string) func() bool {
		return func() bool {
			for _, id := range ids {
				want := int32(0)
				if id == leader {
					want = 1
				}
				if running[id].Load() != want {
					return false
				}
			}
			return true
		}
	}
	waitFor(t, "controller on n1 only", onlyOn("n1"))
	tctx, tcancel := context.WithTimeout(ctx, 10*time.Second)
	defer tcancel()
	if err := nodes["n1"].TransferLeadership(tctx, "n2"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "n2 leads", nodes["n2"].IsLeader)
	waitFor(t, "controller on n2 only", onlyOn("n2"))
	if err := nodes["n2"].TransferLeadership(tctx, "n1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "controller back on n1 only", onlyOn("n1"))
	if starts["n1"].Load() != 2 || starts["n2"].Load() != 1 || starts["n3"].Load() != 0 {
		t.Fatalf("starts n1=%d n2=%d n3=%d", starts["n1"].Load(), starts["n2"].Load(), starts["n3"].Load())
	}
}
