package client

import (
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
)

// Health is the body of GET /healthz.
type Health struct {
	NodeID    string `json:"node_id"`
	Leader    string `json:"leader"`
	RaftState string `json:"raft_state"`
}

// Member is one coordinator node in the cluster status.
type Member struct {
	ID        string `json:"id"`
	APIAddr   string `json:"api_addr,omitempty"`
	RaftAddr  string `json:"raft_addr"`
	Suffrage  string `json:"suffrage"`
	Leader    bool   `json:"leader"`
	Reachable bool   `json:"reachable"`
	RaftState string `json:"raft_state,omitempty"`
	PID       int    `json:"pid,omitempty"`
	Hostname  string `json:"hostname,omitempty"`
	Applied   uint64 `json:"applied_index,omitempty"`
}

// ClusterStatus is the body of GET /api/v1/cluster.
type ClusterStatus struct {
	ClusterID    string   `json:"cluster_id"`
	NodeID       string   `json:"node_id"` // the node that answered
	LeaderID     string   `json:"leader_id"`
	LeaderAPI    string   `json:"leader_api,omitempty"`
	Term         string   `json:"term"`
	AppliedIndex uint64   `json:"applied_index"`
	Members      []Member `json:"members"`
}

// NodeInfo is the body of GET /api/v1/node: what one node says about itself.
type NodeInfo struct {
	ID           string `json:"id"`
	PID          int    `json:"pid"`
	Hostname     string `json:"hostname"`
	RaftState    string `json:"raft_state"`
	AppliedIndex uint64 `json:"applied_index"`
}

// JoinRequest is sent by a new coordinator to POST /api/v1/cluster/join.
type JoinRequest struct {
	NodeID   string `json:"node_id"`
	APIAddr  string `json:"api_addr"`
	RaftAddr string `json:"raft_addr"`
}

// JoinResponse carries what a joining node needs to become a member.
type JoinResponse struct {
	ClusterID  string `json:"cluster_id"`
	ClusterKey []byte `json:"cluster_key"`
	CACert     string `json:"ca_cert"` // PEM
	CAKey      string `json:"ca_key"`  // PEM
	NodeCert   string `json:"node_cert"`
	NodeKey    string `json:"node_key"`
}

// AddMemberRequest is the body of POST /api/v1/cluster/members.
type AddMemberRequest struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	APIAddr  string `json:"api_addr"`
}

// TransferRequest is the body of POST /api/v1/cluster/transfer-leadership.
type TransferRequest struct {
	To string `json:"to,omitempty"`
}

// TransferResponse names the leader after a transfer.
type TransferResponse struct {
	LeaderID string `json:"leader_id"`
}

// TokenRequest is the body of POST /api/v1/tokens.
type TokenRequest struct {
	Role model.TokenRole `json:"role"`
}

// TokenResponse returns a new token; the secret is shown only once.
type TokenResponse struct {
	ID        string          `json:"id"`
	Role      model.TokenRole `json:"role"`
	Token     string          `json:"token"`
	CreatedAt time.Time       `json:"created_at"`
}

// VCenterRequest registers a vCenter; the password travels in clear over
// TLS and is sealed by the coordinator before it is stored.
type VCenterRequest struct {
	Name       string `json:"name"`
	URL        string `json:"url"`
	Username   string `json:"username"`
	Password   string `json:"password"`
	Thumbprint string `json:"thumbprint,omitempty"`
	CACert     string `json:"ca_cert,omitempty"`
	Insecure   bool   `json:"insecure,omitempty"`
}

// PolicyStatus is the body of GET /api/v1/policies/{id}/status.
type PolicyStatus struct {
	PolicyID   string          `json:"policy_id"`
	Name       string          `json:"name"`
	Enabled    bool            `json:"enabled"`
	Generation int64           `json:"generation"`
	Status     model.VMStatus  `json:"status"`
	Reason     string          `json:"reason,omitempty"` // why the status is not Success/Syncing, naming the VM
	Tasks      []*model.VMTask `json:"tasks"`
}

// ErrorBody is the JSON shape of every API error.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the inner object of ErrorBody.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
}

// ComponentCertRequest asks a coordinator for a component's certificate
// (POST /api/v1/components/certificate) with a component, join or admin
// token.
type ComponentCertRequest struct {
	Name  string   `json:"name"`  // the component's name, the certificate's common name
	Kind  string   `json:"kind"`  // "proxy" or "filter"
	Hosts []string `json:"hosts"` // names and addresses it serves on (host or host:port)
}

// ComponentCertResponse carries the cluster CA and the component's
// certificate and key (PEM). It never carries the CA's key.
type ComponentCertResponse struct {
	CACert string `json:"ca_cert"`
	Cert   string `json:"cert"`
	Key    string `json:"key"`
}
