package controllers

import (
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
)

// ErrNoProxy says no proxy is eligible for a role.
var ErrNoProxy = errors.New("no eligible proxy")

// Rank of a proxy in automatic selection; lower is preferred.
const (
	RankPhysical     = 0
	RankSameCluster  = 1
	RankOtherCluster = 2
)

// Selection asks for one proxy of a role.
type Selection struct {
	Role model.ProxyRole
	// Cluster is the cluster ID ("<vcenter-id>/<moref>") the proxy should
	// be near: the source VM's cluster for a source proxy, the replica's
	// for a target proxy.
	Cluster string
	// Manual, when non-empty, restricts the candidates to these proxy IDs.
	Manual []string
	// Load is the number of tasks assigned to each proxy ID.
	Load map[string]int
	// Now and HeartbeatTimeout: a proxy not heard from within the timeout
	// is dead and never chosen.
	Now              time.Time
	HeartbeatTimeout time.Duration
}

// Alive reports whether a proxy heartbeated within timeout of now.
func Alive(p *model.Proxy, now time.Time, timeout time.Duration) bool {
	return !p.LastHeartbeat.IsZero() && now.Sub(p.LastHeartbeat) <= timeout
}

// HostAlive reports whether the filter of host h heartbeated within
// timeout of now: the same rule as for proxies.
func HostAlive(h *model.Host, now time.Time, timeout time.Duration) bool {
	return !h.LastHeartbeat.IsZero() && now.Sub(h.LastHeartbeat) <= timeout
}

// Rank is p's rank for a proxy wanted near cluster.
func Rank(p *model.Proxy, cluster string) int {
	switch {
	case p.Kind == model.KindPhysical:
		return RankPhysical
	case p.ClusterID != "" && p.ClusterID == cluster:
		return RankSameCluster
	default:
		return RankOtherCluster
	}
}

// eligible reports whether p can take one more task of the selection.
func (s Selection) eligible(p *model.Proxy, manual map[string]bool) bool {
	if !p.Role.Serves(s.Role) || !Alive(p, s.Now, s.HeartbeatTimeout) {
		return false
	}
	if len(manual) > 0 && !manual[p.ID] {
		return false
	}
	return p.MaxTasks == 0 || s.Load[p.ID] < p.MaxTasks
}

// load is the fraction of capacity in use; a proxy without a declared
// capacity counts its tasks against a large nominal one.
func load(p *model.Proxy, n int) float64 {
	if p.MaxTasks > 0 {
		return float64(n) / float64(p.MaxTasks)
	}
	return float64(n) / 1e6
}

// SelectProxy picks a proxy: the best rank first (physical, then a VM in
// the wanted cluster, then any other), the least loaded within a rank, the
// smallest ID on a tie so that every leader picks the same. Manual
// selection ranks only the listed proxies.
func SelectProxy(proxies map[string]*model.Proxy, s Selection) (*model.Proxy, error) {
	manual := map[string]bool{}
	for _, id := range s.Manual {
		manual[id] = true
	}
	var cands []*model.Proxy
	for _, p := range proxies {
		if s.eligible(p, manual) {
			cands = append(cands, p)
		}
	}
	if len(cands) == 0 {
		if len(manual) > 0 {
			return nil, fmt.Errorf("%w: none of the %d listed %s proxies is alive with free capacity", ErrNoProxy, len(manual), s.Role)
		}
		return nil, fmt.Errorf("%w: no %s proxy is alive with free capacity", ErrNoProxy, s.Role)
	}
	sort.Slice(cands, func(i, j int) bool {
		a, b := cands[i], cands[j]
		if ra, rb := Rank(a, s.Cluster), Rank(b, s.Cluster); ra != rb {
			return ra < rb
		}
		if la, lb := load(a, s.Load[a.ID]), load(b, s.Load[b.ID]); la != lb {
			return la < lb
		}
		return a.ID < b.ID
	})
	return cands[0], nil
}

// keepProxy reports whether a task may keep the proxy it has: the policy
// was not edited since the task was planned, and the proxy is still there,
// alive and allowed. Capacity is not rechecked: the task already counts.
func keepProxy(proxies map[string]*model.Proxy, id string, taskGen, policyGen int64, s Selection) bool {
	if id == "" || taskGen != policyGen {
		return false
	}
	p, ok := proxies[id]
	if !ok || !p.Role.Serves(s.Role) || !Alive(p, s.Now, s.HeartbeatTimeout) {
		return false
	}
	if len(s.Manual) > 0 {
		for _, m := range s.Manual {
			if m == id {
				return true
			}
		}
		return false
	}
	return true
}
