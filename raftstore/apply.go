package raftstore

import (
	"fmt"
	"slices"

	"github.com/continuum-cdp/continuum/internal/model"
)

// The apply functions below treat every stored object as immutable: an update
// stores a new pointer and never writes through an old one. Snapshot relies on
// that to capture the maps without copying the objects, and Read callers may
// hold an object only as long as the read lock.

func init() {
	register(applyPutVCenter)
	register(func(s *model.State, c DeleteVCenter) (any, error) { return nil, deleteVCenter(s, c.ID) })
	register(applyPutVCDServer)
	register(func(s *model.State, c DeleteVCDServer) (any, error) {
		return nil, deleteByID(s.VCDServers, "vcd server", c.ID)
	})
	register(applyPutCluster)
	register(func(s *model.State, c DeleteCluster) (any, error) {
		return nil, deleteByID(s.Clusters, "cluster", c.ID)
	})
	register(applyPutHost)
	register(func(s *model.State, c DeleteHost) (any, error) { return nil, deleteByID(s.Hosts, "host", c.ID) })
	register(applyPutProxy)
	register(func(s *model.State, c DeleteProxy) (any, error) { return nil, deleteProxy(s, c.ID) })
	register(applyProxyHeartbeat)
	register(applyPutPolicy)
	register(applySetPolicyEnabled)
	register(func(s *model.State, c DeletePolicy) (any, error) { return nil, deletePolicy(s, c.ID, c.DeleteReplicas) })
	register(applyPutTask)
	register(applyPutTasks)
	register(func(s *model.State, c DeleteTask) (any, error) { return nil, deleteTask(s, c.ID, c.DetachSource) })
	register(func(s *model.State, c SourceDetached) (any, error) { return nil, sourceDetached(s, c.ReplicaID) })
	register(func(s *model.State, c PutReplica) (any, error) {
		return putSimple(s.Replicas, c.Replica.ID, c.Replica)
	})
	register(func(s *model.State, c DeleteReplica) (any, error) {
		return nil, deleteByID(s.Replicas, "replica", c.ID)
	})
	register(func(s *model.State, c PutRestorePoint) (any, error) {
		return putSimple(s.RestorePoints, c.RestorePoint.ID, c.RestorePoint)
	})
	register(func(s *model.State, c DeleteRestorePoint) (any, error) {
		return nil, deleteByID(s.RestorePoints, "restore point", c.ID)
	})
	register(applyPutTrafficRule)
	register(func(s *model.State, c DeleteTrafficRule) (any, error) {
		return nil, deleteByID(s.TrafficRules, "traffic rule", c.ID)
	})
	register(applyPutTenant)
	register(func(s *model.State, c DeleteTenant) (any, error) { return nil, deleteByID(s.Tenants, "tenant", c.ID) })
	register(applyPutToken)
	register(func(s *model.State, c DeleteToken) (any, error) { return nil, deleteByID(s.Tokens, "token", c.ID) })
	register(func(s *model.State, c PutCoordinator) (any, error) {
		return putSimple(s.Coordinators, c.Coordinator.ID, c.Coordinator)
	})
	register(func(s *model.State, c DeleteCoordinator) (any, error) {
		return nil, deleteByID(s.Coordinators, "coordinator", c.ID)
	})
}

// checkExistence enforces the Create flag: create must not find the ID,
// update must.
func checkExistence[T any](m map[string]*T, kind, id string, create bool) error {
	if id == "" {
		return model.Invalid("id", "required")
	}
	_, ok := m[id]
	if create && ok {
		return model.Conflict("id", kind, id)
	}
	if !create && !ok {
		return model.NotFound("id", kind, id)
	}
	return nil
}

// uniqueName fails when another object of the kind already has the name.
func uniqueName[T any](m map[string]*T, kind, id, name string, nameOf func(*T) string) error {
	for oid, o := range m {
		if oid != id && nameOf(o) == name {
			return model.Conflict("name", kind, name)
		}
	}
	return nil
}

