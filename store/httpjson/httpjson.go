// Package httpjson is the JSON edge shared by the control plane's REST API and the
// appliance's regional API: bounded strict decoding, and store errors mapped to HTTP
// status codes in exactly one place. Handlers return errors; Handle renders them.
package httpjson

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"lpmos.dev/lpmos/store"
)

// MaxBody is the largest request body accepted (hardware reports are a few KiB).
const MaxBody = 1 << 20

// Error is an HTTP error with a message safe to show the client.
type Error struct {
	Code    int
	Message string
	// Extra fields merged into the JSON body (e.g. retry_after).
	Extra map[string]any
}

func (e *Error) Error() string { return e.Message }

// Errorf builds an *Error.
func Errorf(code int, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Decode reads one JSON object into v: at most MaxBody bytes, no unknown fields, no
// trailing data. Errors are *Error with a 4xx code.
func Decode(w http.ResponseWriter, r *http.Request, v any) error {
	body := http.MaxBytesReader(w, r.Body, MaxBody)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &tooBig):
			return Errorf(http.StatusRequestEntityTooLarge, "request body is larger than %d bytes", MaxBody)
		case errors.Is(err, io.EOF):
			return Errorf(http.StatusBadRequest, "request body is empty: a JSON object is required")
		case errors.As(err, &syn), errors.Is(err, io.ErrUnexpectedEOF):
			return Errorf(http.StatusBadRequest, "request body is not valid JSON: %v", err)
		case errors.As(err, &typ):
			return Errorf(http.StatusBadRequest, "field %q has the wrong type: %v", typ.Field, err)
		default:
			// Unknown fields and other decoder complaints.
			return Errorf(http.StatusBadRequest, "bad request body: %v", err)
		}
	}
	if _, err := dec.Token(); err != io.EOF {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return Errorf(http.StatusRequestEntityTooLarge, "request body is larger than %d bytes", MaxBody)
		}
		return Errorf(http.StatusBadRequest, "request body has data after the JSON object")
	}
	return nil
}

// Write sends v as JSON with the status code.
func Write(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// RetryAfterUnavailable is the retry_after (seconds) of a 503 for an unreachable store.
const RetryAfterUnavailable = 5

// RequestDeadline bounds a request's store calls: an unreachable etcd answers 503 within
// it instead of holding the client (and a connection) for as long as etcd retries.
const RequestDeadline = 2 * time.Second

// StatusFor maps an error to its HTTP status.
func StatusFor(err error) int {
	var he *Error
	switch {
	case errors.As(err, &he):
		return he.Code
	case errors.Is(err, store.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, store.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, store.ErrConflict):
		return http.StatusConflict
	case store.Unavailable(err), store.NoSpace(err):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// WriteError renders err as {status:"error", message}. Internal errors are logged and
// the client gets a generic message, never etcd's internals.
func WriteError(w http.ResponseWriter, log *slog.Logger, r *http.Request, err error) {
	code := StatusFor(err)
	body := map[string]any{"status": "error"}
	if store.NoSpace(err) {
		log.Error("etcd is out of space (NOSPACE alarm): writes refused", "method", r.Method, "path", r.URL.Path)
		Write(w, http.StatusServiceUnavailable, map[string]any{"status": "error", "retry_after": RetryAfterUnavailable,
			"message": "store full: etcd raised its NOSPACE alarm and refuses writes (operators: compact, defragment, then etcdctl alarm disarm)"})
		return
	}
	if code == http.StatusServiceUnavailable && !errors.As(err, new(*Error)) {
		// etcd is unreachable: say so, and when to try again, instead of a 500.
		log.Warn("store unavailable", "method", r.Method, "path", r.URL.Path, "err", err)
		Write(w, code, map[string]any{"status": "error", "message": "store unavailable: etcd does not answer; try again later", "retry_after": RetryAfterUnavailable})
		return
	}
	if code == http.StatusInternalServerError && r.Context().Err() != nil {
		// The client went away (an agent's long poll ended by the agent): nobody
		// reads the answer and nothing failed on our side.
		log.Debug("request abandoned by the client", "method", r.Method, "path", r.URL.Path, "err", err)
		return
	}
	if code == http.StatusInternalServerError {
		log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		body["message"] = "internal error (see the server log)"
	} else {
		body["message"] = err.Error()
		var he *Error
		if errors.As(err, &he) {
			for k, v := range he.Extra {
				body[k] = v
			}
		}
		var ve *store.ValidationError
		if errors.As(err, &ve) {
			body["field"] = ve.Field
		}
	}
	Write(w, code, body)
}

// HandlerFunc is an http handler that returns its error.
type HandlerFunc func(w http.ResponseWriter, r *http.Request) error

// Handle adapts h, rendering a returned error with WriteError.
func Handle(log *slog.Logger, h HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			WriteError(w, log, r, err)
		}
	}
}
