package raftstore

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
)

// productTimings clears the test timings so benchmarks run with the
// defaults a deployment gets.
func productTimings(c *Config) {
	c.HeartbeatTimeout, c.ElectionTimeout, c.LeaderLeaseTimeout, c.CommitTimeout = 0, 0, 0, 0
}

func benchPolicyWrites(b *testing.B, size int) {
	nodes := startClusterWith(b, size, nil, productTimings)
	leader := nodes[waitLeader(b, nodes)].node
	apply(b, leader, PutVCenter{VCenter: testVCenter("vc1", "one"), Create: true})

	var seq atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	b.SetParallelism(4) // 4 clients per core: enough to fill raft's batches
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		var mine []time.Duration
		for pb.Next() {
			i := seq.Add(1)
			p := testPolicy(fmt.Sprintf("p%d", i), fmt.Sprintf("pol-%d", i), "vc1")
			t := time.Now()
			if _, err := leader.Apply(context.Background(), PutPolicy{Policy: p, Create: true}); err != nil {
				b.Errorf("apply: %v", err)
				return
			}
			mine = append(mine, time.Since(t))
		}
		mu.Lock()
		lat = append(lat, mine...)
		mu.Unlock()
	})
	elapsed := time.Since(start)
	b.StopTimer()
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "writes/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	var n int
	leader.Read(func(s *model.State) { n = len(s.Policies) })
	if n != len(lat) {
		b.Fatalf("%d writes acknowledged, %d policies stored", len(lat), n)
	}
}

// BenchmarkPolicyWrites measures committed policy writes on a 3-node
// loopback cluster with bolt's fsync on.
func BenchmarkPolicyWrites(b *testing.B) { benchPolicyWrites(b, 3) }

// BenchmarkPolicyWritesSingleNode is the baseline: the same writes on one node.
func BenchmarkPolicyWritesSingleNode(b *testing.B) { benchPolicyWrites(b, 1) }

// BenchmarkLeaderFailover kills the leader ten times and measures the time
// from the kill to the first successful write; every write acknowledged
// before a kill must be on the new leader.
func BenchmarkLeaderFailover(b *testing.B) {
	const drills = 10
	var times []time.Duration
	for range b.N {
		nodes := startClusterWith(b, 3, nil, productTimings)
		apply(b, nodes[waitLeader(b, nodes)].node, PutVCenter{VCenter: testVCenter("vc1", "one"), Create: true})
		var committed []string
		for d := range drills {
			li := waitLeader(b, nodes)
			id := fmt.Sprintf("d%d", d)
			apply(b, nodes[li].node, PutPolicy{Policy: testPolicy(id, "pol-"+id, "vc1"), Create: true})
			committed = append(committed, id)

			victim := nodes[li]
			victim.node.Close()
			victim.node = nil
			killed := time.Now()
			after := fmt.Sprintf("a%d", d)
			deadline := killed.Add(30 * time.Second)
			var winner *Node
			for winner == nil && time.Now().Before(deadline) {
				for _, n := range nodes {
					if n.node == nil || !n.node.IsLeader() {
						continue
					}
					ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
					_, err := n.node.Apply(ctx, PutPolicy{Policy: testPolicy(after, "pol-"+after, "vc1"), Create: true})
					cancel()
					if err == nil {
						winner = n.node
						break
					}
				}
				if winner == nil {
					time.Sleep(5 * time.Millisecond)
				}
			}
			if winner == nil {
				b.Fatalf("drill %d: no write succeeded within 30s of killing the leader", d)
			}
			times = append(times, time.Since(killed))
			committed = append(committed, after)
			winner.Read(func(s *model.State) {
				for _, id := range committed {
					if s.Policies[id] == nil {
						b.Fatalf("drill %d: committed write %s lost", d, id)
					}
				}
			})
			// Bring the victim back before the next drill.
			victim.node = mustOpen(b, victim.cfg)
			waitFor(b, "restarted node catching up", 20*time.Second, func() bool { return hasPolicy(victim.node, after) })
		}
	}
	slices.Sort(times)
	b.ReportMetric(times[len(times)/2].Seconds(), "median-s")
	b.ReportMetric(times[len(times)-1].Seconds(), "worst-s")
}
