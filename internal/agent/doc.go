// Package agent is the component side of the coordinator contract: a filter
// (one per ESXi host) or a proxy uses it to obtain its certificate from the
// cluster CA, to send its heartbeat, and to receive, apply and keep the
// configuration the coordinators compute for it.
//
// # Use
//
//	a, err := agent.New(agent.Config{
//		Coordinators: []string{"https://10.0.0.1:8443", "https://10.0.0.2:8443"},
//		Token:        token, CACertFile: "ca.pem",
//		Kind:         model.ComponentProxy, ID: "px-1",
//		StateDir:     dir, Logger: log,
//	})
//	cert, pool, err := a.TLS(ctx) // for the data listener and the admin HTTPS
//	err = a.Run(ctx, buildReport, applyConfig)
//
// Run calls apply once at start with the configuration cached in StateDir
// (if any), then with every configuration whose Version differs from the
// one running. Each heartbeat carries the running Version. A failed apply
// is logged and retried at the next heartbeat; the cache is written (0600,
// atomically) only once a configuration applied.
//
// # Coordinators down
//
// Heartbeats go to the coordinator that answered last, then to the others
// in turn when one refuses the connection or answers 502, 503 or 504 (any
// node forwards to the leader, so other answers are final). While none
// answers, nothing changes: the component keeps running its configuration
// and heartbeats back off up to three intervals (at most 30s). A cache
// file that cannot be read is reported by CachedConfigError and never
// applied; the coordinator's next answer replaces it.
//
// The package imports only internal/model and internal/pki.
package agent
