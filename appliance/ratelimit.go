package appliance

import (
	"net"
	"net/http"
	"sync"
	"time"

	"lpmos.dev/lpmos/store/httpjson"
)

// POST /api/report stays open (an unknown machine announces itself with it), so it is
// rate-limited instead: per source address and per MAC, each a token bucket. A real
// agent reports once per boot and retries every 10 s at most; a boot storm is many
// sources, not many reports from one. Over a limit: 429 with retry_after.
const (
	reportsPerSourceEvery = 100 * time.Millisecond // 10/s sustained from one address
	reportsPerMACEvery    = 2 * time.Second
	// rateKeysMax bounds the limiter's memory: a flood of invented MACs resets the
	// per-MAC table rather than growing it.
	rateKeysMax = 100_000
)

// reportLimiter holds the buckets.
type reportLimiter struct {
	perSource, perMAC int // bursts; 0: no limit
	mu                sync.Mutex
	source            map[string]*bucket
	mac               map[string]*bucket
}

func newReportLimiter(perSource, perMAC int) *reportLimiter {
	return &reportLimiter{perSource: perSource, perMAC: perMAC, source: map[string]*bucket{}, mac: map[string]*bucket{}}
}

// allowSource and allowMAC say whether a report from r (for mac) may go on; when not,
// a 429 saying which limit and when to try again.
func (l *reportLimiter) allowSource(r *http.Request, now time.Time) error {
	if l.perSource <= 0 {
		return nil
	}
	src, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		src = r.RemoteAddr
	}
	l.mu.Lock()
	b := take(l.source, src, l.perSource, reportsPerSourceEvery)
	l.mu.Unlock()
	if !b.allow(now) {
		return tooMany("too many reports from "+src, 1)
	}
	return nil
}

func (l *reportLimiter) allowMAC(mac string, now time.Time) error {
	if l.perMAC <= 0 {
		return nil
	}
	l.mu.Lock()
	b := take(l.mac, mac, l.perMAC, reportsPerMACEvery)
	l.mu.Unlock()
	if !b.allow(now) {
		return tooMany("too many reports for MAC "+mac, int(reportsPerMACEvery/time.Second))
	}
	return nil
}

func tooMany(msg string, retryAfter int) error {
	return &httpjson.Error{Code: http.StatusTooManyRequests, Message: msg + "; try again later", Extra: map[string]any{"retry_after": retryAfter}}
}

func take(m map[string]*bucket, key string, burst int, every time.Duration) *bucket {
	b := m[key]
	if b == nil {
		if len(m) >= rateKeysMax {
			clear(m)
		}
		b = newBucket(burst, every)
		m[key] = b
	}
	return b
}
