// Package controllers holds the coordinator's leader-only reconcile loops:
// the policy reconciler (the configuration algorithm: tasks, component
// checks, replicas, storage policy, proxy selection, configuration push),
// reconfiguration from the vCenter change feed, per-VM and per-policy
// statuses, and the long-term restore-point scheduler.
//
// Each loop is a func(ctx) error that the coordinator's leader runner starts
// when this node becomes leader and cancels when it stops being leader. The
// loops see the replicated state, vCenter and the data-path components only
// through the small interfaces Store, Inventory and Components, which
// raftstore.Node, vsphere.Client and appliance.Components satisfy.
//
// Wiring on a coordinator node:
//
//	m, _ := controllers.NewMetrics(registry)
//	conn := &controllers.Connector{Store: node, Unseal: node.Unseal, Dir: dataDir, Logger: log}
//	components := &appliance.Components{Store: node, Filters: filterAdmin}
//	rec, _ := controllers.NewPolicyReconciler(controllers.Config{
//		Store: node, Inventories: conn.Get, Components: components, Metrics: m, Logger: log,
//		KeyFor: controllers.DeriveKeys(node.ClusterKey()),
//	})
//	sched, _ := controllers.NewScheduler(controllers.SchedulerConfig{Store: node, Components: components, Metrics: m, Logger: log})
//	for _, l := range controllers.Loops(rec, sched) {
//		runner.Register(appliance.Controller{Name: l.Name, Run: l.Run})
//	}
//
// The API calls rec.Enqueue after a policy write (the loop also polls the
// state) and rec.ReportStatus for the components' status reports, and
// PolicyStatus to show a policy's status.
//
// It may import raftstore, vsphere, internal/model, the Prometheus client
// and the standard library.
package controllers
