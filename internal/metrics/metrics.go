// Package metrics holds what the appliance and the control plane share for their
// Prometheus metrics: a registry per process (never the global default one: tests start
// several servers in one process), its /metrics handler, and HTTP request counting by
// route pattern and status code.
package metrics

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewRegistry is a fresh registry with the Go runtime and process collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Handler serves reg in the Prometheus text (or protobuf) exposition format.
func Handler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg, ErrorHandling: promhttp.ContinueOnError})
}

// HTTP counts requests by route (the ServeMux pattern that serves them, "unmatched"
// when none does: never the raw path, whose values are unbounded) and status code.
type HTTP struct {
	Requests *prometheus.CounterVec
	// Done, if set, is told every finished request with its pattern and code (the
	// control plane counts logins from it).
	Done func(route string, code int)
}

// NewHTTP registers {prefix}_http_requests_total{route,code} on reg.
func NewHTTP(reg prometheus.Registerer, prefix string) *HTTP {
	h := &HTTP{Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: prefix + "_http_requests_total",
		Help: "HTTP requests answered, by route pattern and status code.",
	}, []string{"route", "code"})}
	reg.MustRegister(h.Requests)
	return h
}

// Wrap counts the requests next answers; mux names their route (next is mux, or a
// middleware in front of it).
func (h *HTTP) Wrap(mux *http.ServeMux, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, route := mux.Handler(r)
		if route == "" {
			route = "unmatched"
		}
		sw := &Writer{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		code := sw.Code()
		h.Requests.WithLabelValues(route, strconv.Itoa(code)).Inc()
		if h.Done != nil {
			h.Done(route, code)
		}
	})
}

// Writer is a ResponseWriter that remembers the status code and counts the body
// bytes, calling OnWrite (if set) with each write's size. It keeps the underlying
// writer's sendfile (io.ReaderFrom), Flush and Hijack (WebSocket).
type Writer struct {
	http.ResponseWriter
	OnWrite func(n int64)
	code    int
	Bytes   int64
}

// Code is the status sent (200 when the handler wrote without choosing one).
func (w *Writer) Code() int {
	if w.code == 0 {
		return http.StatusOK
	}
	return w.code
}

func (w *Writer) WriteHeader(code int) {
	if w.code == 0 && code >= 200 || code == http.StatusSwitchingProtocols {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *Writer) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.add(int64(n))
	return n, err
}

func (w *Writer) add(n int64) {
	w.Bytes += n
	if w.OnWrite != nil && n > 0 {
		w.OnWrite(n)
	}
}

// ReadFrom keeps sendfile(2) for http.ServeContent.
func (w *Writer) ReadFrom(r io.Reader) (int64, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		n, err := rf.ReadFrom(r)
		w.add(n)
		return n, err
	}
	return io.Copy(writerOnly{w}, r)
}

type writerOnly struct{ io.Writer }

func (w *Writer) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *Writer) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if h, ok := w.ResponseWriter.(http.Hijacker); ok {
		return h.Hijack()
	}
	return nil, nil, errors.New("metrics: the response writer cannot be hijacked")
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *Writer) Unwrap() http.ResponseWriter { return w.ResponseWriter }
