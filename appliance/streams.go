package appliance

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/httpjson"
)

// Image streams (GET /images/...) are what a hostile host on the boot network would
// hold to starve real agents, so each one passes three gates before a byte is sent:
//
//  1. the agent token of an approved or installing task whose plan names this image
//     (?task=<id> in the URL the approval hands out, the token as a Bearer header);
//     boot files stay anonymous: firmware cannot authenticate;
//  2. at most --max-streams-per-source from one address (429 + Retry-After), then at
//     most --max-streams in all (503 + Retry-After); the agent's writer waits the
//     Retry-After without spending a retry;
//  3. while it runs, a floor under the client's read rate (--min-stream-rate with
//     --min-stream-window of slack, see rateFloor): a client reading slower is cut and
//     its slot freed. The agent resumes where it was cut (Range). The defaults, 64 KiB/s
//     and 30 s: the lab's TCG agents read at 39-60 MiB/s and install at 2.6 MiB/s or
//     more; 30 s is the agent's own stall timeout (docs/contract.md, Image streams).
func (a *Appliance) imageStreams(next http.Handler) http.Handler {
	gate := &streamGate{max: a.cfg.MaxStreams, perSource: a.cfg.MaxStreamsPerSource, bySource: map[string]int{}}
	return httpjson.Handle(a.log, func(w http.ResponseWriter, r *http.Request) error {
		if err := a.authorizeImage(w, r); err != nil {
			reason := "token"
			if httpjson.StatusFor(err) == http.StatusServiceUnavailable {
				reason = "unavailable"
				w.Header().Set("Retry-After", strconv.Itoa(httpjson.RetryAfterUnavailable))
			}
			a.metrics.imageRefusals.WithLabelValues(reason).Inc()
			return err
		}
		src := sourceOf(r)
		release, reason, refused := gate.admit(src)
		if refused != nil {
			a.metrics.imageRefusals.WithLabelValues(reason).Inc()
			a.logStream(reason, "image stream refused: "+refused.Message, "source", src, "path", r.URL.Path)
			w.Header().Set("Retry-After", strconv.Itoa(a.cfg.RetryAfter))
			refused.Extra = map[string]any{"retry_after": a.cfg.RetryAfter}
			return refused
		}
		defer release()
		fw := newRateFloor(w, a.cfg.MinStreamRate, a.cfg.MinStreamWindow)
		start := time.Now()
		next.ServeHTTP(fw, r)
		fw.finish()
		secs := time.Since(start).Seconds()
		if fw.cut {
			a.metrics.imageRefusals.WithLabelValues("too_slow").Inc()
			a.logStream("too_slow", fmt.Sprintf("image stream cut: the client took less than %d bytes/s for %s (--min-stream-rate, --min-stream-window)", a.cfg.MinStreamRate, a.cfg.MinStreamWindow),
				"source", src, "path", r.URL.Path, "bytes", fw.sent, "seconds", round1(secs))
			return nil
		}
		switch {
		case r.Method != http.MethodGet:
		case r.Context().Err() != nil:
			a.log.Info("image stream ended by the client", "source", src, "path", r.URL.Path, "bytes", fw.sent, "seconds", round1(secs))
		default:
			a.log.Info("image stream done", "source", src, "path", r.URL.Path, "bytes", fw.sent, "seconds", round1(secs), "kib_per_s", int64(float64(fw.sent)/1024/max(secs, 1e-3)))
		}
		return nil
	})
}

// logStream logs a refused or cut stream, rate limited per reason: a flood must not
// flood the log, nor hide the other reasons.
func (a *Appliance) logStream(reason, msg string, args ...any) {
	if a.streamLog.Allow(reason, time.Now()) {
		a.log.Warn(msg, args...)
	}
}

