package model

import "time"

// FilterState is the state of the I/O filter on a cluster or host.
type FilterState string

const (
	FilterNotInstalled FilterState = "not_installed"
	FilterInstalling   FilterState = "installing"
	FilterInstalled    FilterState = "installed"
	FilterFailed       FilterState = "failed"
)

// VCenter is a registered vCenter Server. The password is sealed with the
// cluster key before it enters the raft log; it is never stored in clear.
type VCenter struct {
	ID             string    `json:"id"`
	Name           string    `json:"name"`
	URL            string    `json:"url"`
	Username       string    `json:"username"`
	PasswordSealed []byte    `json:"password_sealed,omitempty"`
	Thumbprint     string    `json:"thumbprint,omitempty"` // SHA-1 or SHA-256 of the server certificate
	CACert         string    `json:"ca_cert,omitempty"`    // PEM
	Insecure       bool      `json:"insecure,omitempty"`
	CreatedAt      time.Time `json:"created_at"`
}

// VCDServer is a registered Cloud Director server (provider session).
type VCDServer struct {
	ID             string    `json:"id"`
	Name           string    `json:"name"`
	URL            string    `json:"url"`
	Org            string    `json:"org"`
	Username       string    `json:"username"`
	PasswordSealed []byte    `json:"password_sealed,omitempty"`
	Insecure       bool      `json:"insecure,omitempty"`
	CreatedAt      time.Time `json:"created_at"`
}

// Cluster is a vSphere compute cluster known to the coordinator.
type Cluster struct {
	ID               string      `json:"id"` // "<vcenter-id>/<moref>"
	VCenterID        string      `json:"vcenter_id"`
	MoRef            string      `json:"moref"`
	Name             string      `json:"name"`
	Datacenter       string      `json:"datacenter,omitempty"`
	FilterState      FilterState `json:"filter_state"`
	FilterVersion    string      `json:"filter_version,omitempty"`
	StorageProfileID string      `json:"storage_profile_id,omitempty"`
	Reason           string      `json:"reason,omitempty"`
}

// Host is an ESXi host; Filter* describe the filter component on it.
type Host struct {
	ID            string      `json:"id"` // "<vcenter-id>/<moref>"
	VCenterID     string      `json:"vcenter_id"`
	ClusterID     string      `json:"cluster_id,omitempty"`
	MoRef         string      `json:"moref"`
	Name          string      `json:"name"`
	FilterState   FilterState `json:"filter_state"`
	FilterAddr    string      `json:"filter_addr,omitempty"`  // data-path address of the filter on this host
	FilterAdmin   string      `json:"filter_admin,omitempty"` // admin (HTTPS) address of the filter on this host
	FilterNBD     string      `json:"filter_nbd,omitempty"`   // NBD address of the filter's protected-disk exports
	LastHeartbeat time.Time   `json:"last_heartbeat,omitempty"`
}

// ProxyRole says which side(s) of the data path a proxy serves.
type ProxyRole string

const (
	RoleSource ProxyRole = "source"
	RoleTarget ProxyRole = "target"
	RoleBoth   ProxyRole = "both"
)

// Serves reports whether a proxy of this role can act as want.
func (r ProxyRole) Serves(want ProxyRole) bool { return r == want || r == RoleBoth }

// ProxyKind: a physical machine ranks before a VM in automatic selection.
type ProxyKind string

const (
	KindPhysical ProxyKind = "physical"
	KindVM       ProxyKind = "vm"
)

// Proxy is a CDP proxy (data mover).
type Proxy struct {
	ID            string    `json:"id"`
	Name          string    `json:"name"`
	Role          ProxyRole `json:"role"`
	Kind          ProxyKind `json:"kind"`
	VCenterID     string    `json:"vcenter_id,omitempty"`
	ClusterID     string    `json:"cluster_id,omitempty"` // where a VM proxy runs
	Address       string    `json:"address"`              // host:port of its data-path listener
	MaxTasks      int       `json:"max_tasks"`            // capacity: concurrent VM streams
	LastHeartbeat time.Time `json:"last_heartbeat,omitempty"`
	CreatedAt     time.Time `json:"created_at"`
}

// ProxySelection is automatic (ranked) or manual (restricted to a list).
type ProxySelection string

const (
	SelectAuto   ProxySelection = "auto"
	SelectManual ProxySelection = "manual"
)

// VMRef names a protected VM by managed object reference (preferred) or name.
type VMRef struct {
	MoRef string `json:"moref,omitempty"`
	Name  string `json:"name,omitempty"`
}

