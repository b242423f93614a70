package nbd

import "github.com/prometheus/client_golang/prometheus"

// metrics are the server's counters; they are registered only when asked
// (WithRegisterer) so that several servers can live in one process.
type metrics struct {
	requests     *prometheus.CounterVec // by op
	errors       *prometheus.CounterVec // error replies by op
	bytesRead    prometheus.Counter
	bytesWritten prometheus.Counter
	protocolErrs prometheus.Counter // connections dropped for unframeable input
	conns        prometheus.Gauge
}

func newMetrics() *metrics {
	return &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "continuum", Subsystem: "nbd", Name: "requests_total",
			Help: "NBD requests received, by command.",
		}, []string{"op"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "continuum", Subsystem: "nbd", Name: "request_errors_total",
			Help: "NBD requests answered with an error, by command.",
		}, []string{"op"}),
		bytesRead: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "continuum", Subsystem: "nbd", Name: "read_bytes_total",
			Help: "Bytes returned by NBD reads.",
		}),
		bytesWritten: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "continuum", Subsystem: "nbd", Name: "written_bytes_total",
			Help: "Bytes stored by NBD writes.",
		}),
		protocolErrs: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "continuum", Subsystem: "nbd", Name: "protocol_errors_total",
			Help: "NBD connections closed because of malformed or oversized input.",
		}),
		conns: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "continuum", Subsystem: "nbd", Name: "connections",
			Help: "Open NBD connections.",
		}),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.requests, m.errors, m.bytesRead, m.bytesWritten, m.protocolErrs, m.conns}
}
