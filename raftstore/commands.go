package raftstore

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
)

// CmdType is the first byte of every raft log entry. Numbers are
// append-only: a type once released keeps its number and meaning forever.
type CmdType uint8

// IgnoreUnknownFlag marks a command that a node which does not know its type
// may skip. Without it, an unknown type stops the FSM rather than let the
// replica diverge.
const IgnoreUnknownFlag CmdType = 0x80

// Command types. Append only; never reuse or renumber.
const (
	CmdPutVCenter         CmdType = 1
	CmdDeleteVCenter      CmdType = 2
	CmdPutVCDServer       CmdType = 3
	CmdDeleteVCDServer    CmdType = 4
	CmdPutCluster         CmdType = 5
	CmdDeleteCluster      CmdType = 6
	CmdPutHost            CmdType = 7
	CmdDeleteHost         CmdType = 8
	CmdPutProxy           CmdType = 9
	CmdDeleteProxy        CmdType = 10
	CmdProxyHeartbeat     CmdType = 11
	CmdPutPolicy          CmdType = 12
	CmdSetPolicyEnabled   CmdType = 13
	CmdDeletePolicy       CmdType = 14
	CmdPutTask            CmdType = 15
	CmdDeleteTask         CmdType = 16
	CmdPutReplica         CmdType = 17
	CmdDeleteReplica      CmdType = 18
	CmdPutRestorePoint    CmdType = 19
	CmdDeleteRestorePoint CmdType = 20
	CmdPutTrafficRule     CmdType = 21
	CmdDeleteTrafficRule  CmdType = 22
	CmdPutTenant          CmdType = 23
	CmdDeleteTenant       CmdType = 24
	CmdPutToken           CmdType = 25
	CmdDeleteToken        CmdType = 26
	CmdPutCoordinator     CmdType = 27
	CmdDeleteCoordinator  CmdType = 28
	CmdComponentHeartbeat CmdType = 29
	CmdPutTasks           CmdType = 30
	CmdSourceDetached     CmdType = 31
)

// Command is a state change proposed through Node.Apply.
type Command interface {
	Type() CmdType
}

// PutVCenter creates (Create) or replaces a vCenter registration.
type PutVCenter struct {
	VCenter model.VCenter `json:"vcenter"`
	Create  bool          `json:"create,omitempty"`
}

// DeleteVCenter removes a vCenter and its clusters and hosts; refused while a
// policy uses it.
type DeleteVCenter struct {
	ID string `json:"id"`
}

// PutVCDServer creates (Create) or replaces a Cloud Director server.
type PutVCDServer struct {
	VCDServer model.VCDServer `json:"vcd_server"`
	Create    bool            `json:"create,omitempty"`
}

// DeleteVCDServer removes a Cloud Director server.
type DeleteVCDServer struct {
	ID string `json:"id"`
}

// PutCluster creates or replaces a compute cluster.
type PutCluster struct {
	Cluster model.Cluster `json:"cluster"`
}

// DeleteCluster removes a compute cluster.
type DeleteCluster struct {
	ID string `json:"id"`
}

// PutHost creates or replaces a host.
type PutHost struct {
	Host model.Host `json:"host"`
}

// DeleteHost removes a host.
type DeleteHost struct {
	ID string `json:"id"`
}

// PutProxy creates (Create) or replaces a proxy.
type PutProxy struct {
	Proxy  model.Proxy `json:"proxy"`
	Create bool        `json:"create,omitempty"`
}

// DeleteProxy removes a proxy; refused while a manual policy names it.
type DeleteProxy struct {
	ID string `json:"id"`
}

// ProxyHeartbeat records that a proxy was seen alive at At.
type ProxyHeartbeat struct {
	ID string    `json:"id"`
	At time.Time `json:"at"`
}

// PutPolicy creates (Create) or updates a policy. A non-zero
// ExpectGeneration makes the update conditional on the stored generation.
type PutPolicy struct {
	Policy           model.Policy `json:"policy"`
	Create           bool         `json:"create,omitempty"`
	ExpectGeneration int64        `json:"expect_generation,omitempty"`
}

// SetPolicyEnabled enables or disables a policy.
type SetPolicyEnabled struct {
	ID      string `json:"id"`
	Enabled bool   `json:"enabled"`
}