// Key is the stable key of the reference.
func (v VMRef) Key() string {
	if v.MoRef != "" {
		return v.MoRef
	}
	return v.Name
}

// Target says where replicas go.
type Target struct {
	VCenterID     string `json:"vcenter_id"`
	Cluster       string `json:"cluster"` // cluster name or moref
	Host          string `json:"host,omitempty"`
	Datastore     string `json:"datastore"`
	ResourcePool  string `json:"resource_pool,omitempty"`
	Folder        string `json:"folder,omitempty"`
	ReplicaSuffix string `json:"replica_suffix,omitempty"` // default "_replica"
}

// Policy is a CDP policy.
type Policy struct {
	ID          string   `json:"id"`
	Name        string   `json:"name"`
	Description string   `json:"description,omitempty"`
	Enabled     bool     `json:"enabled"`
	VCenterID   string   `json:"vcenter_id"` // source vCenter
	VMs         []VMRef  `json:"vms"`
	Target      Target   `json:"target"`
	RPO         Duration `json:"rpo"`
	// Short-term restore points are kept for this window.
	ShortTermRetention Duration `json:"short_term_retention"`
	// Long-term points: every LongTermEvery, kept for LongTermRetention.
	// Zero LongTermEvery disables long-term points.
	LongTermEvery     Duration `json:"long_term_every,omitempty"`
	LongTermRetention Duration `json:"long_term_retention,omitempty"`
	PrePointHook      string   `json:"pre_point_hook,omitempty"` // command run before a long-term point
	// RPO alarms: lag above warning is Warning, above error is Error.
	RPOWarning     Duration       `json:"rpo_warning,omitempty"`
	RPOError       Duration       `json:"rpo_error,omitempty"`
	ProxySelection ProxySelection `json:"proxy_selection"`
	SourceProxies  []string       `json:"source_proxies,omitempty"` // manual selection only
	TargetProxies  []string       `json:"target_proxies,omitempty"`
	// Generation increments on every change of the spec; selection of new
	// proxies for existing tasks happens only when it changes.
	Generation int64     `json:"generation"`
	CreatedAt  time.Time `json:"created_at"`
	UpdatedAt  time.Time `json:"updated_at"`
}

// VMStatus is the per-VM (and per-policy) status as the product defines it.
type VMStatus string

const (
	StatusPending     VMStatus = "Pending"
	StatusConfiguring VMStatus = "Configuring"
	StatusInitialSync VMStatus = "Initial sync"
	StatusSyncing     VMStatus = "Syncing"
	StatusCBT         VMStatus = "CBT mode"
	StatusSuccess     VMStatus = "Success"
	StatusWarning     VMStatus = "Warning"
	StatusError       VMStatus = "Error"
)

// DiskMap pairs a source disk with its replica disk.
type DiskMap struct {
	Key            int32  `json:"key"`
	CapacityBytes  int64  `json:"capacity_bytes"`
	SourceFile     string `json:"source_file,omitempty"`
	ReplicaFile    string `json:"replica_file,omitempty"`
	ProfileApplied bool   `json:"profile_applied"`
}

// VMTask is the coordinator's record of one protected VM of a policy.
type VMTask struct {
	ID             string    `json:"id"` // "<policy-id>/<vm-moref>"
	PolicyID       string    `json:"policy_id"`
	VMMoRef        string    `json:"vm_moref"`
	VMName         string    `json:"vm_name"`
	InstanceUUID   string    `json:"instance_uuid,omitempty"`
	SourceHost     string    `json:"source_host,omitempty"`
	TargetHost     string    `json:"target_host,omitempty"` // host ID ("<vcenter-id>/<moref>") of the replica: its target filter
	SourceProxy    string    `json:"source_proxy,omitempty"`
	TargetProxy    string    `json:"target_proxy,omitempty"`
	ReplicaID      string    `json:"replica_id,omitempty"`
	Disks          []DiskMap `json:"disks,omitempty"`
	Status         VMStatus  `json:"status"`
	Reason         string    `json:"reason,omitempty"`
	SyncDoneBytes  int64     `json:"sync_done_bytes,omitempty"`
	SyncTotalBytes int64     `json:"sync_total_bytes,omitempty"`
	LagSeconds     float64   `json:"lag_seconds,omitempty"`
	LastPointAt    time.Time `json:"last_point_at,omitempty"`
	Generation     int64     `json:"generation"` // policy generation this task was planned for
	UpdatedAt      time.Time `json:"updated_at"`
}

