package images

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// Retry bounds how hard the writer tries to resume a dropped download.
type Retry struct {
	// Attempts is how many times in a row a request may fail without the
	// download moving forward; progress resets the count, so a long install
	// survives several unrelated drops. Default 5.
	Attempts int
	// Backoff is the wait before retry n (1-based). Default: 1s doubling to 30s.
	// Tests pass a func returning 0.
	Backoff func(n int) time.Duration
	// Stall aborts and resumes a request that delivers no byte for this long
	// (a connection can hang without closing). Default 30s.
	Stall time.Duration
}

func (r Retry) withDefaults() Retry {
	if r.Attempts <= 0 {
		r.Attempts = 5
	}
	if r.Backoff == nil {
		r.Backoff = func(n int) time.Duration {
			d := time.Second << min(n-1, 5)
			return min(d, 30*time.Second)
		}
	}
	if r.Stall <= 0 {
		r.Stall = 30 * time.Second
	}
	return r
}

type downloadError struct{ err error }

func (e *downloadError) Error() string { return e.err.Error() }
func (e *downloadError) Unwrap() error { return e.err }

// fetcher is an io.Reader over the compressed bytes at url that survives
// dropped connections: on a read error it re-requests the rest with
// "Range: bytes=N-" where N counts the bytes already handed to the reader
// above it. Resuming below the decompressor is what makes this correct for
// every format: the decoder keeps its state in memory and simply sees one
// uninterrupted stream, so nothing is decoded, hashed or written twice.
// If-Range pins the resumed request to the same file version (ETag or
// Last-Modified); if the file changed, the server answers 200 and the write
// fails instead of splicing two images together.
type fetcher struct {
	ctx    context.Context
	client *http.Client
	url    string
	header http.Header
	retry  Retry
	log    *slog.Logger

	body       io.ReadCloser
	cancel     context.CancelFunc
	stall      *time.Timer
	validator  string        // ETag or Last-Modified of the first response
	total      int64         // compressed length, -1 if unknown
	failures   int           // consecutive failed attempts without progress
	busyWaited time.Duration // waited in all behind a full server (busyError)

	offset  atomic.Int64 // compressed bytes delivered so far
	retries atomic.Int64 // resumes performed
	err     error        // terminal error, kept so callers can see past decoders
	eof     bool         // the whole file was delivered
}

func newFetcher(ctx context.Context, client *http.Client, url string, header http.Header, retry Retry, log *slog.Logger) *fetcher {
	return &fetcher{ctx: ctx, client: client, url: url, header: header, retry: retry.withDefaults(), log: log, total: -1}
}

func (f *fetcher) Read(p []byte) (int, error) {
	if f.err != nil {
		return 0, f.err
	}
	if f.eof {
		return 0, io.EOF
	}
	for {
		if f.body == nil {
			if err := f.open(); err != nil {
				if f.ctx.Err() != nil {
					f.err = f.ctx.Err()
					return 0, f.err
				}
				var busy *busyError
				if errors.As(err, &busy) && f.waitBusy(busy) {
					continue // the server said when: no attempt spent
				}
				if !retryable(err) || !f.backoff(err) {
					f.err = &downloadError{err}
					return 0, f.err
				}
				continue
			}
		}
		n, err := f.body.Read(p)
		if n > 0 {
			f.offset.Add(int64(n))
			f.failures = 0
			f.stall.Reset(f.retry.Stall)
		}
		if err == nil {
			return n, nil
		}
		f.closeBody()
		if err == io.EOF && (f.total < 0 || f.offset.Load() >= f.total) {
			f.eof = true
			return n, io.EOF
		}
		if f.ctx.Err() != nil {
			f.err = f.ctx.Err()
			return n, f.err
		}
		if err == io.EOF {
			err = fmt.Errorf("connection closed at byte %d of %d", f.offset.Load(), f.total)
		}
		if !f.backoff(err) {
			f.err = &downloadError{fmt.Errorf("%w: %v", ErrDownload, err)}
			return n, f.err
		}
		if n > 0 {
			return n, nil
		}
	}
}

// backoff counts a failed attempt and waits before the next one. It reports
// false when the attempts are used up or the context ends.
func (f *fetcher) backoff(err error) bool {
	f.failures++
	if f.failures > f.retry.Attempts {
		return false
	}
	f.retries.Add(1)
	d := f.retry.Backoff(f.failures)
	f.log.Warn("image download interrupted, resuming", "url", f.url, "offset", f.offset.Load(), "attempt", f.failures, "wait", d, "err", err)
	if d <= 0 {
		return f.ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-f.ctx.Done():
		return false
	}
}

