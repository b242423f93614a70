package source

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

var (
	descLag      = prometheus.NewDesc("continuum_source_filter_lag_seconds", "Age of the oldest write not yet durable at the target.", []string{"vm"}, nil)
	descBuf      = prometheus.NewDesc("continuum_source_filter_buffer_bytes", "Bytes of writes buffered until acknowledged.", []string{"vm"}, nil)
	descMode     = prometheus.NewDesc("continuum_source_filter_mode", "1 for the VM's current mode.", []string{"vm", "mode"}, nil)
	descConn     = prometheus.NewDesc("continuum_source_filter_connected", "1 while a session to the source proxy is up.", []string{"vm"}, nil)
	descSyncDone = prometheus.NewDesc("continuum_source_filter_sync_done_bytes", "Bytes read by the initial sync.", []string{"vm"}, nil)
	descSyncTot  = prometheus.NewDesc("continuum_source_filter_sync_total_bytes", "Bytes the initial sync reads in all.", []string{"vm"}, nil)
	descSyncRate = prometheus.NewDesc("continuum_source_filter_sync_rate_bytes_per_second", "Read rate of the running sync scan.", []string{"vm"}, nil)
	descDirty    = prometheus.NewDesc("continuum_source_filter_dirty_blocks", "Blocks that may not have reached the target.", []string{"vm"}, nil)
	descCBT      = prometheus.NewDesc("continuum_source_filter_cbt_entries_total", "Times the VM entered CBT mode.", []string{"vm"}, nil)
	descSeq      = prometheus.NewDesc("continuum_source_filter_seq", "Last sequence number stamped.", []string{"vm"}, nil)
	descAcked    = prometheus.NewDesc("continuum_source_filter_acked_seq", "Last sequence number acknowledged by the target.", []string{"vm"}, nil)
)

var allModes = []Mode{ModeStarting, ModeInitial, ModeSyncing, ModeCBT, ModeResync}

type collector struct{ s *Service }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descLag, descBuf, descMode, descConn, descSyncDone, descSyncTot, descSyncRate, descDirty, descCBT, descSeq, descAcked} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	for _, st := range c.s.Status() {
		g := func(d *prometheus.Desc, t prometheus.ValueType, v float64) {
			ch <- prometheus.MustNewConstMetric(d, t, v, st.VM)
		}
		g(descLag, prometheus.GaugeValue, st.LagSeconds)
		g(descBuf, prometheus.GaugeValue, float64(st.BufferBytes))
		g(descConn, prometheus.GaugeValue, b(st.Connected))
		g(descSyncDone, prometheus.GaugeValue, float64(st.SyncDoneBytes))
		g(descSyncTot, prometheus.GaugeValue, float64(st.SyncTotalBytes))
		g(descSyncRate, prometheus.GaugeValue, st.SyncRateBytesPerSec)
		dirty := 0
		for _, d := range st.Disks {
			dirty += d.DirtyBlocks
		}
		g(descDirty, prometheus.GaugeValue, float64(dirty))
		g(descCBT, prometheus.CounterValue, float64(st.CBTEntries))
		g(descSeq, prometheus.GaugeValue, float64(st.Seq))
		g(descAcked, prometheus.GaugeValue, float64(st.Acked))
		for _, m := range allModes {
			ch <- prometheus.MustNewConstMetric(descMode, prometheus.GaugeValue, b(st.Mode == m.String()), st.VM, m.String())
		}
	}
}

// Register adds the filter's metrics to reg.
func (s *Service) Register(reg prometheus.Registerer) error {
	if err := reg.Register(collector{s}); err != nil {
		return fmt.Errorf("register source filter metrics: %w", err)
	}
	return nil
}

// Handler serves /healthz, /metrics (of gather) and GET /v1/status.
func (s *Service) Handler(gather prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.Handle("GET /metrics", promhttp.HandlerFor(gather, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s.Status())
	})
	return mux
}
