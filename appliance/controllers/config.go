package controllers

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"strings"

	"github.com/continuum-cdp/continuum/internal/model"
)

// ComponentConfig computes what one component runs: the data path of every
// configured task of an enabled policy that involves it. A filter (id is
// its host ID, "<vcenter-id>/<moref>") gets the tasks whose VM or replica
// is on its host; a proxy (id is its proxy ID) the tasks it is the source
// or target proxy of. A task is configured once it has both proxies and
// both hosts. keyFor gives each task's data-path key (DeriveKeys of the
// cluster key); nil leaves keys out.
//
// The result depends only on the state, so every coordinator answers the
// same, and Version is the hash of the rest: a component whose Version is
// unchanged need not apply anything.
func ComponentConfig(st *model.State, kind model.ComponentKind, id string, keyFor func(taskID string) []byte) model.ComponentConfig {
	cfg := model.ComponentConfig{Kind: kind, ID: id, Tasks: []model.TaskPath{}}
	rules := make([]model.TrafficRule, 0, len(st.TrafficRules))
	for _, r := range st.TrafficRules {
		rules = append(rules, *r)
	}
	slices.SortFunc(rules, func(a, b model.TrafficRule) int { return strings.Compare(a.ID, b.ID) })
	ids := make([]string, 0, len(st.Tasks))
	for id := range st.Tasks {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, tid := range ids {
		t := st.Tasks[tid]
		p, ok := st.Policies[t.PolicyID]
		if !ok || !p.Enabled {
			continue
		}
		src, okSrc := st.Proxies[t.SourceProxy]
		dst, okDst := st.Proxies[t.TargetProxy]
		srcHost, dstHost := qualifiedHost(p.VCenterID, t.SourceHost), qualifiedHost(p.Target.VCenterID, t.TargetHost)
		if !okSrc || !okDst || srcHost == "" || dstHost == "" {
			continue
		}
		switch kind {
		case model.ComponentFilter:
			if srcHost != id && dstHost != id {
				continue
			}
		case model.ComponentProxy:
			if t.SourceProxy != id && t.TargetProxy != id {
				continue
			}
		default:
			continue
		}
		tp := model.TaskPath{
			TaskID: t.ID, PolicyID: t.PolicyID, VM: t.VMName,
			Disks: slices.Clone(t.Disks),
			RPO:   p.RPO, ShortTermRetention: p.ShortTermRetention, LongTermRetention: p.LongTermRetention,
			SourceHost: moRefOf(srcHost), TargetHost: moRefOf(dstHost),
			SourceProxy: src.Address, TargetProxy: dst.Address,
			Rules: slices.Clone(rules),
		}
		if tp.VM == "" {
			tp.VM = t.VMMoRef
		}
		if h, ok := st.Hosts[dstHost]; ok {
			tp.TargetFilter = h.FilterAddr
		}
		if len(tp.Rules) == 0 {
			tp.Rules = nil
		}
		if keyFor != nil {
			tp.Key = keyFor(t.ID)
		}
		cfg.Tasks = append(cfg.Tasks, tp)
	}
	cfg.Version = configVersion(cfg)
	return cfg
}

// configVersion is the hex SHA-256 of the canonical JSON of the config
// without its version (struct fields encode in a fixed order and the tasks
// and rules are sorted, so equal configs hash equal).
func configVersion(cfg model.ComponentConfig) string {
	cfg.Version = ""
	b, err := json.Marshal(cfg)
	if err != nil {
		// Every field is plain data; this cannot fail.
		panic("controllers: encode component config: " + err.Error())
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

// qualifiedHost turns a task's host reference (a host ID, or a bare MoRef
// of the given vCenter) into a host ID.
func qualifiedHost(vcenterID, ref string) string {
	if ref == "" || strings.Contains(ref, "/") {
		return ref
	}
	return vcenterID + "/" + ref
}

// moRefOf is the MoRef part of a host ID.
func moRefOf(hostID string) string {
	if i := strings.LastIndexByte(hostID, '/'); i >= 0 {
		return hostID[i+1:]
	}
	return hostID
}