// authorizeImage lets through only the agent of an approved or installing task
// fetching its plan's image. A missing token is a plain 401 (anyone may knock); a
// wrong or foreign one is rejected like on the API (logged, audited).
func (a *Appliance) authorizeImage(w http.ResponseWriter, r *http.Request) error {
	taskID, tok := r.URL.Query().Get("task"), bearer(r)
	if tok == "" || taskID == "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="lpmos-agent"`)
		return httpjson.Errorf(http.StatusUnauthorized, "agent token required: images are served only to the agent of an approved task (Authorization: Bearer <agent token>, ?task=<task id>, as in the approval's image url)")
	}
	ctx, cancel := context.WithTimeout(r.Context(), httpjson.RequestDeadline)
	defer cancel()
	name := strings.TrimPrefix(r.URL.Path, "/images/")
	t, err := timeStore(a.metrics, "image_task", func() (store.Task, error) { return a.store.GetTask(ctx, taskID) })
	switch {
	case errors.Is(err, store.ErrNotFound):
		return a.reject(w, r, taskID, "", "no such task in this region")
	case store.Unavailable(err) && a.imageGrants.allows(taskID, tok, name, time.Now()):
		// The store is away (etcd lost quorum, a WAN cut): an agent this appliance
		// admitted moments ago may go on resuming the same image.
		return nil
	case err != nil:
		return err
	}
	if aerr := authorize(&t, tok); aerr != nil {
		return a.reject(w, r, taskID, t.TargetMAC, aerr.(*errBadToken).reason)
	}
	if !t.Status.Approved() {
		return httpjson.Errorf(http.StatusForbidden, "task %s is %s: its image is served only while it is approved or installing", taskID, t.Status)
	}
	e, why := a.planImage(t.Plan)
	if why != "" {
		return httpjson.Errorf(http.StatusConflict, "%s", why)
	}
	if name != e.File {
		return httpjson.Errorf(http.StatusForbidden, "task %s's plan names image %s, not %s", taskID, e.File, name)
	}
	a.imageGrants.grant(taskID, tok, name, time.Now())
	return nil
}

// imageGrantTTL is how long an admitted agent may resume its image without the store:
// an outage longer than this stops its downloads until the store answers (the agent
// waits). A cancel made meanwhile cannot be seen anyway while the store is away.
const imageGrantTTL = 30 * time.Minute

// imageGrants remembers the agents admitted to their plan's image (task, token hash,
// file), so that resuming streams survive a store outage. Every admission with the
// store up checks the task afresh and renews its grant.
type imageGrants struct {
	mu sync.Mutex
	m  map[string]imageGrant // by task id
}

type imageGrant struct {
	tokenSum [32]byte
	file     string
	until    time.Time
}

func (g *imageGrants) grant(taskID, tok, file string, now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.m == nil {
		g.m = map[string]imageGrant{}
	}
	for id, gr := range g.m { // bounded by the tasks installing now
		if now.After(gr.until) {
			delete(g.m, id)
		}
	}
	g.m[taskID] = imageGrant{tokenSum: sha256.Sum256([]byte(tok)), file: file, until: now.Add(imageGrantTTL)}
}

func (g *imageGrants) allows(taskID, tok, file string, now time.Time) bool {
	g.mu.Lock()
	gr, ok := g.m[taskID]
	g.mu.Unlock()
	sum := sha256.Sum256([]byte(tok))
	return ok && now.Before(gr.until) && gr.file == file && subtle.ConstantTimeCompare(gr.tokenSum[:], sum[:]) == 1
}

// sourceOf is the request's remote address without its port.
func sourceOf(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// streamGate counts running streams, in all and per source address.
type streamGate struct {
	max, perSource int // 0: no cap

	mu       sync.Mutex
	active   int
	bySource map[string]int
}

// admit takes a slot for src, or says which cap refused it: 429 for the source's cap,
// 503 for the appliance's, with its metric reason.
func (g *streamGate) admit(src string) (release func(), reason string, refused *httpjson.Error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case g.perSource > 0 && g.bySource[src] >= g.perSource:
		return nil, "per_source", &httpjson.Error{Code: http.StatusTooManyRequests,
			Message: fmt.Sprintf("%d image streams from %s already (--max-streams-per-source): retry later", g.perSource, src)}
	case g.max > 0 && g.active >= g.max:
		return nil, "full", &httpjson.Error{Code: http.StatusServiceUnavailable,
			Message: fmt.Sprintf("image streams full (%d at once, --max-streams): retry later", g.max)}
	}
	g.active++
	g.bySource[src]++
	return sync.OnceFunc(func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		g.active--
		if g.bySource[src]--; g.bySource[src] <= 0 {
			delete(g.bySource, src)
		}
	}), "", nil
}

