// Package model holds Continuum's domain types (infrastructure, proxies,
// policies, per-VM tasks, replicas, restore points, traffic rules, tenants)
// and their validation. It imports nothing of ours; every other package may
// import it.
package model
