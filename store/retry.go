package store

import (
	"context"
	"errors"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The store's fault policy, in this one place: New wraps the client's KV so that every
// read and write of LPMOS has a deadline and rides out a transient failure.
//
// Deadline: a request whose context has none gets callTimeout; the callers that serve
// people and agents set their own, shorter (httpjson.RequestDeadline: 2 s).
//
// Retry: an error etcd marks Unavailable (gRPC's "try again": a leader election in
// progress "leader changed", "no leader", "etcdserver: request timed out", the member
// dialled went away) is retried with backoff, 50 ms doubling to 1 s, until the deadline;
// then the caller gets it and answers 503 with retry_after. The client retries reads by
// itself on some of these; writes it does not, since their outcome is unknown.
//
// Why retrying a write is safe: every write LPMOS makes is one of
//   - a transaction guarded on the revisions it read (If ModRevision = ...). If an
//     attempt whose answer was lost did commit, the retry's compare fails and the
//     caller reads again, exactly as after a concurrent writer, and finds its own change
//     there: the state machine acknowledges a repeated end (completed twice is one
//     completion), CreateTask and AddUser recognise what they wrote;
//   - a put or delete of keys and values fixed before the first attempt (heartbeat,
//     region status, leases, audit entries whose id is chosen once): repeating it
//     writes the same thing again.
//
// Nothing is written relative to a value read outside such a guard.
const (
	callTimeout = 30 * time.Second
	retryFirst  = 50 * time.Millisecond
	retryMax    = time.Second
)

// Transient reports whether err is etcd saying "not now": retry, and answer 503 when
// the deadline is reached.
func Transient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	return grpcCode(err) == codes.Unavailable
}

// grpcCode is the gRPC code etcd answered with (the client turns etcd's own errors
// into rpctypes.EtcdError, which keeps it); OK when err carries none.
func grpcCode(err error) codes.Code {
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		return ee.Code()
	}
	for e := err; e != nil; e = errors.Unwrap(e) {
		if st, ok := status.FromError(e); ok {
			return st.Code()
		}
	}
	return codes.OK
}

// withRetry calls call until it succeeds, fails for good, or ctx (given callTimeout
// when it has no deadline) ends; it returns the last answer.
func withRetry[T any](ctx context.Context, call func(context.Context) (T, error)) (T, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, callTimeout)
		defer cancel()
	}
	wait := retryFirst
	for {
		v, err := call(ctx)
		if !Transient(err) || ctx.Err() != nil {
			return v, err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return v, err
		case <-t.C:
		}
		wait = min(2*wait, retryMax)
	}
}

// retryKV is the client's KV with the policy above.
type retryKV struct{ kv clientv3.KV }

// withPolicy installs the policy on c (once).
func withPolicy(c *clientv3.Client) {
	if _, ok := c.KV.(retryKV); !ok {
		c.KV = retryKV{kv: c.KV}
	}
}

func (r retryKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	return withRetry(ctx, func(ctx context.Context) (*clientv3.PutResponse, error) { return r.kv.Put(ctx, key, val, opts...) })
}

func (r retryKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	return withRetry(ctx, func(ctx context.Context) (*clientv3.GetResponse, error) { return r.kv.Get(ctx, key, opts...) })
}

func (r retryKV) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	return withRetry(ctx, func(ctx context.Context) (*clientv3.DeleteResponse, error) { return r.kv.Delete(ctx, key, opts...) })
}

func (r retryKV) Compact(ctx context.Context, rev int64, opts ...clientv3.CompactOption) (*clientv3.CompactResponse, error) {
	return withRetry(ctx, func(ctx context.Context) (*clientv3.CompactResponse, error) { return r.kv.Compact(ctx, rev, opts...) })
}

func (r retryKV) Do(ctx context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	return withRetry(ctx, func(ctx context.Context) (clientv3.OpResponse, error) { return r.kv.Do(ctx, op) })
}

func (r retryKV) Txn(ctx context.Context) clientv3.Txn { return &retryTxn{kv: r.kv, ctx: ctx} }

// retryTxn collects the transaction and commits it whole on each attempt.
type retryTxn struct {
	kv        clientv3.KV
	ctx       context.Context
	cmps      []clientv3.Cmp
	then, els []clientv3.Op
}

func (t *retryTxn) If(cs ...clientv3.Cmp) clientv3.Txn   { t.cmps = append(t.cmps, cs...); return t }
func (t *retryTxn) Then(ops ...clientv3.Op) clientv3.Txn { t.then = append(t.then, ops...); return t }
func (t *retryTxn) Else(ops ...clientv3.Op) clientv3.Txn { t.els = append(t.els, ops...); return t }

func (t *retryTxn) Commit() (*clientv3.TxnResponse, error) {
	return withRetry(t.ctx, func(ctx context.Context) (*clientv3.TxnResponse, error) {
		return t.kv.Txn(ctx).If(t.cmps...).Then(t.then...).Else(t.els...).Commit()
	})
}