// store keeps a private copy of v and returns another one for the caller, so
// neither the proposer nor the reader aliases the state.
func store[T any](m map[string]*T, id string, v T) *T {
	kept := v
	m[id] = &kept
	out := v
	return &out
}

func putSimple[T any](m map[string]*T, id string, v T) (any, error) {
	if id == "" {
		return nil, model.Invalid("id", "required")
	}
	return store(m, id, v), nil
}

func deleteByID[T any](m map[string]*T, kind, id string) error {
	if _, ok := m[id]; !ok {
		return model.NotFound("id", kind, id)
	}
	delete(m, id)
	return nil
}

func applyPutVCenter(s *model.State, c PutVCenter) (any, error) {
	v := c.VCenter
	if err := checkExistence(s.VCenters, "vcenter", v.ID, c.Create); err != nil {
		return nil, err
	}
	if err := v.Validate(); err != nil {
		return nil, err
	}
	if err := uniqueName(s.VCenters, "vcenter", v.ID, v.Name, func(o *model.VCenter) string { return o.Name }); err != nil {
		return nil, err
	}
	return store(s.VCenters, v.ID, v), nil
}

func deleteVCenter(s *model.State, id string) error {
	if _, ok := s.VCenters[id]; !ok {
		return model.NotFound("id", "vcenter", id)
	}
	for _, pid := range sortedKeys(s.Policies) {
		p := s.Policies[pid]
		if p.VCenterID == id || p.Target.VCenterID == id {
			return model.Precond("id", "vcenter %q is used by policy %q", id, p.Name)
		}
	}
	// Clusters and hosts are inventory of that vCenter and go with it.
	for cid, cl := range s.Clusters {
		if cl.VCenterID == id {
			delete(s.Clusters, cid)
		}
	}
	for hid, h := range s.Hosts {
		if h.VCenterID == id {
			delete(s.Hosts, hid)
		}
	}
	delete(s.VCenters, id)
	return nil
}

func applyPutVCDServer(s *model.State, c PutVCDServer) (any, error) {
	v := c.VCDServer
	if err := checkExistence(s.VCDServers, "vcd server", v.ID, c.Create); err != nil {
		return nil, err
	}
	if err := model.ValidateName("name", v.Name); err != nil {
		return nil, err
	}
	if v.URL == "" {
		return nil, model.Invalid("url", "required")
	}
	if err := uniqueName(s.VCDServers, "vcd server", v.ID, v.Name, func(o *model.VCDServer) string { return o.Name }); err != nil {
		return nil, err
	}
	return store(s.VCDServers, v.ID, v), nil
}

func applyPutCluster(s *model.State, c PutCluster) (any, error) {
	cl := c.Cluster
	if cl.ID == "" {
		return nil, model.Invalid("id", "required")
	}
	if _, ok := s.VCenters[cl.VCenterID]; !ok {
		return nil, model.NotFound("vcenter_id", "vcenter", cl.VCenterID)
	}
	return store(s.Clusters, cl.ID, cl), nil
}

func applyPutHost(s *model.State, c PutHost) (any, error) {
	h := c.Host
	if h.ID == "" {
		return nil, model.Invalid("id", "required")
	}
	if _, ok := s.VCenters[h.VCenterID]; !ok {
		return nil, model.NotFound("vcenter_id", "vcenter", h.VCenterID)
	}
	return store(s.Hosts, h.ID, h), nil
}

