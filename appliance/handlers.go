package appliance

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/continuum-cdp/continuum/appliance/controllers"
	"github.com/continuum-cdp/continuum/client"
	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/pki"
	"github.com/continuum-cdp/continuum/raftstore"
	"github.com/continuum-cdp/continuum/vsphere"
)

func (s *Server) routeTable() []route {
	const v1 = "/api/v1"
	return []route{
		{Method: "GET", Path: "/healthz", Summary: "Liveness and raft role of this node", Response: "Health", Auth: authNone, h: s.health},
		{Method: "GET", Path: "/metrics", Summary: "Prometheus metrics", Response: "", raw: promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{})},
		{Method: "GET", Path: "/api/openapi.json", Summary: "This API's OpenAPI 3 document", Response: "OpenAPI", h: s.openAPI},

		{Method: "GET", Path: v1 + "/node", Summary: "What this node says about itself", Response: "NodeInfo", Auth: authAdmin, h: s.nodeInfo},
		{Method: "GET", Path: v1 + "/cluster", Summary: "Cluster members, leader, term and applied index", Response: "ClusterStatus", Auth: authAdmin, h: s.clusterStatus},
		{Method: "POST", Path: v1 + "/cluster/join", Summary: "Obtain the cluster's CA, key and a node certificate (join token)", Request: "JoinRequest", Response: "JoinResponse", Auth: authJoin, h: s.join},
		{Method: "POST", Path: v1 + "/cluster/members", Summary: "Add a joined node as a voter", Request: "AddMemberRequest", Response: "Member", Auth: authJoin, Place: leaderRW, h: s.addMember},
		{Method: "DELETE", Path: v1 + "/cluster/members/{id}", Summary: "Remove a node from the cluster", Auth: authAdmin, Place: leaderRW, h: s.removeMember},
		{Method: "POST", Path: v1 + "/cluster/transfer-leadership", Summary: "Hand leadership to another node", Request: "TransferRequest", Response: "TransferResponse", Auth: authAdmin, Place: leaderRW, h: s.transfer},
		{Method: "POST", Path: v1 + "/components/certificate", Summary: "Obtain a proxy's or filter's certificate from the cluster CA (component token)", Request: "ComponentCertRequest", Response: "ComponentCertResponse", Auth: authComponent, h: s.componentCertificate},
		{Method: "POST", Path: v1 + "/components/heartbeat", Summary: "A filter or proxy reports its state and gets its configuration (component token or certificate)", Request: "ComponentReport", Response: "ComponentConfig", Auth: authComponent, Place: leaderRW, h: s.componentHeartbeat},
		{Method: "POST", Path: v1 + "/tokens", Summary: "Create a join or component token", Request: "TokenRequest", Response: "TokenResponse", Auth: authAdmin, Place: leaderRW, h: s.createToken},

		{Method: "GET", Path: v1 + "/vcenters", Summary: "List vCenters", Response: "VCenter[]", Auth: authAdmin, Place: leaderRead, h: s.listVCenters},
		{Method: "POST", Path: v1 + "/vcenters", Summary: "Register a vCenter", Request: "VCenterRequest", Response: "VCenter", Auth: authAdmin, Place: leaderRW, h: s.addVCenter},
		{Method: "GET", Path: v1 + "/vcenters/{id}", Summary: "Get a vCenter by ID or name", Response: "VCenter", Auth: authAdmin, Place: leaderRead, h: s.getVCenter},
		{Method: "DELETE", Path: v1 + "/vcenters/{id}", Summary: "Remove a vCenter", Auth: authAdmin, Place: leaderRW, h: s.deleteVCenter},
		{Method: "GET", Path: v1 + "/clusters", Summary: "List compute clusters", Response: "Cluster[]", Auth: authAdmin, Place: leaderRead, h: s.listClusters},
		{Method: "GET", Path: v1 + "/hosts", Summary: "List hosts", Response: "Host[]", Auth: authAdmin, Place: leaderRead, h: s.listHosts},

		{Method: "GET", Path: v1 + "/proxies", Summary: "List proxies", Response: "Proxy[]", Auth: authAdmin, Place: leaderRead, h: s.listProxies},
		{Method: "POST", Path: v1 + "/proxies", Summary: "Register a proxy", Request: "Proxy", Response: "Proxy", Auth: authAdmin, Place: leaderRW, h: s.createProxy},
		{Method: "GET", Path: v1 + "/proxies/{id}", Summary: "Get a proxy by ID or name", Response: "Proxy", Auth: authAdmin, Place: leaderRead, h: s.getProxy},
		{Method: "PUT", Path: v1 + "/proxies/{id}", Summary: "Replace a proxy's settings", Request: "Proxy", Response: "Proxy", Auth: authAdmin, Place: leaderRW, h: s.updateProxy},
		{Method: "POST", Path: v1 + "/proxies/{id}/heartbeat", Summary: "A proxy reports that it is alive (component token or certificate)", Response: "Proxy", Auth: authComponent, Place: leaderRW, h: s.proxyHeartbeat},
		{Method: "DELETE", Path: v1 + "/proxies/{id}", Summary: "Remove a proxy", Auth: authAdmin, Place: leaderRW, h: s.deleteProxy},

		{Method: "GET", Path: v1 + "/policies", Summary: "List policies", Response: "Policy[]", Auth: authAdmin, Place: leaderRead, h: s.listPolicies},
		{Method: "POST", Path: v1 + "/policies", Summary: "Create a policy", Request: "Policy", Response: "Policy", Auth: authAdmin, Place: leaderRW, h: s.createPolicy},
		{Method: "GET", Path: v1 + "/policies/{id}", Summary: "Get a policy by ID or name", Response: "Policy", Auth: authAdmin, Place: leaderRead, h: s.getPolicy},
		{Method: "PUT", Path: v1 + "/policies/{id}", Summary: "Replace a policy's spec (generation must match; enabled is kept, see enable/disable)", Request: "Policy", Response: "Policy", Auth: authAdmin, Place: leaderRW, h: s.updatePolicy},
		{Method: "DELETE", Path: v1 + "/policies/{id}", Summary: "Delete a policy; with delete_replicas=true also its replicas (VMs, journals, restore-point catalog)", Auth: authAdmin, Place: leaderRW, Query: []string{"delete_replicas"}, h: s.deletePolicy},
		{Method: "POST", Path: v1 + "/policies/{id}/enable", Summary: "Enable a policy", Response: "Policy", Auth: authAdmin, Place: leaderRW, h: s.setPolicyEnabled(true)},
		{Method: "POST", Path: v1 + "/policies/{id}/disable", Summary: "Disable a policy", Response: "Policy", Auth: authAdmin, Place: leaderRW, h: s.setPolicyEnabled(false)},
		{Method: "GET", Path: v1 + "/policies/{id}/status", Summary: "Per-VM tasks and overall status of a policy", Response: "PolicyStatus", Auth: authAdmin, Place: leaderRead, h: s.policyStatus},

		{Method: "POST", Path: v1 + "/filter/install", Summary: "Install the I/O filter on a cluster (and create the CDP storage policy)", Request: "FilterInstallRequest", Response: "Cluster", Auth: authAdmin, Place: leaderRW, h: s.installFilter},
		{Method: "GET", Path: v1 + "/vms/{vm}/disks", Summary: "A protected VM's disks: key, capacity and NBD URI on the filter of its host", Response: "VMDisks", Auth: authAdmin, Place: leaderRead, h: s.vmDisks},
		{Method: "GET", Path: v1 + "/vms/{vm}/restore-points", Summary: "A protected VM's restore points, from the filter that keeps its journal", Response: "RestorePointInfo[]", Auth: authAdmin, Place: localVM, h: s.vmRestorePoints},
		{Method: "GET", Path: v1 + "/vms/{vm}/restore-points/{point}/disks/{disk}/image", Summary: "The raw image of a disk at a restore point (application/octet-stream)", Auth: authAdmin, Place: localVM, raw: http.HandlerFunc(s.vmImage)},

		{Method: "GET", Path: v1 + "/traffic-rules", Summary: "List traffic rules", Response: "TrafficRule[]", Auth: authAdmin, Place: leaderRead, h: s.listTrafficRules},
		{Method: "POST", Path: v1 + "/traffic-rules", Summary: "Create a traffic rule", Request: "TrafficRule", Response: "TrafficRule", Auth: authAdmin, Place: leaderRW, h: s.createTrafficRule},
		{Method: "DELETE", Path: v1 + "/traffic-rules/{id}", Summary: "Delete a traffic rule", Auth: authAdmin, Place: leaderRW, h: s.deleteTrafficRule},
	}
}

