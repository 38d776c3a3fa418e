package store

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"

	"lpmos.dev/lpmos/contract"
)

// Sentinel errors at the storage boundary; the HTTP layers map them to status codes in
// one place each.
var (
	ErrNotFound = errors.New("not found")
	// ErrConflict: the request contradicts the current state (a second open task for a
	// MAC, a transition the state machine forbids, progress from the wrong MAC).
	ErrConflict = errors.New("conflict")
	// ErrInvalid: the input itself is wrong (the contract's, so a ValidationError
	// from contract's validators maps to 400 too).
	ErrInvalid = contract.ErrInvalid
)

// ValidationError names the field that is wrong; it wraps ErrInvalid.
type ValidationError = contract.ValidationError

func invalid(field, format string, args ...any) error {
	return &ValidationError{Field: field, Message: fmt.Sprintf(format, args...)}
}

// TransitionError is an illegal state change; it wraps ErrConflict.
type TransitionError struct {
	TaskID   string
	From, To Status
}

func (e *TransitionError) Error() string {
	return fmt.Sprintf("task %s is %s: cannot become %s", e.TaskID, e.From, e.To)
}
func (e *TransitionError) Unwrap() error { return ErrConflict }

// Unavailable reports whether err means etcd could not be reached or did not answer in
// time (no leader, a timeout, the request's deadline): the callers' cue to answer 503
// with a retry_after, not 500.
func Unavailable(err error) bool {
	return err != nil && (errors.Is(err, context.DeadlineExceeded) || Transient(err) || grpcCode(err) == codes.DeadlineExceeded)
}

// NoSpace reports whether err is etcd refusing a write because its backend is over
// its quota (the NOSPACE alarm is raised): nothing is written until an operator
// compacts, defragments and disarms the alarm.
func NoSpace(err error) bool { return err != nil && errors.Is(err, rpctypes.ErrNoSpace) }