// Replica is a replica VM on the target.
type Replica struct {
	ID         string    `json:"id"` // "<vcenter-id>/<moref>"
	PolicyID   string    `json:"policy_id"`
	SourceVM   string    `json:"source_vm"`
	SourceUUID string    `json:"source_uuid"`
	VCenterID  string    `json:"vcenter_id"`
	MoRef      string    `json:"moref"`
	Name       string    `json:"name"`
	Disks      []DiskMap `json:"disks,omitempty"`
	FailedOver bool      `json:"failed_over,omitempty"`
	CreatedAt  time.Time `json:"created_at"`
	// Deleting: its policy was deleted together with its replicas. The
	// controllers purge its journal (JournalVM on the filter of
	// TargetHost), delete the replica VM, then this record.
	Deleting   bool   `json:"deleting,omitempty"`
	JournalVM  string `json:"journal_vm,omitempty"`
	TargetHost string `json:"target_host,omitempty"`
	// SourceVCenterID is the vCenter of SourceVM.
	SourceVCenterID string `json:"source_vcenter_id,omitempty"`
	// DetachSource: SourceVM left protection (its policy was deleted, or
	// the VM was taken out of it). The controllers take the CDP storage
	// policy off its disks, unless a policy protects it again, then clear
	// this.
	DetachSource bool `json:"detach_source,omitempty"`
}

// PointKind distinguishes short-term (journal) and long-term (delta) points.
type PointKind string

const (
	PointShortTerm PointKind = "short-term"
	PointLongTerm  PointKind = "long-term"
)

// RestorePoint is an entry in the long-term restore-point catalog.
type RestorePoint struct {
	ID        string    `json:"id"`
	PolicyID  string    `json:"policy_id"`
	VMMoRef   string    `json:"vm_moref"`
	Kind      PointKind `json:"kind"`
	Time      time.Time `json:"time"`
	ExpiresAt time.Time `json:"expires_at,omitempty"`
	// Status is Success, or Warning when the pre-point hook failed (Reason
	// then holds its output); empty for entries written before it existed.
	Status VMStatus `json:"status,omitempty"`
	Reason string   `json:"reason,omitempty"`
}

// TrafficRule applies to traffic between two address ranges: from an
// address in SourceCIDR to one in TargetCIDR. Between a source proxy and a
// target proxy (always TLS) Encrypt adds the task key's end-to-end sealing
// of every point and ThrottleBytesPerSec limits the bandwidth. Between a
// host's filter and a proxy (source filter to source proxy, target proxy
// to target filter) HostTraffic decides: encrypted (TLS, the default) or
// integrity (after the mutually authenticated TLS handshake the data
// travels in clear, every frame tagged with a per-connection key).
type TrafficRule struct {
	ID                  string `json:"id"`
	Name                string `json:"name"`
	SourceCIDR          string `json:"source_cidr"`
	TargetCIDR          string `json:"target_cidr"`
	Encrypt             bool   `json:"encrypt"`
	ThrottleBytesPerSec int64  `json:"throttle_bytes_per_sec,omitempty"` // 0: unlimited
	HostTraffic         string `json:"host_traffic,omitempty"`           // "" (encrypted), HostTrafficEncrypted or HostTrafficIntegrity
}

// Protection of the traffic between a host's filter and a proxy.
const (
	HostTrafficEncrypted = "encrypted"
	HostTrafficIntegrity = "integrity"
)

// ValidHostTraffic says whether v is a TrafficRule.HostTraffic value ("" is
// the default, encrypted).
func ValidHostTraffic(v string) bool {
	return v == "" || v == HostTrafficEncrypted || v == HostTrafficIntegrity
}

// Tenant is a provider-mode tenant. Its key is sealed with the cluster key.
type Tenant struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	KeySealed []byte    `json:"key_sealed,omitempty"`
	QuotaVMs  int       `json:"quota_vms,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// TokenRole scopes an API token.
type TokenRole string

const (
	TokenAdmin     TokenRole = "admin"
	TokenJoin      TokenRole = "join"      // coordinators joining the cluster
	TokenComponent TokenRole = "component" // proxies and filters registering
)

// Token is an API or join token; only its SHA-256 is stored.
type Token struct {
	ID        string    `json:"id"`
	Role      TokenRole `json:"role"`
	SHA256    string    `json:"sha256"` // hex
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at,omitempty"`
}

// Coordinator is a coordinator node's addresses, so that any node can find
// the leader's API address from its raft ID (followers forward writes).
type Coordinator struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	APIAddr  string `json:"api_addr"`
}