// DeletePolicy removes a policy and its tasks.
type DeletePolicy struct {
	ID string `json:"id"`
	// DeleteReplicas marks the policy's replicas Deleting (the controllers
	// then delete them and their journals) and drops its restore-point
	// catalog; refused while one of them is failed over. Without it the
	// replicas and their journals are kept.
	DeleteReplicas bool `json:"delete_replicas,omitempty"`
}

// PutTasks creates or replaces many tasks in one log entry, all or none:
// the same as one PutTask per task, in order, except that one bad task
// changes nothing. A policy of a thousand VMs gets its tasks at once.
type PutTasks struct {
	Tasks []model.VMTask `json:"tasks"`
}

// Type implements Command.
func (PutTasks) Type() CmdType { return CmdPutTasks }

func (SourceDetached) Type() CmdType { return CmdSourceDetached | IgnoreUnknownFlag }

// PutTask creates or replaces a per-VM task of an existing policy.
type PutTask struct {
	Task model.VMTask `json:"task"`
}

// DeleteTask removes a task.
type DeleteTask struct {
	ID string `json:"id"`
	// DetachSource marks the task's replica DetachSource: the VM left its
	// policy, and the CDP storage policy comes off its disks.
	DetachSource bool `json:"detach_source,omitempty"`
}

// SourceDetached clears a replica's DetachSource once the CDP storage
// policy is off its source VM's disks. A node that does not know it skips
// it: the flag then stays set there, and the controllers find nothing to
// take off.
type SourceDetached struct {
	ReplicaID string `json:"replica_id"`
}

// PutReplica creates or replaces a replica record.
type PutReplica struct {
	Replica model.Replica `json:"replica"`
}

// DeleteReplica removes a replica record.
type DeleteReplica struct {
	ID string `json:"id"`
}

// PutRestorePoint creates or replaces a long-term catalog entry.
type PutRestorePoint struct {
	RestorePoint model.RestorePoint `json:"restore_point"`
}

// DeleteRestorePoint removes a catalog entry.
type DeleteRestorePoint struct {
	ID string `json:"id"`
}

// PutTrafficRule creates (Create) or replaces a traffic rule.
type PutTrafficRule struct {
	TrafficRule model.TrafficRule `json:"traffic_rule"`
	Create      bool              `json:"create,omitempty"`
}

// DeleteTrafficRule removes a traffic rule.
type DeleteTrafficRule struct {
	ID string `json:"id"`
}

// PutTenant creates (Create) or replaces a tenant.
type PutTenant struct {
	Tenant model.Tenant `json:"tenant"`
	Create bool         `json:"create,omitempty"`
}

// DeleteTenant removes a tenant.
type DeleteTenant struct {
	ID string `json:"id"`
}

// PutToken creates or replaces an API token (its hash only).
type PutToken struct {
	Token model.Token `json:"token"`
}

// DeleteToken removes a token.
type DeleteToken struct {
	ID string `json:"id"`
}

// PutCoordinator records a coordinator node's addresses.
type PutCoordinator struct {
	Coordinator model.Coordinator `json:"coordinator"`
}

// DeleteCoordinator forgets a coordinator node's addresses.
type DeleteCoordinator struct {
	ID string `json:"id"`
}

func (PutVCenter) Type() CmdType         { return CmdPutVCenter }
func (DeleteVCenter) Type() CmdType      { return CmdDeleteVCenter }
func (PutVCDServer) Type() CmdType       { return CmdPutVCDServer }
func (DeleteVCDServer) Type() CmdType    { return CmdDeleteVCDServer }
func (PutCluster) Type() CmdType         { return CmdPutCluster }
func (DeleteCluster) Type() CmdType      { return CmdDeleteCluster }
func (PutHost) Type() CmdType            { return CmdPutHost }
func (DeleteHost) Type() CmdType         { return CmdDeleteHost }
func (PutProxy) Type() CmdType           { return CmdPutProxy }
func (DeleteProxy) Type() CmdType        { return CmdDeleteProxy }
func (ProxyHeartbeat) Type() CmdType     { return CmdProxyHeartbeat }
func (PutPolicy) Type() CmdType          { return CmdPutPolicy }
func (SetPolicyEnabled) Type() CmdType   { return CmdSetPolicyEnabled }
func (DeletePolicy) Type() CmdType       { return CmdDeletePolicy }
func (PutTask) Type() CmdType            { return CmdPutTask }
func (DeleteTask) Type() CmdType         { return CmdDeleteTask }
func (PutReplica) Type() CmdType         { return CmdPutReplica }
func (DeleteReplica) Type() CmdType      { return CmdDeleteReplica }
func (PutRestorePoint) Type() CmdType    { return CmdPutRestorePoint }
func (DeleteRestorePoint) Type() CmdType { return CmdDeleteRestorePoint }
func (PutTrafficRule) Type() CmdType     { return CmdPutTrafficRule }
func (DeleteTrafficRule) Type() CmdType  { return CmdDeleteTrafficRule }
func (PutTenant) Type() CmdType          { return CmdPutTenant }
func (DeleteTenant) Type() CmdType       { return CmdDeleteTenant }
func (PutToken) Type() CmdType           { return CmdPutToken }
func (DeleteToken) Type() CmdType        { return CmdDeleteToken }
func (PutCoordinator) Type() CmdType     { return CmdPutCoordinator }
func (DeleteCoordinator) Type() CmdType  { return CmdDeleteCoordinator }