// rateFloor is a ResponseWriter that cuts a client reading slower than rate bytes per
// second. It holds a credit of time, at most window: each write spends the time it
// blocks on the client and earns len/rate back, and runs under a write deadline at
// the end of the credit. A client taking rate or more never runs out; one taking less
// is cut after window/(1 - its rate/rate) (a stalled one after window), its write
// failing with os.ErrDeadlineExceeded, which ends the handler and frees the slot.
// Time we spend ourselves (reading the file, --image-rate pacing) costs nothing.
//
// Writes go in chunks of at most a quarter of rate*window, so a chunk never needs
// more credit than a client at the floor earns; sendfile(2) (io.ReaderFrom) is kept,
// one chunk per call.
type rateFloor struct {
	http.ResponseWriter
	rc     *http.ResponseController
	rate   float64 // bytes per second; 0: no floor, a plain pass-through
	window time.Duration
	credit time.Duration
	chunk  int64
	sent   int64
	cut    bool
}

func newRateFloor(w http.ResponseWriter, rate int64, window time.Duration) *rateFloor {
	f := &rateFloor{ResponseWriter: w, rc: http.NewResponseController(w), rate: float64(rate), window: window, credit: window}
	if rate > 0 {
		f.chunk = min(256<<10, max(4<<10, int64(float64(rate)*window.Seconds())/4))
	}
	return f
}

// timed runs one write under the floor's deadline and settles the credit.
func (f *rateFloor) timed(write func() (int64, error)) (int64, error) {
	if f.rate == 0 {
		m, err := write()
		f.sent += m
		return m, err
	}
	start := time.Now()
	if err := f.rc.SetWriteDeadline(start.Add(f.credit)); err != nil {
		f.rate = 0 // a writer without deadlines (a test recorder): no floor
	}
	m, err := write()
	f.sent += m
	f.credit = min(f.window, f.credit-time.Since(start)+time.Duration(float64(m)/f.rate*float64(time.Second)))
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		f.cut = true
	}
	return m, err
}

func (f *rateFloor) Write(b []byte) (int, error) {
	written := 0
	for len(b) > 0 {
		n := len(b)
		if f.chunk > 0 {
			n = int(min(int64(n), f.chunk))
		}
		m, err := f.timed(func() (int64, error) { m, err := f.ResponseWriter.Write(b[:n]); return int64(m), err })
		written += int(m)
		if err != nil {
			return written, err
		}
		b = b[n:]
	}
	return written, nil
}

// ReadFrom keeps sendfile(2) for http.ServeContent, which copies through an
// io.LimitedReader over the file: each chunk is again one LimitedReader over the file
// itself, the shape sendfile needs.
func (f *rateFloor) ReadFrom(src io.Reader) (int64, error) {
	rf, ok := f.ResponseWriter.(io.ReaderFrom)
	if !ok {
		return io.Copy(writerOnly{f}, src)
	}
	if f.chunk == 0 {
		return f.timed(func() (int64, error) { return rf.ReadFrom(src) })
	}
	var total int64
	for {
		inner, left := src, f.chunk
		outer, limited := src.(*io.LimitedReader)
		if limited {
			inner, left = outer.R, min(outer.N, f.chunk)
			if left <= 0 {
				return total, nil
			}
		}
		n, err := f.timed(func() (int64, error) { return rf.ReadFrom(&io.LimitedReader{R: inner, N: left}) })
		if limited {
			outer.N -= n
		}
		total += n
		if err != nil || n < left { // an error, or the source ended
			return total, err
		}
	}
}

type writerOnly struct{ io.Writer }

// finish clears the deadline after a stream that was not cut (the connection may
// serve further requests); a cut one keeps it, so the connection closes.
func (f *rateFloor) finish() {
	if f.rate > 0 && !f.cut {
		f.rc.SetWriteDeadline(time.Time{})
	}
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (f *rateFloor) Unwrap() http.ResponseWriter { return f.ResponseWriter }

func round1(s float64) float64 { return float64(int64(s*10+0.5)) / 10 }
