package proxy

import (
	"github.com/prometheus/client_golang/prometheus"
)

// sourceLag is the time from a write's arrival at the source proxy to the
// target's durable acknowledgement of the point holding it.
var sourceLag = prometheus.NewHistogram(prometheus.HistogramOpts{
	Name:    "continuum_source_proxy_lag_seconds",
	Help:    "Time from the first write of a point reaching the source proxy to its durable acknowledgement.",
	Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
})

var (
	descPending = prometheus.NewDesc("continuum_source_proxy_pending_bytes", "Bytes in the open interval of a VM.", []string{"vm"}, nil)
	descQueued  = prometheus.NewDesc("continuum_source_proxy_queued_bytes", "Bytes of points waiting for their acknowledgement.", []string{"vm"}, nil)
	descSpilled = prometheus.NewDesc("continuum_source_proxy_spilled_bytes", "Bytes of points in the spill cache.", []string{"vm"}, nil)
	descPoints  = prometheus.NewDesc("continuum_source_proxy_points_total", "Points cut.", []string{"vm"}, nil)
	descRaw     = prometheus.NewDesc("continuum_source_proxy_raw_bytes_total", "Bytes of points before compression.", []string{"vm"}, nil)
	descWire    = prometheus.NewDesc("continuum_source_proxy_wire_bytes_total", "Bytes of points after compression and sealing.", []string{"vm"}, nil)
	descLagNow  = prometheus.NewDesc("continuum_source_proxy_current_lag_seconds", "Age of the oldest unacknowledged write of a VM.", []string{"vm"}, nil)
	descBlocked = prometheus.NewDesc("continuum_source_proxy_backpressure", "1 while the filter connection is not read because buffers are full.", []string{"vm"}, nil)
	descAcked   = prometheus.NewDesc("continuum_source_proxy_acked_point", "Last point acknowledged by the target.", []string{"vm"}, nil)
)

// sourceCollector exposes SourceProxy.Status as metrics.
type sourceCollector struct{ p *SourceProxy }

func (c sourceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPending, descQueued, descSpilled, descPoints, descRaw, descWire, descLagNow, descBlocked, descAcked} {
		ch <- d
	}
}

func (c sourceCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.p.Status() {
		g := func(d *prometheus.Desc, t prometheus.ValueType, v float64) {
			ch <- prometheus.MustNewConstMetric(d, t, v, s.VM)
		}
		g(descPending, prometheus.GaugeValue, float64(s.PendingBytes))
		g(descQueued, prometheus.GaugeValue, float64(s.QueuedBytes))
		g(descSpilled, prometheus.GaugeValue, float64(s.SpilledBytes))
		g(descPoints, prometheus.CounterValue, float64(s.Points))
		g(descRaw, prometheus.CounterValue, float64(s.RawBytes))
		g(descWire, prometheus.CounterValue, float64(s.WireBytes))
		g(descLagNow, prometheus.GaugeValue, s.LagSeconds)
		b := 0.0
		if s.Blocked {
			b = 1
		}
		g(descBlocked, prometheus.GaugeValue, b)
		g(descAcked, prometheus.GaugeValue, float64(s.AckedPoint))
	}
}

// Register adds the source proxy's metrics to reg.
func (p *SourceProxy) Register(reg prometheus.Registerer) error {
	if err := reg.Register(sourceCollector{p}); err != nil {
		return err
	}
	if err := reg.Register(sourceLag); err != nil {
		if _, ok := err.(prometheus.AlreadyRegisteredError); !ok {
			return err
		}
	}
	return nil
}
