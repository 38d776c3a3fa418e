package appliance

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/internal/metrics"
	"lpmos.dev/lpmos/netboot/dhcpd"
	"lpmos.dev/lpmos/netboot/tftpd"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/httpjson"
)

// applianceMetrics are the appliance's Prometheus metrics, on a registry of its own
// (created at start, served at GET /metrics on the regional API). Names and labels:
// docs/contract.md, "Metrics".
type applianceMetrics struct {
	reg  *prometheus.Registry
	http *metrics.HTTP

	dhcp          *prometheus.CounterVec   // type, outcome
	tftpTransfers *prometheus.CounterVec   // outcome
	tftpBytes     prometheus.Counter       //
	servedBytes   *prometheus.CounterVec   // kind: boot, image
	imageStreams  prometheus.Gauge         //
	imageRefusals *prometheus.CounterVec   // reason
	reports       *prometheus.CounterVec   // outcome
	tokenRejects  prometheus.Counter       //
	stageSeconds  *prometheus.HistogramVec // stage
	storeSeconds  *prometheus.HistogramVec // op
	storeErrors   *prometheus.CounterVec   // op

	stagesMu sync.Mutex
	stages   map[string]stageSince // task id -> its current stage, since when
}

type stageSince struct {
	stage contract.Stage
	since time.Time
}

// maxTrackedStages bounds the stage-duration memory: tasks whose agent vanished mid
// install never post a final stage.
const maxTrackedStages = 4096

func newApplianceMetrics(a *Appliance) *applianceMetrics {
	reg := metrics.NewRegistry()
	m := &applianceMetrics{
		reg:  reg,
		http: metrics.NewHTTP(reg, "lpmos_appliance"),
		dhcp: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lpmos_dhcp_packets_total",
			Help: "DHCP packets received, by message type and outcome (answered, ignored, error)."}, []string{"type", "outcome"}),
		tftpTransfers: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lpmos_tftp_transfers_total",
			Help: "TFTP read requests, by outcome (done, failed, refused over the caps, not_found)."}, []string{"outcome"}),
		tftpBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "lpmos_tftp_sent_bytes_total",
			Help: "Bytes sent over TFTP."}),
		servedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lpmos_http_served_bytes_total",
			Help: "Response body bytes of boot files (kind=boot: iPXE binaries, kernel, initramfs, scripts) and OS images (kind=image)."}, []string{"kind"}),
		imageStreams: prometheus.NewGauge(prometheus.GaugeOpts{Name: "lpmos_image_streams_active",
			Help: "Image downloads in progress."}),
		imageRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lpmos_image_stream_refusals_total",
			Help: "Image streams refused (token: 401/403/409; per_source: 429; full: 503; unavailable: etcd did not answer) or cut mid-stream (too_slow: below --min-stream-rate)."}, []string{"reason"}),
		reports: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lpmos_reports_total",
			Help: "Hardware reports (POST /api/report), by outcome: matched, unmatched, rate_limited, bad_token, invalid, error."}, []string{"outcome"}),
		tokenRejects: prometheus.NewCounter(prometheus.CounterOpts{Name: "lpmos_agent_token_rejected_total",
			Help: "Agent calls refused for a missing or wrong agent token (401)."}),
		stageSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "lpmos_install_stage_duration_seconds",
			Help:    "Time an install spent in a stage: from the first progress post of the stage to the first of the next one.",
			Buckets: []float64{1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600}}, []string{"stage"}),
		storeSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "lpmos_store_request_duration_seconds",
			Help:    "Latency of the etcd calls the regional API and the boot path make, by operation.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}}, []string{"op"}),
		storeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lpmos_store_errors_total",
			Help: "etcd calls that failed (unavailable or internal errors; not found and validation are answers, not errors), by operation."}, []string{"op"}),
		stages: map[string]stageSince{},
	}
	reg.MustRegister(m.dhcp, m.tftpTransfers, m.tftpBytes, m.servedBytes, m.imageStreams, m.imageRefusals, m.reports,
		m.tokenRejects, m.stageSeconds, m.storeSeconds, m.storeErrors, &taskCollector{a: a})
	return m
}

// dhcpObserve is dhcpd.Config.Observe.
func (m *applianceMetrics) dhcpObserve(typ string, outcome dhcpd.Outcome) {
	m.dhcp.WithLabelValues(typ, string(outcome)).Inc()
}

