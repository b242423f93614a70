// Package raftstore is the coordinator's replicated state: a hashicorp/raft
// node with raft-boltdb storage, the FSM holding model.State, typed commands,
// snapshots and membership. It imports only internal/model.
//
// Every change goes through Node.Apply on the leader. A command is one type
// byte followed by the JSON of its struct; types are numbered append-only in
// a registry that maps each to its apply function. A type byte with
// IgnoreUnknownFlag set may be skipped by a node that does not know it;
// without the flag such a node stops (the FSM panics) instead of diverging.
// A known command that does not decode stops the FSM for the same reason.
// Validation, conflicts and missing references are checked inside the FSM,
// returned to the proposer as model errors, and change nothing.
//
// The FSM never reads the clock: timestamps travel in the commands. Stored
// objects are replaced, never modified in place, which lets a snapshot
// capture the maps cheaply and encode them later, one record per object
// with a CRC-32C over the stream.
//
// Secrets (vCenter passwords, tenant keys) are sealed with AES-256-GCM under
// the cluster key (DATA/cluster.key, 0600) by the proposer before they enter
// the log. DATA/node.json binds a data directory to one node of one cluster;
// Open refuses a directory that belongs elsewhere or cannot be read, and
// leaves it untouched.
package raftstore
