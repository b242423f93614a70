package controllers

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Reconcile outcomes, the values of the result label.
const (
	ResultSuccess      = "success"       // as desired; polled again later
	ResultRequeueAfter = "requeue_after" // not done yet; polled again soon
	ResultError        = "error"         // failed; retried with backoff
	ResultTerminal     = "terminal"      // failed in a way retrying cannot fix
)

// Metrics are the controllers' Prometheus collectors.
type Metrics struct {
	Reconciles *prometheus.CounterVec
	Points     *prometheus.CounterVec
}

// NewMetrics creates the collectors and registers them with reg (nil: not
// registered, for tests and embedding).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		Reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "continuum_reconcile_total",
			Help: "Reconcile outcomes per controller.",
		}, []string{"controller", "result"}),
		Points: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "continuum_long_term_points_total",
			Help: "Long-term restore points scheduled, by outcome.",
		}, []string{"result"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.Reconciles, m.Points} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
