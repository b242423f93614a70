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
			// Default (LAN) timeouts: shorter ones make leadership flap
			// under the race detector on a busy machine.
			TLS: pki.RaftServerTLS(ca.Cert, leaf.TLSCertificate(ca.Cert))}
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
	leader := func() string {
		for _, id := range ids {
			if nodes[id].IsLeader() {
				return id
			}
		}
		return ""
	}
	for _, id := range ids[1:] {
		// Retry through whichever node leads: an election may happen
		// while the configuration grows.
		deadline := time.Now().Add(20 * time.Second)
		for {
			var err error
			if l := leader(); l != "" {
				actx, acancel := context.WithTimeout(ctx, 5*time.Second)
				err = nodes[l].AddVoter(actx, id, addrs[id])
				acancel()
				if err == nil {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("add voter %s: %v", id, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
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
	var first string
	waitFor(t, "a leader", func() bool { first = leader(); return first != "" })
	waitFor(t, "controller on the leader only", onlyOn(first))
	other := ids[0]
	if other == first {
		other = ids[1]
	}
	startsFirst := starts[first].Load()
	tctx, tcancel := context.WithTimeout(ctx, 20*time.Second)
	defer tcancel()
	if err := nodes[first].TransferLeadership(tctx, other); err != nil {
		t.Fatal(err)
	}
	waitFor(t, other+" leads", nodes[other].IsLeader)
	waitFor(t, "controller on the new leader only", onlyOn(other))
	if err := nodes[other].TransferLeadership(tctx, first); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "controller back on the first leader only", onlyOn(first))
	if starts[first].Load() <= startsFirst || starts[other].Load() < 1 {
		t.Fatalf("controllers not restarted: %s %d→%d, %s %d", first, startsFirst, starts[first].Load(), other, starts[other].Load())
	}
}
