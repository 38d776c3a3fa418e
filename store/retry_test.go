package store_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

// lossyKV commits transactions for real but, while lose > 0, answers the commit with
// "etcdserver: request timed out", as when the leader dies after the commit and before
// its answer: the outcome is unknown to the caller.
type lossyKV struct {
	clientv3.KV
	lose atomic.Int32
	txns atomic.Int32
}

func (l *lossyKV) Txn(ctx context.Context) clientv3.Txn { return &lossyTxn{Txn: l.KV.Txn(ctx), l: l} }

type lossyTxn struct {
	clientv3.Txn
	l *lossyKV
}

func (t *lossyTxn) If(cs ...clientv3.Cmp) clientv3.Txn   { t.Txn = t.Txn.If(cs...); return t }
func (t *lossyTxn) Then(ops ...clientv3.Op) clientv3.Txn { t.Txn = t.Txn.Then(ops...); return t }
func (t *lossyTxn) Else(ops ...clientv3.Op) clientv3.Txn { t.Txn = t.Txn.Else(ops...); return t }
func (t *lossyTxn) Commit() (*clientv3.TxnResponse, error) {
	t.l.txns.Add(1)
	resp, err := t.Txn.Commit()
	if err == nil && t.l.lose.Add(-1) >= 0 {
		return nil, rpctypes.ErrTimeout
	}
	return resp, err
}

// A write whose answer was lost is retried, and the retry finds the write done: the
// task is created once, starts once and completes once (one audit entry each), and
// every caller got success, not a conflict; a user added once is added, and a second
// add of the name is still a conflict.
func TestRetryAfterLostAnswer(t *testing.T) {
	e := storetest.Start(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints, DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	lossy := &lossyKV{KV: cli.KV}
	cli.KV = lossy
	lossyE := *e
	lossyE.Store = store.New(cli)
	st := lossyE.Store
	advertise(t, e.Store, "dc1", ubuntuImage)
	ctx := ctxT(t)

	lossy.lose.Store(1)
	created, err := st.CreateTask(ctx, store.NewTask{RegionID: "dc1", TargetMAC: "52:54:00:00:77:01", OSRef: ubuntuImage.OSRef})
	if err != nil {
		t.Fatalf("create with its answer lost: %v", err)
	}
	if tasks, err := e.Store.ListTasks(ctx, store.ListFilter{MAC: "52:54:00:00:77:01"}); err != nil || len(tasks) != 1 || tasks[0].TaskID != created.TaskID {
		t.Fatalf("tasks after a create whose answer was lost: %+v %v", tasks, err)
	}

	lossy.lose.Store(1)
	if _, err := st.AddUser(ctx, "carol", store.RoleOperator, "correct horse battery"); err != nil {
		t.Fatalf("add user with its answer lost: %v", err)
	}
	if _, err := st.AddUser(ctx, "carol", store.RoleOperator, "another password here"); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("a second add of the user: %v, want a conflict", err)
	}

	task := approvedTask(t, &lossyE, "52:54:00:00:77:02", raidOnly)
	for _, stage := range []contract.Stage{contract.StageDownloading, contract.StageCompleted} {
		lossy.lose.Store(1)
		before := lossy.txns.Load()
		got, err := st.RecordProgress(ctx, store.ProgressUpdate{Region: "dc1", MAC: "52:54:00:00:77:02", TaskID: task.TaskID,
			Progress: contract.Progress{Stage: stage, Percentage: 50}})
		if err != nil {
			t.Fatalf("progress %s with its answer lost: %v", stage, err)
		}
		if n := lossy.txns.Load() - before; n < 2 {
			t.Fatalf("progress %s: %d commits: the lost answer was not retried", stage, n)
		}
		t.Logf("progress %s with its answer lost: %s", stage, got.Status)
	}
	final, err := e.Store.GetTask(ctx, task.TaskID)
	if err != nil || final.Status != store.StatusCompleted {
		t.Fatalf("task after completion: %+v %v", final.Status, err)
	}
	trail, err := e.Store.ListAudit(ctx, store.AuditFilter{TaskID: task.TaskID})
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, a := range trail {
		count[a.Action]++
	}
	if count[store.AuditTaskStart] != 1 || count[store.AuditTaskComplete] != 1 {
		t.Fatalf("audit trail after lost answers: %v", count)
	}
}

// countingKV answers every call with err and counts the calls.
type countingKV struct {
	clientv3.KV
	err         error
	calls       atomic.Int32
	hadDeadline atomic.Bool
}

func (c *countingKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	c.calls.Add(1)
	_, ok := ctx.Deadline()
	c.hadDeadline.Store(ok)
	return nil, c.err
}

// A transient error is retried until the caller's deadline and then reported as
// unavailable (503); any other error is returned at once; a call without a deadline
// gets one.
func TestRetryPolicy(t *testing.T) {
	e := storetest.Start(t)
	for _, c := range []struct {
		err         error
		retried     bool
		unavailable bool
	}{
		{rpctypes.ErrLeaderChanged, true, true},
		{rpctypes.ErrTimeout, true, true},
		{rpctypes.ErrNoLeader, true, true},
		{rpctypes.ErrPermissionDenied, false, false},
		{errors.New("boom"), false, false},
	} {
		cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints, DialTimeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		fake := &countingKV{KV: cli.KV, err: c.err}
		cli.KV = fake
		st := store.New(cli)
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		start := time.Now()
		_, err = st.GetTask(ctx, "0190c7a4-0000-7000-8000-000000000001")
		took := time.Since(start)
		cancel()
		cli.Close()
		n := fake.calls.Load()
		if (n > 1) != c.retried || store.Unavailable(err) != c.unavailable || !errors.Is(err, c.err) && !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%v: %d calls in %s, err %v (unavailable %v)", c.err, n, took, err, store.Unavailable(err))
		}
		if c.retried && (took < 400*time.Millisecond || took > 2*time.Second) {
			t.Errorf("%v: retried for %s, want until the 500 ms deadline", c.err, took)
		}
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints, DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	fake := &countingKV{KV: cli.KV, err: errors.New("boom")}
	cli.KV = fake
	store.New(cli).GetTask(context.Background(), "0190c7a4-0000-7000-8000-000000000001")
	if !fake.hadDeadline.Load() {
		t.Fatal("a store call without a deadline went to etcd without one")
	}
}