// applyFunc changes the state for one decoded command. It returns a state
// error (validation, conflict, not found, precondition) without touching the
// state, or the value handed back to the proposer.
type applyFunc func(s *model.State, c Command) (any, error)

type cmdEntry struct {
	name   string
	decode func(payload []byte) (Command, error)
	apply  applyFunc
}

// registry maps a base type (flag bit cleared) to its decoder and apply
// function. It is filled by init and read-only afterwards.
var registry [128]*cmdEntry

// register adds a command type to the registry. A duplicate or a type that
// does not match T's Type() is a programming error and panics at start-up.
func register[T Command](apply func(s *model.State, c T) (any, error)) {
	var zero T
	t := zero.Type() &^ IgnoreUnknownFlag
	if t == 0 {
		panic("raftstore: command type 0 is reserved")
	}
	if registry[t] != nil {
		panic(fmt.Sprintf("raftstore: command type %d registered twice (%s and %T)", t, registry[t].name, zero))
	}
	registry[t] = &cmdEntry{
		name: fmt.Sprintf("%T", zero),
		decode: func(payload []byte) (Command, error) {
			var c T
			if err := json.Unmarshal(payload, &c); err != nil {
				return nil, err
			}
			return c, nil
		},
		apply: func(s *model.State, c Command) (any, error) {
			tc, ok := c.(T)
			if !ok {
				if p, isPtr := any(c).(*T); isPtr && p != nil {
					tc = *p
				} else {
					return nil, fmt.Errorf("command %T is not %T", c, zero)
				}
			}
			return apply(s, tc)
		},
	}
}

// UnknownCommandError is returned by DecodeCommand for a type this build does
// not know. Skippable reports whether the proposer set IgnoreUnknownFlag.
type UnknownCommandError struct {
	Type      CmdType
	Skippable bool
}

func (e *UnknownCommandError) Error() string {
	if e.Skippable {
		return fmt.Sprintf("unknown command type %d (flagged ignorable)", e.Type&^IgnoreUnknownFlag)
	}
	return fmt.Sprintf("unknown command type %d", e.Type)
}

// EncodeCommand renders a command as its type byte followed by its JSON.
func EncodeCommand(c Command) ([]byte, error) {
	if c == nil {
		return nil, fmt.Errorf("encode command: nil command")
	}
	t := c.Type()
	if registry[t&^IgnoreUnknownFlag] == nil {
		return nil, fmt.Errorf("encode command %T: type %d is not registered", c, t)
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encode command %T: %w", c, err)
	}
	b := make([]byte, 0, 1+len(payload))
	b = append(b, byte(t))
	return append(b, payload...), nil
}

// DecodeCommand parses a log entry. It never panics: an unknown type gives an
// *UnknownCommandError and a malformed payload gives a decode error; the FSM
// decides which of these it may survive.
func DecodeCommand(b []byte) (Command, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("decode command: empty entry")
	}
	t := CmdType(b[0])
	e := registry[t&^IgnoreUnknownFlag]
	if e == nil {
		return nil, &UnknownCommandError{Type: t, Skippable: t&IgnoreUnknownFlag != 0}
	}
	c, err := e.decode(b[1:])
	if err != nil {
		return nil, fmt.Errorf("decode command %s: %w", e.name, err)
	}
	return c, nil
}
