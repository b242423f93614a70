package controllers

import (
	"context"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/raftstore"
	"github.com/continuum-cdp/continuum/vsphere"
)

// Store is the replicated state as the controllers use it;
// *raftstore.Node satisfies it.
type Store interface {
	Read(fn func(s *model.State))
	ReadConsistent(ctx context.Context, fn func(s *model.State)) error
	Apply(ctx context.Context, cmd raftstore.Command) (any, error)
}

// Inventory is the part of a vCenter connection the controllers use;
// *vsphere.Client satisfies it.
type Inventory interface {
	Inventory(ctx context.Context) (*vsphere.Inventory, error)
	VM(ctx context.Context, moref string) (*vsphere.VM, error)
	EnsureProfile(ctx context.Context) (string, error)
	FilterInstalled(ctx context.Context, cluster string) (bool, error)
	EnsureReplica(ctx context.Context, spec vsphere.ReplicaSpec) (*vsphere.VM, error)
	EnsureReplicaDisk(ctx context.Context, replica, sourceVM string, diskKey int32) (*vsphere.Disk, error)
	ApplyPolicy(ctx context.Context, vm string, profileID string, diskKeys ...int32) error
	// RemoveCDPPolicy takes the CDP storage policy off the disks of a VM
	// that left protection; a VM already gone is not an error.
	RemoveCDPPolicy(ctx context.Context, vm string) error
	// DeleteReplica powers off and destroys a replica VM (one without the
	// replica marker is refused); a replica already gone is not an error.
	DeleteReplica(ctx context.Context, replica string) error
	Watch(ctx context.Context, fn func(vsphere.Change)) error
}

// Inventories gives the connection to a registered vCenter by its ID.
type Inventories func(ctx context.Context, vcenterID string) (Inventory, error)

// DataPath is the configuration of one protected VM's data path, pushed to
// its source filter, source proxy and target proxy.
type DataPath struct {
	Task        model.VMTask
	Policy      model.Policy // RPO and retention
	SourceHost  string       // host MoRef the VM runs on
	TargetHost  string       // host MoRef the replica is on (its target filter)
	SourceProxy model.Proxy
	TargetProxy model.Proxy
	Rules       []model.TrafficRule
	Key         []byte // data-path encryption key of this task
}

// Components pushes configuration to the data-path components (filters and
// proxies) and asks the target side for long-term points.
type Components interface {
	// Configure pushes a task's data-path configuration; repeating it with
	// the same configuration must be harmless.
	Configure(ctx context.Context, dp DataPath) error
	// CreateLongTerm asks the target to form a long-term point of the task
	// now and returns the point's time.
	CreateLongTerm(ctx context.Context, task model.VMTask) (time.Time, error)
	// PurgeJournal deletes the journal of vm (all its restore points and
	// replica disks) on the filter of targetHost, once the filter no longer
	// has it in its configuration; a journal already gone is not an error.
	PurgeJournal(ctx context.Context, targetHost, vm string) error
}

// Clock is the time source; tests pass a fake.
type Clock interface{ Now() time.Time }

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }
