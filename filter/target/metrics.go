package target

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	sessions      prometheus.Gauge
	points        prometheus.Counter
	bytes         prometheus.Counter
	appendSeconds prometheus.Histogram
	appendErrors  *prometheus.CounterVec
	rejected      *prometheus.CounterVec
	retentionRuns *prometheus.CounterVec
}

func newMetrics() *metrics {
	return &metrics{
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{Name: "continuum_target_filter_sessions",
			Help: "Open target proxy sessions (one per VM)."}),
		points: prometheus.NewCounter(prometheus.CounterOpts{Name: "continuum_target_filter_points_total",
			Help: "Points made durable and acknowledged."}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "continuum_target_filter_point_bytes_total",
			Help: "Raw bytes of the points appended."}),
		appendSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "continuum_target_filter_append_seconds",
			Help: "Time to make a point durable (group commit included).", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		appendErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "continuum_target_filter_append_errors_total",
			Help: "Appends that failed, by cause."}, []string{"cause"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "continuum_target_filter_rejected_total",
			Help: "Connections dropped for a bad frame, by reason."}, []string{"reason"}),
		retentionRuns: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "continuum_target_filter_retention_runs_total",
			Help: "Retention passes per VM, by result."}, []string{"result"}),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.sessions, m.points, m.bytes, m.appendSeconds, m.appendErrors, m.rejected, m.retentionRuns}
}