func applyPutProxy(s *model.State, c PutProxy) (any, error) {
	p := c.Proxy
	if err := checkExistence(s.Proxies, "proxy", p.ID, c.Create); err != nil {
		return nil, err
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if err := uniqueName(s.Proxies, "proxy", p.ID, p.Name, func(o *model.Proxy) string { return o.Name }); err != nil {
		return nil, err
	}
	return store(s.Proxies, p.ID, p), nil
}

func deleteProxy(s *model.State, id string) error {
	if _, ok := s.Proxies[id]; !ok {
		return model.NotFound("id", "proxy", id)
	}
	for _, pid := range sortedKeys(s.Policies) {
		p := s.Policies[pid]
		if p.ProxySelection != model.SelectManual {
			continue
		}
		if slices.Contains(p.SourceProxies, id) || slices.Contains(p.TargetProxies, id) {
			return model.Precond("id", "proxy %q is selected by policy %q", id, p.Name)
		}
	}
	delete(s.Proxies, id)
	return nil
}

func applyProxyHeartbeat(s *model.State, c ProxyHeartbeat) (any, error) {
	old, ok := s.Proxies[c.ID]
	if !ok {
		return nil, model.NotFound("id", "proxy", c.ID)
	}
	p := *old
	p.LastHeartbeat = c.At
	return store(s.Proxies, p.ID, p), nil
}

func applyPutPolicy(s *model.State, c PutPolicy) (any, error) {
	p := c.Policy
	if err := checkExistence(s.Policies, "policy", p.ID, c.Create); err != nil {
		return nil, err
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if err := s.CheckPolicyRefs(&p); err != nil {
		return nil, err
	}
	if c.Create {
		p.Generation = 1
	} else {
		old := s.Policies[p.ID]
		if c.ExpectGeneration != 0 && c.ExpectGeneration != old.Generation {
			return nil, model.Precond("generation", "policy %q is at generation %d, not %d", p.Name, old.Generation, c.ExpectGeneration)
		}
		p.Generation = old.Generation + 1
		p.CreatedAt = old.CreatedAt
	}
	// Slices are copied so that the stored policy shares nothing with the
	// command (which the caller may still hold when applied in-process).
	p.VMs = slices.Clone(p.VMs)
	p.SourceProxies = slices.Clone(p.SourceProxies)
	p.TargetProxies = slices.Clone(p.TargetProxies)
	return store(s.Policies, p.ID, p), nil
}

func applySetPolicyEnabled(s *model.State, c SetPolicyEnabled) (any, error) {
	old, ok := s.Policies[c.ID]
	if !ok {
		return nil, model.NotFound("id", "policy", c.ID)
	}
	p := *old
	p.Enabled = c.Enabled
	return store(s.Policies, p.ID, p), nil
}

func deletePolicy(s *model.State, id string, replicas bool) error {
	p, ok := s.Policies[id]
	if !ok {
		return model.NotFound("id", "policy", id)
	}
	if replicas {
		for _, r := range s.Replicas {
			if r.PolicyID == id && r.FailedOver {
				return model.Conflict("delete_replicas", "failed-over replica", r.Name)
			}
		}
		for rid, r := range s.Replicas {
			if r.PolicyID != id || r.Deleting {
				continue
			}
			c := *r
			c.Deleting = true
			// the task that used it; the smallest ID if several did, so
			// that every node applies the same
			var use *model.VMTask
			for _, t := range s.Tasks {
				if t.PolicyID == id && (t.ReplicaID == rid || t.VMMoRef == r.SourceVM) && (use == nil || t.ID < use.ID) {
					use = t
				}
			}
			if use != nil {
				c.JournalVM, c.TargetHost = use.VMName, use.TargetHost
			}
			s.Replicas[rid] = &c
		}
		for pid, p := range s.RestorePoints {
			if p.PolicyID == id {
				delete(s.RestorePoints, pid)
			}
		}
	}
	// every source VM leaves protection: the CDP storage policy comes off
	for rid, r := range s.Replicas {
		if r.PolicyID == id && !r.DetachSource {
			s.Replicas[rid] = detachSource(r, p.VCenterID)
		}
	}
	for tid, t := range s.Tasks {
		if t.PolicyID == id {
			delete(s.Tasks, tid)
		}
	}
	delete(s.Policies, id)
	return nil
}

// detachSource returns a copy of r marked DetachSource.
func detachSource(r *model.Replica, sourceVCenter string) *model.Replica {
	c := *r
	c.DetachSource = true
	if c.SourceVCenterID == "" {
		c.SourceVCenterID = sourceVCenter
	}
	return &c
}

// deleteTask deletes a task; with detach, the VM left its policy and its
// replica is marked DetachSource.
func deleteTask(s *model.State, id string, detach bool) error {
	t, ok := s.Tasks[id]
	if !ok {
		return model.NotFound("id", "task", id)
	}
	if detach {
		if r := s.Replicas[t.ReplicaID]; r != nil && !r.DetachSource {
			vc := ""
			if p := s.Policies[t.PolicyID]; p != nil {
				vc = p.VCenterID
			}
			s.Replicas[t.ReplicaID] = detachSource(r, vc)
		}
	}
	delete(s.Tasks, id)
	return nil
}

func sourceDetached(s *model.State, replicaID string) error {
	r, ok := s.Replicas[replicaID]
	if !ok {
		return model.NotFound("replica_id", "replica", replicaID)
	}
	if r.DetachSource {
		c := *r
		c.DetachSource = false
		s.Replicas[replicaID] = &c
	}
	return nil
}

func applyPutTask(s *model.State, c PutTask) (any, error) {
	t := c.Task
	if t.ID == "" {
		return nil, model.Invalid("id", "required")
	}
	if _, ok := s.Policies[t.PolicyID]; !ok {
		return nil, model.NotFound("policy_id", "policy", t.PolicyID)
	}
	t.Disks = slices.Clone(t.Disks)
	return store(s.Tasks, t.ID, t), nil
}

func applyPutTasks(s *model.State, c PutTasks) (any, error) {
	for i, t := range c.Tasks {
		if t.ID == "" {
			return nil, model.Invalid(fmt.Sprintf("tasks[%d].id", i), "required")
		}
		if _, ok := s.Policies[t.PolicyID]; !ok {
			return nil, model.NotFound(fmt.Sprintf("tasks[%d].policy_id", i), "policy", t.PolicyID)
		}
	}
	out := make([]*model.VMTask, 0, len(c.Tasks))
	for _, t := range c.Tasks {
		t.Disks = slices.Clone(t.Disks)
		out = append(out, store(s.Tasks, t.ID, t))
	}
	return out, nil
}

func applyPutTrafficRule(s *model.State, c PutTrafficRule) (any, error) {
	r := c.TrafficRule
	if err := checkExistence(s.TrafficRules, "traffic rule", r.ID, c.Create); err != nil {
		return nil, err
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	if err := uniqueName(s.TrafficRules, "traffic rule", r.ID, r.Name, func(o *model.TrafficRule) string { return o.Name }); err != nil {
		return nil, err
	}
	return store(s.TrafficRules, r.ID, r), nil
}

func applyPutTenant(s *model.State, c PutTenant) (any, error) {
	t := c.Tenant
	if err := checkExistence(s.Tenants, "tenant", t.ID, c.Create); err != nil {
		return nil, err
	}
	if err := model.ValidateName("name", t.Name); err != nil {
		return nil, err
	}
	if err := uniqueName(s.Tenants, "tenant", t.ID, t.Name, func(o *model.Tenant) string { return o.Name }); err != nil {
		return nil, err
	}
	return store(s.Tenants, t.ID, t), nil
}

func applyPutToken(s *model.State, c PutToken) (any, error) {
	t := c.Token
	if t.ID == "" {
		return nil, model.Invalid("id", "required")
	}
	if t.SHA256 == "" {
		return nil, model.Invalid("sha256", "required")
	}
	switch t.Role {
	case model.TokenAdmin, model.TokenJoin, model.TokenComponent:
	default:
		return nil, model.Invalid("role", "must be admin, join or component, got %q", t.Role)
	}
	return store(s.Tokens, t.ID, t), nil
}

func sortedKeys[T any](m map[string]*T) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// ApplyTo applies c to s as the FSM applies a committed entry: a state
// error leaves s unchanged. For stores over a plain state outside raft.
func ApplyTo(s *model.State, c Command) (any, error) { return applyCommand(s, c) }

// applyCommand runs one decoded command against s.
func applyCommand(s *model.State, c Command) (any, error) {
	e := registry[c.Type()&^IgnoreUnknownFlag]
	if e == nil {
		return nil, fmt.Errorf("apply: command type %d is not registered", c.Type())
	}
	return e.apply(s, c)
}
