// Package proxy is the CDP proxy: the source side cuts restore points,
// compresses, encrypts and throttles; the target side verifies, decrypts,
// decompresses and delivers to the target filter.
//
// A proxy runs either from a static configuration (one role, one target,
// one key) or managed by the coordinators (Managed): then one listener
// serves both sides, told apart by each connection's Hello, and every VM
// has its own route (target proxy or target filter, task key, traffic
// rules, RPO) that changes at run time without losing or repeating a
// write. It imports internal/wire, internal/model, internal/pki and
// internal/agent.
package proxy
