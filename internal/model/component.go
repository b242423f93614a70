package model

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"time"
)

// This file is the contract between the coordinator and the data-path
// components (filters and proxies). A component sends a ComponentReport as
// its heartbeat and gets its ComponentConfig back; it applies the config,
// keeps the last one on disk, and goes on running it while no coordinator
// answers.

// ComponentKind is what a component is.
type ComponentKind string

// Component kinds.
const (
	ComponentFilter ComponentKind = "filter" // one per ESXi host
	ComponentProxy  ComponentKind = "proxy"
)

// TaskPath is one protected VM's data path, as the components see it. The
// same TaskPath goes to the VM's source filter, source proxy, target proxy
// and target filter; each uses the fields of its hop.
type TaskPath struct {
	TaskID   string `json:"task_id"`
	PolicyID string `json:"policy_id"`
	// VM is the VM's data-path name (its vCenter name): the folder of its
	// flat files, the name in the wire stream and journal, and the first
	// part of its disks' NBD export names ("VM/KEY").
	VM    string    `json:"vm"`
	Disks []DiskMap `json:"disks"` // key and capacity of every protected disk

	RPO                Duration `json:"rpo"`
	ShortTermRetention Duration `json:"short_term_retention"`
	LongTermRetention  Duration `json:"long_term_retention,omitempty"`

	SourceHost   string `json:"source_host"`   // host MoRef the VM runs on
	TargetHost   string `json:"target_host"`   // host MoRef of the replica
	SourceProxy  string `json:"source_proxy"`  // data address (host:port) of the source proxy
	TargetProxy  string `json:"target_proxy"`  // data address of the target proxy
	TargetFilter string `json:"target_filter"` // data address of the target host's filter

	Rules []TrafficRule `json:"rules,omitempty"` // traffic rules, first match wins
	// Key is the task's AES-256 data-path key (32 bytes; base64 in JSON).
	// It travels only inside the coordinator's TLS session to an
	// authenticated component, and the component keeps it in a 0600 file.
	Key []byte `json:"key"`
}

// ComponentConfig is everything one component runs. Version changes
// whenever any of it does; a component that already runs Version need not
// apply it again.
type ComponentConfig struct {
	Version string        `json:"version"`
	Kind    ComponentKind `json:"kind"`
	ID      string        `json:"id"` // proxy ID, or host ID ("<vcenter-id>/<moref>") of a filter
	Tasks   []TaskPath    `json:"tasks"`
	// Unchanged: the component reported running Version already, so the
	// answer leaves the tasks out; it keeps running what it runs.
	Unchanged bool `json:"unchanged,omitempty"`
}

// VMReport is a component's view of one VM's data path.
type VMReport struct {
	TaskID string   `json:"task_id"`
	VM     string   `json:"vm"`
	Status VMStatus `json:"status,omitempty"` // filters: Initial sync, Syncing or CBT mode
	Reason string   `json:"reason,omitempty"`

	SyncDoneBytes  int64 `json:"sync_done_bytes,omitempty"`  // filters, during initial sync or resync
	SyncTotalBytes int64 `json:"sync_total_bytes,omitempty"` // filters

	// LagSeconds is the write-to-durable lag (source proxies).
	LagSeconds  float64   `json:"lag_seconds,omitempty"`
	LastPointAt time.Time `json:"last_point_at,omitempty"` // source proxies: newest acknowledged short-term point

	// PathVersion is TaskPathVersion of the task path the component runs
	// for this task. A report made under an older path (a disk added, the
	// VM moved, not yet applied) says nothing about the current one, and
	// the coordinator drops it. Empty: not checked.
	PathVersion string `json:"path_version,omitempty"`
}

// TaskPathVersion identifies a task path: the hex SHA-256 (first 16 bytes)
// of its JSON.
func TaskPathVersion(t TaskPath) string {
	b, err := json.Marshal(t)
	if err != nil { // a TaskPath always encodes
		panic(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

// ComponentReport is a component's heartbeat.
type ComponentReport struct {
	Kind ComponentKind `json:"kind"`
	ID   string        `json:"id"` // proxy ID; for a filter the host MoRef or name (the coordinator resolves it)
	// VCenterID names the vCenter of a filter's host (optional when only
	// one vCenter is registered).
	VCenterID     string     `json:"vcenter_id,omitempty"`
	DataAddr      string     `json:"data_addr,omitempty"`  // filter: target-side data listener; proxy: its listener
	AdminAddr     string     `json:"admin_addr,omitempty"` // HTTPS admin API (/healthz, /metrics, /v1/...)
	NBDAddr       string     `json:"nbd_addr,omitempty"`   // filter: NBD exports of protected disks
	ConfigVersion string     `json:"config_version,omitempty"`
	VMs           []VMReport `json:"vms,omitempty"`
}
