package control

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"lpmos.dev/lpmos/federation"
	"lpmos.dev/lpmos/internal/metrics"
	"lpmos.dev/lpmos/store"
)

// controlMetrics are the control plane's Prometheus metrics, on a registry of its own
// (created at start), served at GET /metrics. /metrics is behind guard like every
// route: a GET, so the viewer role suffices; Prometheus sends a viewer's API token
// (authorization: {type: Bearer, credentials: ...}). Names and labels:
// docs/contract.md, "Metrics".
type controlMetrics struct {
	reg         *prometheus.Registry
	http        *metrics.HTTP
	logins      *prometheus.CounterVec // result
	unavailable prometheus.Counter
	catchUps    *prometheus.HistogramVec // region
}

// catchUp records how long a region cluster's mirror took to catch up after its link
// came back.
func (m *controlMetrics) catchUp(region string, d time.Duration) {
	m.catchUps.WithLabelValues(region).Observe(d.Seconds())
}

func newControlMetrics(s *Server) *controlMetrics {
	reg := metrics.NewRegistry()
	m := &controlMetrics{
		reg:  reg,
		http: metrics.NewHTTP(reg, "lpmos_control"),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lpmos_control_logins_total",
			Help: "Web logins (POST /login), by result: success, failure (wrong name or password), rate_limited, error."}, []string{"result"}),
		unavailable: prometheus.NewCounter(prometheus.CounterOpts{Name: "lpmos_control_store_unavailable_total",
			Help: "Requests answered 503 because etcd did not answer."}),
		catchUps: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "lpmos_control_region_catchup_seconds",
			Help:    "From a region cluster answering again to its mirror reflecting the cluster's revision of that moment.",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}}, []string{"region"}),
	}
	// Logins are counted from what POST /login answered: a redirect is a session, 401
	// wrong credentials, 429 the login rate limit.
	m.http.Done = func(route string, code int) {
		if code == http.StatusServiceUnavailable {
			m.unavailable.Inc()
		}
		if route != "POST /login" {
			return
		}
		result := "error"
		switch {
		case code == http.StatusSeeOther || code == http.StatusFound:
			result = "success"
		case code == http.StatusUnauthorized:
			result = "failure"
		case code == http.StatusTooManyRequests:
			result = "rate_limited"
		}
		m.logins.WithLabelValues(result).Inc()
	}
	for _, r := range []string{"success", "failure", "rate_limited"} {
		m.logins.WithLabelValues(r) // shown at 0 from the start
	}
	reg.MustRegister(m.logins, m.unavailable, m.catchUps, &regionCollector{fleet: s.fleet})
	return m
}

// regionCollector reads every region's counts on scrape (store.ListRegions: one
// transaction, keys only for the task and unmatched counts).
type regionCollector struct{ fleet *federation.Fleet }

var (
	regionTasksDesc = prometheus.NewDesc("lpmos_control_tasks", "Tasks by region and status (read from etcd on scrape).",
		[]string{"region", "status"}, nil)
	regionOnlineDesc = prometheus.NewDesc("lpmos_control_region_online", "1 while the region's appliance heartbeats.",
		[]string{"region"}, nil)
	regionUnmatchedDesc = prometheus.NewDesc("lpmos_control_unmatched_reports", "Unmatched hardware reports waiting, by region.",
		[]string{"region"}, nil)
	regionScrapeErrDesc = prometheus.NewDesc("lpmos_control_regions_scrape_error",
		"1 when the last scrape could not read the regions from etcd.", nil, nil)
	regionReachableDesc = prometheus.NewDesc("lpmos_control_region_reachable",
		"1 while the etcd holding the region answers (its own cluster, or the control plane's).", []string{"region"}, nil)
	mirrorBytesDesc = prometheus.NewDesc("lpmos_control_mirror_bytes",
		"Approximate bytes the control plane holds in memory for a region on its own cluster.", []string{"region"}, nil)
)

func (c *regionCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- regionTasksDesc
	ch <- regionOnlineDesc
	ch <- regionUnmatchedDesc
	ch <- regionScrapeErrDesc
	ch <- regionReachableDesc
	ch <- mirrorBytesDesc
}

func (c *regionCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for region, n := range c.fleet.MirrorBytes() {
		ch <- prometheus.MustNewConstMetric(mirrorBytesDesc, prometheus.GaugeValue, float64(n), region)
	}
	regions, err := c.fleet.ListRegions(ctx)
	if err != nil {
		ch <- prometheus.MustNewConstMetric(regionScrapeErrDesc, prometheus.GaugeValue, 1)
		return
	}
	ch <- prometheus.MustNewConstMetric(regionScrapeErrDesc, prometheus.GaugeValue, 0)
	for _, r := range regions {
		for _, st := range store.Statuses {
			ch <- prometheus.MustNewConstMetric(regionTasksDesc, prometheus.GaugeValue, float64(r.Counts[st]), r.Name, string(st))
		}
		online := 0.0
		if r.Online {
			online = 1
		}
		ch <- prometheus.MustNewConstMetric(regionOnlineDesc, prometheus.GaugeValue, online, r.Name)
		ch <- prometheus.MustNewConstMetric(regionUnmatchedDesc, prometheus.GaugeValue, float64(r.Unmatched), r.Name)
		reachable := 0.0
		if r.Reachable {
			reachable = 1
		}
		ch <- prometheus.MustNewConstMetric(regionReachableDesc, prometheus.GaugeValue, reachable, r.Name)
	}
}