// tftpObserve is tftpd.Config.Observe.
func (m *applianceMetrics) tftpObserve(outcome tftpd.Outcome, n int64) {
	m.tftpTransfers.WithLabelValues(string(outcome)).Inc()
	m.tftpBytes.Add(float64(n))
}

// countBytes counts next's response body bytes as kind; image streams are also
// counted while they run.
func (m *applianceMetrics) countBytes(kind string, next http.Handler) http.Handler {
	c := m.servedBytes.WithLabelValues(kind)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if kind == "image" && r.Method == http.MethodGet {
			m.imageStreams.Inc()
			defer m.imageStreams.Dec()
		}
		next.ServeHTTP(&metrics.Writer{ResponseWriter: w, OnWrite: func(n int64) { c.Add(float64(n)) }}, r)
	})
}

// countReport counts POST /api/report by what it answered.
func (m *applianceMetrics) countReport(f httpjson.HandlerFunc) httpjson.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		err := f(w, r)
		outcome := "matched"
		if err != nil {
			switch code := httpjson.StatusFor(err); {
			case code == http.StatusNotFound:
				outcome = "unmatched"
			case code == http.StatusTooManyRequests:
				outcome = "rate_limited"
			case code == http.StatusUnauthorized:
				outcome = "bad_token"
			case code >= 500:
				outcome = "error"
			default:
				outcome = "invalid"
			}
		}
		m.reports.WithLabelValues(outcome).Inc()
		return err
	}
}

// progress times the stages of a task's install from its accepted progress posts.
func (m *applianceMetrics) progress(taskID string, stage contract.Stage, now time.Time) {
	m.stagesMu.Lock()
	defer m.stagesMu.Unlock()
	cur, ok := m.stages[taskID]
	if ok && cur.stage == stage {
		return
	}
	if ok {
		m.stageSeconds.WithLabelValues(string(cur.stage)).Observe(now.Sub(cur.since).Seconds())
	}
	switch stage {
	case contract.StageCompleted, contract.StageFailed, contract.StageCancelled:
		delete(m.stages, taskID)
		return
	}
	if !ok && len(m.stages) >= maxTrackedStages {
		for id := range m.stages { // forget one: an agent that vanished, most likely
			delete(m.stages, id)
			break
		}
	}
	m.stages[taskID] = stageSince{stage, now}
}

// timeStore observes one store call: its latency and, when it failed for another
// reason than the answer (not found, validation, conflict), an error.
func timeStore[T any](m *applianceMetrics, op string, f func() (T, error)) (T, error) {
	start := time.Now()
	v, err := f()
	m.storeSeconds.WithLabelValues(op).Observe(time.Since(start).Seconds())
	if err != nil && (store.Unavailable(err) || httpjson.StatusFor(err) >= 500) && !errors.Is(err, context.Canceled) {
		m.storeErrors.WithLabelValues(op).Inc()
	}
	return v, err
}

// taskCollector is lpmos_region_tasks{status}: the region's tasks by status, read on
// each scrape from the status index (keys only, one range read).
type taskCollector struct{ a *Appliance }

var (
	taskDesc = prometheus.NewDesc("lpmos_region_tasks", "Tasks of this region by status (read from etcd on scrape).",
		[]string{"status"}, nil)
	scrapeErrDesc = prometheus.NewDesc("lpmos_region_tasks_scrape_error",
		"1 when the last scrape could not read the task counts from etcd.", nil, nil)
)

func (c *taskCollector) Describe(ch chan<- *prometheus.Desc) { ch <- taskDesc; ch <- scrapeErrDesc }

func (c *taskCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	reg, err := timeStore(c.a.metrics, "region_counts", func() (store.Region, error) { return c.a.store.GetRegion(ctx, c.a.cfg.Label) })
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		ch <- prometheus.MustNewConstMetric(scrapeErrDesc, prometheus.GaugeValue, 1)
		return
	}
	ch <- prometheus.MustNewConstMetric(scrapeErrDesc, prometheus.GaugeValue, 0)
	for _, st := range store.Statuses {
		ch <- prometheus.MustNewConstMetric(taskDesc, prometheus.GaugeValue, float64(reg.Counts[st]), string(st))
	}
}