// apply proposes cmd on this (leader) node.
func (s *Server) apply(r *http.Request, cmd raftstore.Command) error {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	if _, err := s.store.Apply(ctx, cmd); err != nil {
		return fmt.Errorf("apply %T: %w", cmd, err)
	}
	return nil
}

// find looks an object up by ID, then by unique name.
func find[T any](m map[string]*T, key string, name func(*T) string) *T {
	if v, ok := m[key]; ok {
		return v
	}
	for _, v := range m {
		if name(v) == key {
			return v
		}
	}
	return nil
}

func sortedValues[T any](m map[string]*T, key func(*T) string) []*T {
	out := make([]*T, 0, len(m))
	for _, v := range m {
		c := *v
		out = append(out, &c)
	}
	sort.Slice(out, func(i, j int) bool { return key(out[i]) < key(out[j]) })
	return out
}

// ---- node and cluster ----

func (s *Server) raftState() string {
	if st := s.store.Stats()["state"]; st != "" {
		return st
	}
	return "Unknown"
}

func (s *Server) health(r *http.Request) (int, any, error) {
	id, _ := s.store.Leader()
	return http.StatusOK, client.Health{NodeID: s.cfg.NodeID, Leader: id, RaftState: s.raftState()}, nil
}

func (s *Server) nodeInfo(r *http.Request) (int, any, error) {
	host, _ := os.Hostname()
	return http.StatusOK, client.NodeInfo{ID: s.cfg.NodeID, PID: os.Getpid(), Hostname: host,
		RaftState: s.raftState(), AppliedIndex: s.store.AppliedIndex()}, nil
}

// peerNode asks another node about itself, authenticating with this node's
// certificate.
func (s *Server) peerNode(ctx context.Context, apiAddr string) (*client.NodeInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+apiAddr+"/api/v1/node", nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Transport: s.peerTr}).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("node %s answered %s", apiAddr, resp.Status)
	}
	var n client.NodeInfo
	if err := json.NewDecoder(resp.Body).Decode(&n); err != nil {
		return nil, fmt.Errorf("decode node info from %s: %w", apiAddr, err)
	}
	return &n, nil
}

func (s *Server) clusterStatus(r *http.Request) (int, any, error) {
	members, err := s.store.Members()
	if err != nil {
		return 0, nil, errUnavailable(fmt.Sprintf("read raft configuration: %v", err))
	}
	coords := map[string]model.Coordinator{}
	s.store.Read(func(st *model.State) {
		for id, c := range st.Coordinators {
			coords[id] = *c
		}
	})
	leaderID, _ := s.store.Leader()
	stats := s.store.Stats()
	out := client.ClusterStatus{ClusterID: s.store.ClusterID(), NodeID: s.cfg.NodeID, LeaderID: leaderID,
		Term: stats["term"], AppliedIndex: s.store.AppliedIndex()}
	if c, ok := coords[leaderID]; ok {
		out.LeaderAPI = c.APIAddr
	}
	out.Members = make([]client.Member, len(members))
	var wg sync.WaitGroup
	for i, m := range members {
		cm := client.Member{ID: m.ID, RaftAddr: m.RaftAddr, Suffrage: m.Suffrage, Leader: m.Leader,
			APIAddr: coords[m.ID].APIAddr}
		out.Members[i] = cm
		if m.ID == s.cfg.NodeID {
			host, _ := os.Hostname()
			out.Members[i].Reachable, out.Members[i].PID, out.Members[i].Hostname = true, os.Getpid(), host
			out.Members[i].RaftState, out.Members[i].Applied = s.raftState(), s.store.AppliedIndex()
			continue
		}
		if cm.APIAddr == "" {
			continue
		}
		wg.Add(1)
		go func(i int, addr string) {
			defer wg.Done()
			n, err := s.peerNode(r.Context(), addr)
			if err != nil {
				return
			}
			m := &out.Members[i]
			m.Reachable, m.PID, m.Hostname, m.RaftState, m.Applied = true, n.PID, n.Hostname, n.RaftState, n.AppliedIndex
		}(i, cm.APIAddr)
	}
	wg.Wait()
	sort.Slice(out.Members, func(i, j int) bool { return out.Members[i].ID < out.Members[j].ID })
	return http.StatusOK, out, nil
}