func (f *fetcher) open() error {
	ctx, cancel := context.WithCancel(f.ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.url, nil)
	if err != nil {
		cancel()
		return fmt.Errorf("%w: %v", ErrInvalidSource, err)
	}
	for k, v := range f.header {
		req.Header[k] = v
	}
	off := f.offset.Load()
	if off > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(off, 10)+"-")
		if f.validator != "" {
			req.Header.Set("If-Range", f.validator)
		}
	}
	// Decoders expect the bytes as stored, never a transport-decoded body.
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := f.client.Do(req)
	if err != nil {
		cancel()
		return fmt.Errorf("%w: GET %s: %v", ErrDownload, f.url, err)
	}
	switch {
	case off == 0 && resp.StatusCode == http.StatusOK:
		f.total = resp.ContentLength
		f.validator = resp.Header.Get("ETag")
		if f.validator == "" {
			f.validator = resp.Header.Get("Last-Modified")
		}
	case off > 0 && resp.StatusCode == http.StatusPartialContent:
		if start, ok := rangeStart(resp.Header.Get("Content-Range")); !ok || start != off {
			resp.Body.Close()
			cancel()
			return &permanent{fmt.Errorf("%w: server resumed at %q, asked for byte %d", ErrDownload, resp.Header.Get("Content-Range"), off)}
		}
	case off > 0 && resp.StatusCode == http.StatusOK:
		resp.Body.Close()
		cancel()
		// With a validator this means the file changed; without one the server
		// ignores Range. Either way the bytes would not continue our stream.
		return &permanent{fmt.Errorf("%w: server did not resume at byte %d (status 200: image changed or no Range support)", ErrDownload, off)}
	case resp.StatusCode == http.StatusNotFound:
		resp.Body.Close()
		cancel()
		return &permanent{fmt.Errorf("%w: GET %s: %s", ErrNotFound, f.url, resp.Status)}
	default:
		resp.Body.Close()
		cancel()
		err := fmt.Errorf("%w: GET %s: %s", ErrDownload, f.url, resp.Status)
		if secs, perr := strconv.Atoi(resp.Header.Get("Retry-After")); perr == nil && secs > 0 &&
			(resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusTooManyRequests) {
			return &busyError{err: err, wait: time.Duration(secs) * time.Second}
		}
		if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests {
			return err
		}
		return &permanent{err}
	}
	f.body, f.cancel = resp.Body, cancel
	// A hung connection never returns an error; cancelling it turns the hang
	// into a read error that the retry loop handles.
	f.stall = time.AfterFunc(f.retry.Stall, cancel)
	return nil
}

func (f *fetcher) closeBody() {
	if f.body == nil {
		return
	}
	f.stall.Stop()
	f.body.Close()
	f.cancel()
	f.body = nil
}

// Close releases the current connection.
func (f *fetcher) Close() { f.closeBody() }

// busyError is a server that is full (its stream cap) and said when to come back.
type busyError struct {
	err  error
	wait time.Duration
}

func (e *busyError) Error() string { return e.err.Error() }
func (e *busyError) Unwrap() error { return e.err }

// maxBusyWait bounds how long a writer queues behind a full server in all: an
// appliance streaming to a rack at its cap serves everyone within minutes.
const maxBusyWait = time.Hour

// waitBusy waits what a full server asked (at most a minute at a time, maxBusyWait in
// all) without spending a retry attempt; false when the wait is used up or ctx ends.
func (f *fetcher) waitBusy(b *busyError) bool {
	d := min(b.wait, time.Minute)
	if f.busyWaited+d > maxBusyWait {
		return false
	}
	f.busyWaited += d
	f.log.Info("image server busy, waiting as asked", "url", f.url, "wait", d, "waited", f.busyWaited)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-f.ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// permanent marks errors that retrying cannot fix.
type permanent struct{ err error }

func (e *permanent) Error() string { return e.err.Error() }
func (e *permanent) Unwrap() error { return e.err }

func retryable(err error) bool {
	var p *permanent
	return !errors.As(err, &p)
}

// rangeStart parses the first byte position of "bytes START-END/TOTAL".
func rangeStart(cr string) (int64, bool) {
	var start, end int64
	var total string
	if _, err := fmt.Sscanf(cr, "bytes %d-%d/%s", &start, &end, &total); err != nil {
		return 0, false
	}
	return start, true
}
