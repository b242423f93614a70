package appliance

import (
	"context"

	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/raftstore"
)

// Store is what the API and the leader runner need from the raft node;
// *raftstore.Node implements it.
type Store interface {
	ClusterID() string
	ClusterKey() []byte
	Apply(ctx context.Context, cmd raftstore.Command) (any, error)
	Read(fn func(*model.State))
	ReadConsistent(ctx context.Context, fn func(*model.State)) error
	IsLeader() bool
	Leader() (id, raftAddr string)
	LeadershipChanges() <-chan bool
	Barrier(ctx context.Context) error
	AddVoter(ctx context.Context, id, raftAddr string) error
	RemoveServer(ctx context.Context, id string) error
	TransferLeadership(ctx context.Context, toID string) error
	Members() ([]raftstore.Member, error)
	Stats() map[string]string
	AppliedIndex() uint64
	Seal(plain []byte) ([]byte, error)
	Unseal(sealed []byte) ([]byte, error)
}

var _ Store = (*raftstore.Node)(nil)