func checkHostPort(field, v string) error {
	if v == "" {
		return model.Invalid(field, "required")
	}
	h, p, err := net.SplitHostPort(v)
	if err != nil || h == "" || p == "" || p == "0" {
		return model.Invalid(field, "must be host:port with a fixed port, got %q", v)
	}
	return nil
}

func validNodeID(id string) error {
	if err := model.ValidateName("node_id", id); err != nil {
		return err
	}
	if strings.ContainsAny(id, " /") {
		return model.Invalid("node_id", "must not contain spaces or '/'")
	}
	return nil
}

func (s *Server) join(r *http.Request) (int, any, error) {
	var req client.JoinRequest
	if err := decodeBody(r, &req); err != nil {
		return 0, nil, err
	}
	if err := validNodeID(req.NodeID); err != nil {
		return 0, nil, err
	}
	if err := checkHostPort("api_addr", req.APIAddr); err != nil {
		return 0, nil, err
	}
	if err := checkHostPort("raft_addr", req.RaftAddr); err != nil {
		return 0, nil, err
	}
	members, err := s.store.Members()
	if err != nil {
		return 0, nil, errUnavailable(fmt.Sprintf("read raft configuration: %v", err))
	}
	for _, m := range members {
		if m.ID == req.NodeID && m.RaftAddr != req.RaftAddr {
			return 0, nil, model.Conflict("node_id", "coordinator", req.NodeID)
		}
		if m.ID != req.NodeID && m.RaftAddr == req.RaftAddr {
			return 0, nil, model.Conflict("raft_addr", "coordinator address", req.RaftAddr)
		}
	}
	hosts := []string{req.APIAddr, req.RaftAddr, "localhost", "127.0.0.1"}
	leaf, err := s.cfg.CA.Issue(req.NodeID, hosts, pki.LeafValidity)
	if err != nil {
		return 0, nil, fmt.Errorf("issue certificate for %s: %w", req.NodeID, err)
	}
	nodeKey, err := pki.KeyPEM(leaf.Key)
	if err != nil {
		return 0, nil, err
	}
	caKey, err := pki.KeyPEM(s.cfg.CA.Key)
	if err != nil {
		return 0, nil, err
	}
	s.log.Info("node obtained join material", "joiner", req.NodeID, "api", req.APIAddr, "raft", req.RaftAddr)
	return http.StatusOK, client.JoinResponse{
		ClusterID: s.store.ClusterID(), ClusterKey: s.store.ClusterKey(),
		CACert: string(pki.CertPEM(s.cfg.CA.Cert)), CAKey: string(caKey),
		NodeCert: string(pki.CertPEM(leaf.Cert)), NodeKey: string(nodeKey),
	}, nil
}

// componentCertificate issues a proxy's or filter's certificate. It
// carries the component marking, so the certificate can neither join the
// raft transport nor call the admin routes; the CA key never leaves.
func (s *Server) componentCertificate(r *http.Request) (int, any, error) {
	var req client.ComponentCertRequest
	if err := decodeBody(r, &req); err != nil {
		return 0, nil, err
	}
	if err := model.ValidateName("name", req.Name); err != nil {
		return 0, nil, err
	}
	if req.Kind != "proxy" && req.Kind != "filter" {
		return 0, nil, model.Invalid("kind", "must be proxy or filter, got %q", req.Kind)
	}
	if len(req.Hosts) == 0 {
		return 0, nil, model.Invalid("hosts", "at least one name or address the component serves on")
	}
	for i, h := range req.Hosts {
		host := h
		if hh, _, err := net.SplitHostPort(h); err == nil {
			host = hh
		}
		if host == "" || strings.ContainsAny(host, " /\\") {
			return 0, nil, model.Invalid(fmt.Sprintf("hosts[%d]", i), "not a host name or address: %q", h)
		}
	}
	leaf, err := s.cfg.CA.IssueComponent(req.Name, req.Hosts, pki.LeafValidity)
	if err != nil {
		return 0, nil, fmt.Errorf("issue certificate for %s %s: %w", req.Kind, req.Name, err)
	}
	key, err := pki.KeyPEM(leaf.Key)
	if err != nil {
		return 0, nil, err
	}
	s.log.Info("component obtained a certificate", "kind", req.Kind, "name", req.Name, "hosts", req.Hosts)
	return http.StatusOK, client.ComponentCertResponse{CACert: string(pki.CertPEM(s.cfg.CA.Cert)),
		Cert: string(pki.CertPEM(leaf.Cert)), Key: string(key)}, nil
}

func (s *Server) addMember(r *http.Request) (int, any, error) {
	var req client.AddMemberRequest
	if err := decodeBody(r, &req); err != nil {
		return 0, nil, err
	}
	if err := validNodeID(req.ID); err != nil {
		return 0, nil, model.Invalid("id", "%v", err)
	}
	if err := checkHostPort("raft_addr", req.RaftAddr); err != nil {
		return 0, nil, err
	}
	if err := checkHostPort("api_addr", req.APIAddr); err != nil {
		return 0, nil, err
	}
	ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
	defer cancel()
	// The address record goes first so that the new node, once it is a
	// voter and maybe leader, can be found by the others.
	if err := s.apply(r, raftstore.PutCoordinator{Coordinator: model.Coordinator{ID: req.ID, RaftAddr: req.RaftAddr, APIAddr: req.APIAddr}}); err != nil {
		return 0, nil, err
	}
	if err := s.store.AddVoter(ctx, req.ID, req.RaftAddr); err != nil {
		return 0, nil, fmt.Errorf("add voter %s at %s: %w", req.ID, req.RaftAddr, err)
	}
	s.log.Info("added voter", "id", req.ID, "raft", req.RaftAddr, "api", req.APIAddr)
	return http.StatusOK, client.Member{ID: req.ID, RaftAddr: req.RaftAddr, APIAddr: req.APIAddr, Suffrage: "Voter"}, nil
}

func (s *Server) removeMember(r *http.Request) (int, any, error) {
	id := r.PathValue("id")
	members, err := s.store.Members()
	if err != nil {
		return 0, nil, errUnavailable(fmt.Sprintf("read raft configuration: %v", err))
	}
	if !slices.ContainsFunc(members, func(m raftstore.Member) bool { return m.ID == id }) {
		return 0, nil, model.NotFound("id", "coordinator", id)
	}
	if len(members) == 1 {
		return 0, nil, model.Precond("id", "cannot remove the last member of the cluster")
	}
	ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
	defer cancel()
	if err := s.store.RemoveServer(ctx, id); err != nil {
		return 0, nil, fmt.Errorf("remove server %s: %w", id, err)
	}
	// The record is cleaned up best effort: when the leader removed itself
	// it is no longer leader and the next leader keeps a harmless record.
	if s.store.IsLeader() {
		var known bool
		s.store.Read(func(st *model.State) { _, known = st.Coordinators[id] })
		if known {
			if err := s.apply(r, raftstore.DeleteCoordinator{ID: id}); err != nil {
				s.log.Warn("forget removed coordinator", "id", id, "err", err)
			}
		}
	}
	return http.StatusNoContent, nil, nil
}

func (s *Server) transfer(r *http.Request) (int, any, error) {
	var req client.TransferRequest
	if r.ContentLength != 0 {
		if err := decodeBody(r, &req); err != nil {
			return 0, nil, err
		}
	}
	if req.To != "" {
		members, err := s.store.Members()
		if err != nil {
			return 0, nil, errUnavailable(fmt.Sprintf("read raft configuration: %v", err))
		}
		if !slices.ContainsFunc(members, func(m raftstore.Member) bool { return m.ID == req.To }) {
			return 0, nil, model.NotFound("to", "coordinator", req.To)
		}
		if req.To == s.cfg.NodeID {
			return http.StatusOK, client.TransferResponse{LeaderID: s.cfg.NodeID}, nil
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	defer cancel()
	if err := s.store.TransferLeadership(ctx, req.To); err != nil {
		return 0, nil, fmt.Errorf("transfer leadership: %w", err)
	}
	// Report the new leader once it is known here (bounded wait).
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if id, _ := s.store.Leader(); id != "" && id != s.cfg.NodeID {
			return http.StatusOK, client.TransferResponse{LeaderID: id}, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	id, _ := s.store.Leader()
	return http.StatusOK, client.TransferResponse{LeaderID: id}, nil
}

// caFingerprint prefixes issued tokens so that holders can pin the CA.
func (s *Server) caFingerprint() string { return pki.Fingerprint(s.cfg.CA.Cert.Raw) }

func (s *Server) createToken(r *http.Request) (int, any, error) {
	var req client.TokenRequest
	if err := decodeBody(r, &req); err != nil {
		return 0, nil, err
	}
	switch req.Role {
	case model.TokenJoin, model.TokenComponent:
	default:
		return 0, nil, model.Invalid("role", "must be join or component, got %q", req.Role)
	}
	secret := newSecret()
	t := model.Token{ID: newID("tok"), Role: req.Role, SHA256: hashToken(secret), CreatedAt: time.Now().UTC()}
	if err := s.apply(r, raftstore.PutToken{Token: t}); err != nil {
		return 0, nil, err
	}
	return http.StatusCreated, client.TokenResponse{ID: t.ID, Role: t.Role, Token: s.caFingerprint() + "." + secret, CreatedAt: t.CreatedAt}, nil
}

// ---- vCenters, clusters, hosts ----

func redactVC(v *model.VCenter) *model.VCenter {
	c := *v
	c.PasswordSealed = nil
	return &c
}

func (s *Server) listVCenters(r *http.Request) (int, any, error) {
	var out []*model.VCenter
	err := s.read(r, func(st *model.State) {
		for _, v := range sortedValues(st.VCenters, func(v *model.VCenter) string { return v.Name }) {
			out = append(out, redactVC(v))
		}
	})
	if out == nil {
		out = []*model.VCenter{}
	}
	return http.StatusOK, out, err
}

func vcName(v *model.VCenter) string { return v.Name }

func (s *Server) getVCenter(r *http.Request) (int, any, error) {
	id := r.PathValue("id")
	var out *model.VCenter
	if err := s.read(r, func(st *model.State) {
		if v := find(st.VCenters, id, vcName); v != nil {
			out = redactVC(v)
		}
	}); err != nil {
		return 0, nil, err
	}
	if out == nil {
		return 0, nil, model.NotFound("id", "vcenter", id)
	}
	return http.StatusOK, out, nil
}

func (s *Server) addVCenter(r *http.Request) (int, any, error) {
	var req client.VCenterRequest
	if err := decodeBody(r, &req); err != nil {
		return 0, nil, err
	}
	v := model.VCenter{ID: newID("vc"), Name: req.Name, URL: req.URL, Username: req.Username,
		Thumbprint: req.Thumbprint, CACert: req.CACert, Insecure: req.Insecure, CreatedAt: time.Now().UTC()}
	if err := v.Validate(); err != nil {
		return 0, nil, err
	}
	if req.Password == "" {
		return 0, nil, model.Invalid("password", "required")
	}
	var dup bool
	s.store.Read(func(st *model.State) { dup = st.VCenterByName(v.Name) != nil })
	if dup {
		return 0, nil, model.Conflict("name", "vcenter", v.Name)
	}
	sealed, err := s.store.Seal([]byte(req.Password))
	if err != nil {
		return 0, nil, fmt.Errorf("seal vCenter password: %w", err)
	}
	v.PasswordSealed = sealed
	if err := s.apply(r, raftstore.PutVCenter{VCenter: v, Create: true}); err != nil {
		return 0, nil, err
	}
	return http.StatusCreated, redactVC(&v), nil
}

func (s *Server) deleteVCenter(r *http.Request) (int, any, error) {
	key := r.PathValue("id")
	var id string
	s.store.Read(func(st *model.State) {
		if v := find(st.VCenters, key, vcName); v != nil {
			id = v.ID
		}
	})
	if id == "" {
		return 0, nil, model.NotFound("id", "vcenter", key)
	}
	if err := s.apply(r, raftstore.DeleteVCenter{ID: id}); err != nil {
		return 0, nil, err
	}
	return http.StatusNoContent, nil, nil
}

func (s *Server) listClusters(r *http.Request) (int, any, error) {
	out := []*model.Cluster{}
	err := s.read(r, func(st *model.State) {
		out = append(out, sortedValues(st.Clusters, func(c *model.Cluster) string { return c.ID })...)
	})
	return http.StatusOK, out, err
}

func (s *Server) listHosts(r *http.Request) (int, any, error) {
	out := []*model.Host{}
	err := s.read(r, func(st *model.State) {
		out = append(out, sortedValues(st.Hosts, func(h *model.Host) string { return h.ID })...)
	})
	return http.StatusOK, out, err
}

// ---- proxies ----

func proxyName(p *model.Proxy) string { return p.Name }

func (s *Server) listProxies(r *http.Request) (int, any, error) {
	out := []*model.Proxy{}
	err := s.read(r, func(st *model.State) {
		out = append(out, sortedValues(st.Proxies, proxyName)...)
	})
	return http.StatusOK, out, err
}

func (s *Server) getProxy(r *http.Request) (int, any, error) {
	id := r.PathValue("id")
	var out *model.Proxy
	if err := s.read(r, func(st *model.State) {
		if p := find(st.Proxies, id, proxyName); p != nil {
			c := *p
			out = &c
		}
	}); err != nil {
		return 0, nil, err
	}
	if out == nil {
		return 0, nil, model.NotFound("id", "proxy", id)
	}
	return http.StatusOK, out, nil
}

// checkProxy validates a proxy and its references against the state,
// resolving a vCenter given by name.
func (s *Server) checkProxy(p *model.Proxy) error {
	if err := p.Validate(); err != nil {
		return err
	}
	var err error
	s.store.Read(func(st *model.State) {
		if other := st.ProxyByName(p.Name); other != nil && other.ID != p.ID {
			err = model.Conflict("name", "proxy", p.Name)
			return
		}
		if p.VCenterID != "" {
			v := find(st.VCenters, p.VCenterID, vcName)
			if v == nil {
				err = model.NotFound("vcenter_id", "vcenter", p.VCenterID)
				return
			}
			p.VCenterID = v.ID
		}
	})
	return err
}

func (s *Server) createProxy(r *http.Request) (int, any, error) {
	var p model.Proxy
	if err := decodeBody(r, &p); err != nil {
		return 0, nil, err
	}
	p.ID, p.CreatedAt, p.LastHeartbeat = newID("px"), time.Now().UTC(), time.Time{}
	if err := s.checkProxy(&p); err != nil {
		return 0, nil, err
	}
	if err := s.apply(r, raftstore.PutProxy{Proxy: p, Create: true}); err != nil {
		return 0, nil, err
	}
	return http.StatusCreated, p, nil
}

// proxyHeartbeat records that a proxy is alive: automatic selection skips
// proxies whose last heartbeat is too old, and a proxy that stops
// heartbeating is replaced for the tasks that used it.
func (s *Server) proxyHeartbeat(r *http.Request) (int, any, error) {
	key := r.PathValue("id")
	var px *model.Proxy
	s.store.Read(func(st *model.State) {
		if o := find(st.Proxies, key, proxyName); o != nil {
			c := *o
			px = &c
		}
	})
	if px == nil {
		return 0, nil, model.NotFound("id", "proxy", key)
	}
	// A component that authenticated with its certificate reports for
	// itself only.
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && r.Header.Get(forwardedHeader) == "" {
		if leaf := r.TLS.VerifiedChains[0][0]; pki.IsComponent(leaf) && leaf.Subject.CommonName != px.Name {
			return 0, nil, errForbidden(fmt.Sprintf("the certificate of %q may not report for proxy %q", leaf.Subject.CommonName, px.Name))
		}
	}
	px.LastHeartbeat = time.Now().UTC()
	if err := s.apply(r, raftstore.ProxyHeartbeat{ID: px.ID, At: px.LastHeartbeat}); err != nil {
		return 0, nil, err
	}
	return http.StatusOK, px, nil
}

func (s *Server) updateProxy(r *http.Request) (int, any, error) {
	key := r.PathValue("id")
	var p model.Proxy
	if err := decodeBody(r, &p); err != nil {
		return 0, nil, err
	}
	var old *model.Proxy
	s.store.Read(func(st *model.State) {
		if o := find(st.Proxies, key, proxyName); o != nil {
			c := *o
			old = &c
		}
	})
	if old == nil {
		return 0, nil, model.NotFound("id", "proxy", key)
	}
	if p.ID != "" && p.ID != old.ID {
		return 0, nil, model.Invalid("id", "does not match the proxy being updated (%s)", old.ID)
	}
	p.ID, p.CreatedAt, p.LastHeartbeat = old.ID, old.CreatedAt, old.LastHeartbeat
	if err := s.checkProxy(&p); err != nil {
		return 0, nil, err
	}
	if err := s.apply(r, raftstore.PutProxy{Proxy: p}); err != nil {
		return 0, nil, err
	}
	return http.StatusOK, p, nil
}

func (s *Server) deleteProxy(r *http.Request) (int, any, error) {
	key := r.PathValue("id")
	var id string
	s.store.Read(func(st *model.State) {
		if p := find(st.Proxies, key, proxyName); p != nil {
			id = p.ID
		}
	})
	if id == "" {
		return 0, nil, model.NotFound("id", "proxy", key)
	}
	if err := s.apply(r, raftstore.DeleteProxy{ID: id}); err != nil {
		return 0, nil, err
	}
	return http.StatusNoContent, nil, nil
}

// ---- policies ----

func policyName(p *model.Policy) string { return p.Name }

func clonePolicy(p *model.Policy) *model.Policy {
	c := *p
	c.VMs = slices.Clone(p.VMs)
	c.SourceProxies = slices.Clone(p.SourceProxies)
	c.TargetProxies = slices.Clone(p.TargetProxies)
	return &c
}

// policyWritten tells the reconciler (on this node, the leader that
// applied the write) to look at the policy now.
func (s *Server) policyWritten(id string) {
	if s.cfg.OnPolicyWrite != nil {
		s.cfg.OnPolicyWrite(id)
	}
}

func (s *Server) listPolicies(r *http.Request) (int, any, error) {
	out := []*model.Policy{}
	err := s.read(r, func(st *model.State) {
		for _, p := range sortedValues(st.Policies, policyName) {
			out = append(out, clonePolicy(p))
		}
	})
	return http.StatusOK, out, err
}

func (s *Server) getPolicy(r *http.Request) (int, any, error) {
	id := r.PathValue("id")
	var out *model.Policy
	if err := s.read(r, func(st *model.State) {
		if p := find(st.Policies, id, policyName); p != nil {
			out = clonePolicy(p)
		}
	}); err != nil {
		return 0, nil, err
	}
	if out == nil {
		return 0, nil, model.NotFound("id", "policy", id)
	}
	return http.StatusOK, out, nil
}

// checkPolicy resolves names given for vCenters and proxies into IDs, then
// runs the same checks the FSM runs, so a bad request is refused before
// anything is proposed.
func (s *Server) checkPolicy(p *model.Policy) error {
	p.Defaults()
	if err := p.Validate(); err != nil {
		return err
	}
	var err error
	s.store.Read(func(st *model.State) {
		if v := find(st.VCenters, p.VCenterID, vcName); v != nil {
			p.VCenterID = v.ID
		}
		if v := find(st.VCenters, p.Target.VCenterID, vcName); v != nil {
			p.Target.VCenterID = v.ID
		}
		for i, id := range p.SourceProxies {
			if x := find(st.Proxies, id, proxyName); x != nil {
				p.SourceProxies[i] = x.ID
			}
		}
		for i, id := range p.TargetProxies {
			if x := find(st.Proxies, id, proxyName); x != nil {
				p.TargetProxies[i] = x.ID
			}
		}
		err = st.CheckPolicyRefs(p)
	})
	return err
}

// checkPolicyInventory asks vCenter whether the policy's VMs, target
// cluster, host and datastore exist.
func (s *Server) checkPolicyInventory(r *http.Request, p *model.Policy) error {
	if s.cfg.Inventory == nil {
		return nil
	}
	return s.cfg.Inventory.CheckPolicy(r.Context(), p)
}

func (s *Server) createPolicy(r *http.Request) (int, any, error) {
	var p model.Policy
	if err := decodeBody(r, &p); err != nil {
		return 0, nil, err
	}
	now := time.Now().UTC()
	p.ID, p.CreatedAt, p.UpdatedAt, p.Generation = newID("pol"), now, now, 1
	if err := s.checkPolicy(&p); err != nil {
		return 0, nil, err
	}
	if err := s.checkPolicyInventory(r, &p); err != nil {
		return 0, nil, err
	}
	if err := s.apply(r, raftstore.PutPolicy{Policy: p, Create: true}); err != nil {
		return 0, nil, err
	}
	s.policyWritten(p.ID)
	return http.StatusCreated, s.storedPolicy(p.ID, &p), nil
}

// storedPolicy returns the policy as applied (the FSM sets the
// generation), falling back to the proposed one.
func (s *Server) storedPolicy(id string, fallback *model.Policy) *model.Policy {
	out := fallback
	s.store.Read(func(st *model.State) {
		if p, ok := st.Policies[id]; ok {
			out = clonePolicy(p)
		}
	})
	return out
}

func (s *Server) lookupPolicy(key string) *model.Policy {
	var out *model.Policy
	s.store.Read(func(st *model.State) {
		if p := find(st.Policies, key, policyName); p != nil {
			out = clonePolicy(p)
		}
	})
	return out
}

func (s *Server) updatePolicy(r *http.Request) (int, any, error) {
	key := r.PathValue("id")
	var p model.Policy
	if err := decodeBody(r, &p); err != nil {
		return 0, nil, err
	}
	old := s.lookupPolicy(key)
	if old == nil {
		return 0, nil, model.NotFound("id", "policy", key)
	}
	if p.ID != "" && p.ID != old.ID {
		return 0, nil, model.Invalid("id", "does not match the policy being updated (%s)", old.ID)
	}
	if p.Generation <= 0 {
		return 0, nil, model.Invalid("generation", "required: the generation the change is based on (currently %d)", old.Generation)
	}
	if p.Generation != old.Generation {
		return 0, nil, model.Precond("generation", "policy %q is at generation %d, not %d", old.Name, old.Generation, p.Generation)
	}
	expect := p.Generation
	// Enabling is its own action (enable/disable routes), so a PUT that
	// leaves the field out does not switch protection off.
	p.ID, p.CreatedAt, p.UpdatedAt, p.Enabled = old.ID, old.CreatedAt, time.Now().UTC(), old.Enabled
	if err := s.checkPolicy(&p); err != nil {
		return 0, nil, err
	}
	if err := s.checkPolicyInventory(r, &p); err != nil {
		return 0, nil, err
	}
	if err := s.apply(r, raftstore.PutPolicy{Policy: p, ExpectGeneration: expect}); err != nil {
		return 0, nil, err
	}
	s.policyWritten(p.ID)
	return http.StatusOK, s.storedPolicy(p.ID, &p), nil
}

func (s *Server) deletePolicy(r *http.Request) (int, any, error) {
	key := r.PathValue("id")
	p := s.lookupPolicy(key)
	if p == nil {
		return 0, nil, model.NotFound("id", "policy", key)
	}
	replicas, err := boolQuery(r, "delete_replicas")
	if err != nil {
		return 0, nil, err
	}
	if err := s.apply(r, raftstore.DeletePolicy{ID: p.ID, DeleteReplicas: replicas}); err != nil {
		return 0, nil, err
	}
	s.policyWritten(p.ID)
	return http.StatusNoContent, nil, nil
}

// boolQuery reads an optional boolean query parameter.
func boolQuery(r *http.Request, name string) (bool, error) {
	switch v := r.URL.Query().Get(name); v {
	case "", "false", "0":
		return false, nil
	case "true", "1":
		return true, nil
	default:
		return false, model.Invalid(name, "want true or false, got %q", v)
	}
}

func (s *Server) setPolicyEnabled(enabled bool) handler {
	return func(r *http.Request) (int, any, error) {
		key := r.PathValue("id")
		p := s.lookupPolicy(key)
		if p == nil {
			return 0, nil, model.NotFound("id", "policy", key)
		}
		if err := s.apply(r, raftstore.SetPolicyEnabled{ID: p.ID, Enabled: enabled}); err != nil {
			return 0, nil, err
		}
		s.policyWritten(p.ID)
		return http.StatusOK, s.storedPolicy(p.ID, p), nil
	}
}

func (s *Server) policyStatus(r *http.Request) (int, any, error) {
	key := r.PathValue("id")
	var out *client.PolicyStatus
	if err := s.read(r, func(st *model.State) {
		p := find(st.Policies, key, policyName)
		if p == nil {
			return
		}
		out = &client.PolicyStatus{PolicyID: p.ID, Name: p.Name, Enabled: p.Enabled, Generation: p.Generation, Tasks: []*model.VMTask{}}
		for _, t := range st.Tasks {
			if t.PolicyID == p.ID {
				c := *t
				c.Disks = slices.Clone(t.Disks)
				out.Tasks = append(out.Tasks, &c)
			}
		}
		sort.Slice(out.Tasks, func(i, j int) bool { return out.Tasks[i].ID < out.Tasks[j].ID })
		out.Status, out.Reason = controllers.PolicyStatus(p, out.Tasks)
	}); err != nil {
		return 0, nil, err
	}
	if out == nil {
		return 0, nil, model.NotFound("id", "policy", key)
	}
	return http.StatusOK, out, nil
}

// ---- traffic rules ----

func ruleName(t *model.TrafficRule) string { return t.Name }

func (s *Server) listTrafficRules(r *http.Request) (int, any, error) {
	out := []*model.TrafficRule{}
	err := s.read(r, func(st *model.State) {
		out = append(out, sortedValues(st.TrafficRules, ruleName)...)
	})
	return http.StatusOK, out, err
}

func (s *Server) createTrafficRule(r *http.Request) (int, any, error) {
	var t model.TrafficRule
	if err := decodeBody(r, &t); err != nil {
		return 0, nil, err
	}
	t.ID = newID("tr")
	if err := t.Validate(); err != nil {
		return 0, nil, err
	}
	var dup bool
	s.store.Read(func(st *model.State) { dup = find(st.TrafficRules, t.Name, ruleName) != nil })
	if dup {
		return 0, nil, model.Conflict("name", "traffic rule", t.Name)
	}
	if err := s.apply(r, raftstore.PutTrafficRule{TrafficRule: t, Create: true}); err != nil {
		return 0, nil, err
	}
	return http.StatusCreated, t, nil
}

func (s *Server) deleteTrafficRule(r *http.Request) (int, any, error) {
	key := r.PathValue("id")
	var id string
	s.store.Read(func(st *model.State) {
		if t := find(st.TrafficRules, key, ruleName); t != nil {
			id = t.ID
		}
	})
	if id == "" {
		return 0, nil, model.NotFound("id", "traffic rule", key)
	}
	if err := s.apply(r, raftstore.DeleteTrafficRule{ID: id}); err != nil {
		return 0, nil, err
	}
	return http.StatusNoContent, nil, nil
}

// ---- protected VMs ----

func init() {
	schemaTypes["VMDisks"] = reflect.TypeOf(client.VMDisks{})
	schemaTypes["RestorePointInfo"] = reflect.TypeOf(client.RestorePointInfo{})
	schemaTypes["FilterInstallRequest"] = reflect.TypeOf(client.FilterInstallRequest{})
}

// FilterInstaller installs the I/O filter on a cluster of one vCenter;
// *vsphere.Client satisfies it.
type FilterInstaller interface {
	Inventory(ctx context.Context) (*vsphere.Inventory, error)
	InstallFilter(ctx context.Context, cluster string) (*vsphere.FilterState, error)
}

// installFilter installs the filter on a cluster named by name or MoRef
// and records the cluster with its filter state.
func (s *Server) installFilter(r *http.Request) (int, any, error) {
	var req client.FilterInstallRequest
	if err := decodeBody(r, &req); err != nil {
		return 0, nil, err
	}
	if req.Cluster == "" {
		return 0, nil, model.Invalid("cluster", "required")
	}
	var vc *model.VCenter
	var n int
	s.store.Read(func(st *model.State) {
		n = len(st.VCenters)
		if req.VCenterID != "" {
			vc = find(st.VCenters, req.VCenterID, vcName)
		} else if n == 1 {
			for _, v := range st.VCenters {
				vc = v
			}
		}
		if vc != nil {
			vc = redactVC(vc)
		}
	})
	switch {
	case vc == nil && req.VCenterID != "":
		return 0, nil, model.NotFound("vcenter_id", "vcenter", req.VCenterID)
	case vc == nil:
		return 0, nil, model.Invalid("vcenter_id", "required when %d vCenters are registered", n)
	case s.cfg.Installers == nil:
		return 0, nil, errUnavailable("this node cannot reach vCenters")
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Minute)
	defer cancel()
	inst, err := s.cfg.Installers(ctx, vc.ID)
	if err != nil {
		return 0, nil, &apiError{status: http.StatusBadGateway, code: model.CodeUnavailable, msg: fmt.Sprintf("connect to vCenter %s: %v", vc.Name, err)}
	}
	inv, err := inst.Inventory(ctx)
	if err != nil {
		return 0, nil, &apiError{status: http.StatusBadGateway, code: model.CodeUnavailable, msg: fmt.Sprintf("read inventory of vCenter %s: %v", vc.Name, err)}
	}
	var cl *vsphere.Cluster
	for i := range inv.Clusters {
		if c := &inv.Clusters[i]; c.MoRef == req.Cluster || (cl == nil && c.Name == req.Cluster) {
			cl = c
		}
	}
	if cl == nil {
		return 0, nil, model.NotFound("cluster", "cluster", req.Cluster)
	}
	fs, err := inst.InstallFilter(ctx, cl.MoRef)
	if err != nil {
		return 0, nil, fmt.Errorf("install the filter on cluster %s: %w", cl.Name, err)
	}
	out := model.Cluster{ID: vc.ID + "/" + cl.MoRef, VCenterID: vc.ID, MoRef: cl.MoRef, Name: cl.Name,
		FilterState: model.FilterInstalled, FilterVersion: fs.FilterID, StorageProfileID: fs.ProfileID}
	if err := s.apply(r, raftstore.PutCluster{Cluster: out}); err != nil {
		return 0, nil, err
	}
	return http.StatusOK, &out, nil
}

// protectedTask finds the task of a VM named by its vCenter name or MoRef:
// the configured task of an enabled policy first, then any.
func protectedTask(st *model.State, vm string) *model.VMTask {
	var best *model.VMTask
	score := func(t *model.VMTask) int {
		n := 0
		if p, ok := st.Policies[t.PolicyID]; ok && p.Enabled {
			n += 2
		}
		if t.SourceHost != "" && t.TargetHost != "" {
			n++
		}
		return n
	}
	for _, t := range st.Tasks {
		if t.VMName != vm && t.VMMoRef != vm {
			continue
		}
		if best == nil || score(t) > score(best) || (score(t) == score(best) && t.ID < best.ID) {
			best = t
		}
	}
	if best == nil {
		return nil
	}
	c := *best
	c.Disks = slices.Clone(best.Disks)
	return &c
}

func (s *Server) vmDisks(r *http.Request) (int, any, error) {
	vm := r.PathValue("vm")
	var out *client.VMDisks
	if err := s.read(r, func(st *model.State) {
		t := protectedTask(st, vm)
		if t == nil {
			return
		}
		out = &client.VMDisks{VM: t.VMName, VMMoRef: t.VMMoRef, PolicyID: t.PolicyID, Host: t.SourceHost, Disks: []client.VMDisk{}}
		nbdAddr := ""
		if h, ok := st.Hosts[t.SourceHost]; ok {
			nbdAddr = h.FilterNBD
		}
		for _, d := range t.Disks {
			vd := client.VMDisk{Key: d.Key, CapacityBytes: d.CapacityBytes}
			if nbdAddr != "" {
				vd.NBDURI = fmt.Sprintf("nbd://%s/%s/%d", nbdAddr, url.PathEscape(t.VMName), d.Key)
			}
			out.Disks = append(out.Disks, vd)
		}
	}); err != nil {
		return 0, nil, err
	}
	if out == nil {
		return 0, nil, model.NotFound("vm", "protected VM", vm)
	}
	return http.StatusOK, out, nil
}

// vmTarget finds the VM's task and the admin address of the filter that
// keeps its journal, from this node's state (tasks change rarely; the
// filter has the last word on points).
func (s *Server) vmTarget(vm string) (*model.VMTask, string, error) {
	var t *model.VMTask
	var addr string
	var err error
	s.store.Read(func(st *model.State) {
		if t = protectedTask(st, vm); t != nil {
			addr, err = targetAdmin(st, t)
		}
	})
	if t == nil {
		return nil, "", model.NotFound("vm", "protected VM", vm)
	}
	return t, addr, err
}

// filterAdmin returns the filters' admin client and what to call when done
// with it.
func (s *Server) filterAdmin() (*FilterAdmin, func()) {
	if s.cfg.Filters != nil {
		return s.cfg.Filters, func() {}
	}
	fa := NewFilterAdmin(s.cfg.CA.Cert, s.cfg.NodeCert)
	return fa, fa.Close
}

func (s *Server) vmRestorePoints(r *http.Request) (int, any, error) {
	t, addr, err := s.vmTarget(r.PathValue("vm"))
	if err != nil {
		return 0, nil, err
	}
	fa, done := s.filterAdmin()
	defer done()
	cl, err := fa.Client(addr)
	if err != nil {
		return 0, nil, err
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	pts, err := cl.Points(ctx, t.VMName)
	if err != nil {
		return 0, nil, fromRemote(err, fmt.Sprintf("list restore points of %s on filter %s", t.VMName, addr))
	}
	out := make([]client.RestorePointInfo, 0, len(pts))
	for _, p := range pts {
		out = append(out, client.RestorePointInfo{ID: p.ID, Time: p.Time, Kind: p.Kind})
	}
	return http.StatusOK, out, nil
}

// vmImage streams a disk image from the target filter to the caller.
func (s *Server) vmImage(w http.ResponseWriter, r *http.Request) {
	point, err := pointID(r.PathValue("point"))
	if err != nil {
		writeError(w, err)
		return
	}
	disk, err := strconv.ParseInt(r.PathValue("disk"), 10, 32)
	if err != nil {
		writeError(w, model.Invalid("disk", "not a disk key: %q", r.PathValue("disk")))
		return
	}
	t, addr, err := s.vmTarget(r.PathValue("vm"))
	if err != nil {
		writeError(w, err)
		return
	}
	fa, done := s.filterAdmin()
	defer done()
	body, size, err := fa.Image(r.Context(), addr, t.VMName, point, int32(disk))
	if err != nil {
		writeError(w, err)
		return
	}
	defer body.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	if size >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	}
	w.WriteHeader(http.StatusOK)
	if _, err := io.CopyBuffer(w, body, make([]byte, 1<<20)); err != nil {
		// The headers are gone; the short body tells the client.
		s.log.Warn("stream restore point image", "vm", t.VMName, "point", point, "disk", disk, "err", err)
	}
}
