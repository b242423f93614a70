// Package target is the target filter service: it accepts point streams
// from target proxies (one TLS connection per VM), appends each point to
// the journal and acknowledges it only once it is durable; it serves an
// HTTP admin API to list, export and serve (read-only, over NBD) restore
// points, create long-term points and set retention; and it applies
// retention periodically on its own, so short-term points keep being pruned
// while no coordinator is reachable.
//
// It also holds the restore-point client commands, which talk to that admin
// API directly.
//
// It imports filter/journal, filter/nbd, internal/wire and internal/model.
package target
