package model

import (
	"bytes"
	"slices"
)

// Clone returns a deep copy of the state that shares nothing with s, for
// callers that need the data after the store's read lock is released.
func (s *State) Clone() *State {
	c := NewState()
	cloneInto(c.VCenters, s.VCenters, func(v *VCenter) { v.PasswordSealed = bytes.Clone(v.PasswordSealed) })
	cloneInto(c.VCDServers, s.VCDServers, func(v *VCDServer) { v.PasswordSealed = bytes.Clone(v.PasswordSealed) })
	cloneInto(c.Clusters, s.Clusters, nil)
	cloneInto(c.Hosts, s.Hosts, nil)
	cloneInto(c.Proxies, s.Proxies, nil)
	cloneInto(c.Policies, s.Policies, func(p *Policy) {
		p.VMs = slices.Clone(p.VMs)
		p.SourceProxies = slices.Clone(p.SourceProxies)
		p.TargetProxies = slices.Clone(p.TargetProxies)
	})
	cloneInto(c.Tasks, s.Tasks, func(t *VMTask) { t.Disks = slices.Clone(t.Disks) })
	cloneInto(c.Replicas, s.Replicas, func(r *Replica) { r.Disks = slices.Clone(r.Disks) })
	cloneInto(c.RestorePoints, s.RestorePoints, nil)
	cloneInto(c.TrafficRules, s.TrafficRules, nil)
	cloneInto(c.Tenants, s.Tenants, func(t *Tenant) { t.KeySealed = bytes.Clone(t.KeySealed) })
	cloneInto(c.Tokens, s.Tokens, nil)
	cloneInto(c.Coordinators, s.Coordinators, nil)
	return c
}

// cloneInto copies every object; deep copies the slices the object holds.
func cloneInto[T any](dst, src map[string]*T, deep func(*T)) {
	for k, v := range src {
		if v == nil {
			dst[k] = nil
			continue
		}
		c := *v
		if deep != nil {
			deep(&c)
		}
		dst[k] = &c
	}
}
