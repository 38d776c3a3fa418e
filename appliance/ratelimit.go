package appliance

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"lpmos.dev/lpmos/internal/ratelimit"
	"lpmos.dev/lpmos/store/httpjson"
)

// POST /api/report stays open (an unknown machine announces itself with it), so it is
// rate-limited instead: per source address and per MAC. A real agent reports once per
// boot and retries every 10 s at most; a boot storm is many sources, not many reports
// from one. Over a limit: 429 with retry_after.
const (
	reportsPerSourceEvery = 100 * time.Millisecond // 10/s sustained from one address
	reportsPerMACEvery    = 2 * time.Second
)

// reportLimiter holds the buckets; a zero burst is no limit.
type reportLimiter struct {
	source, mac *ratelimit.Keyed
}

func newReportLimiter(perSource, perMAC int) *reportLimiter {
	return &reportLimiter{source: ratelimit.NewKeyed(perSource, reportsPerSourceEvery), mac: ratelimit.NewKeyed(perMAC, reportsPerMACEvery)}
}

// allowSource and allowMAC say whether a report from r (for mac) may go on; when not,
// a 429 saying which limit and when to try again.
func (l *reportLimiter) allowSource(r *http.Request, now time.Time) error {
	src, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		src = r.RemoteAddr
	}
	if !l.source.Allow(src, now) {
		return tooMany("too many reports from "+src, 1)
	}
	return nil
}

func (l *reportLimiter) allowMAC(mac string, now time.Time) error {
	if !l.mac.Allow(mac, now) {
		return tooMany("too many reports for MAC "+mac, int(reportsPerMACEvery/time.Second))
	}
	return nil
}

func tooMany(msg string, retryAfter int) error {
	return &httpjson.Error{Code: http.StatusTooManyRequests, Message: msg + "; try again later", Extra: map[string]any{"retry_after": retryAfter}}
}

// streamCap admits at most --max-streams image streams at once (0: no cap); the rest
// get 503 with Retry-After (--retry-after), and the agent's writer waits that long without spending a
// retry (images.busyError). A rack installing at once shares the uplink instead of
// every stream crawling.
func (a *Appliance) streamCap(next http.Handler) http.Handler {
	if a.cfg.MaxStreams <= 0 {
		return next
	}
	slots := make(chan struct{}, a.cfg.MaxStreams)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case slots <- struct{}{}:
			defer func() { <-slots }()
			next.ServeHTTP(w, r)
		default:
			w.Header().Set("Retry-After", strconv.Itoa(a.cfg.RetryAfter))
			http.Error(w, fmt.Sprintf("image streams full (%d at once): retry in %d s", a.cfg.MaxStreams, a.cfg.RetryAfter), http.StatusServiceUnavailable)
		}
	})
}
