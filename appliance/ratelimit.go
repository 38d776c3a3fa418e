package appliance

import (
	"net/http"
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
	src := sourceOf(r)
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
