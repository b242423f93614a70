// Package raftstore is the coordinator's replicated state: a hashicorp/raft
// node with raft-boltdb storage, the FSM holding model.State, typed commands,
// snapshots and membership. It imports only internal/model.
package raftstore
