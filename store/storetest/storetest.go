// Package storetest gives tests a real embedded etcd on a temp dir and free ports.
package storetest

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/etcdserver"
)

// Etcd is an embedded etcd for one test, with a client and the store on top of it.
type Etcd struct {
	Server    *etcdserver.Server
	Client    *clientv3.Client
	Store     *store.Store
	Endpoints []string
}

// Start starts etcd on 127.0.0.1 port 0 in t.TempDir(); everything stops in t.Cleanup.
func Start(t testing.TB) *Etcd {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv, err := etcdserver.Start(ctx, etcdserver.Config{
		DataDir:          t.TempDir(),
		ListenClientURLs: "http://127.0.0.1:0",
		ListenPeerURLs:   "http://127.0.0.1:0",
		Quiet:            true,
	})
	if err != nil {
		t.Fatalf("embedded etcd: %v", err)
	}
	t.Cleanup(srv.Close)
	cli, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return &Etcd{Server: srv, Client: cli, Store: store.New(cli), Endpoints: srv.Endpoints()}
}

// Dump returns every key under prefix with its value, for asserting "etcd unchanged".
func (e *Etcd) Dump(t testing.TB, prefix string) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := e.Client.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("dump %s: %v", prefix, err)
	}
	out := make(map[string]string, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out[string(kv.Key)] = string(kv.Value)
	}
	return out
}

// Get returns one key's value and whether it exists.
func (e *Etcd) Get(t testing.TB, key string) (string, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := e.Client.Get(ctx, key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	if len(resp.Kvs) == 0 {
		return "", false
	}
	return string(resp.Kvs[0].Value), true
}

// WaitValue blocks until key holds want (watching etcd, no polling) or fails the test
// after timeout.
func (e *Etcd) WaitValue(t testing.TB, key, want string, timeout time.Duration) {
	t.Helper()
	if err := e.waitFor(key, timeout, func(v string, ok bool) bool { return ok && v == want }); err != nil {
		got, _ := e.Get(t, key)
		t.Fatalf("%s: want %q, still %q after %s: %v", key, want, got, timeout, err)
	}
}

// WaitMatch blocks until ok(value, exists) holds for key or fails the test after
// timeout (watching etcd, no polling).
func (e *Etcd) WaitMatch(t testing.TB, key string, timeout time.Duration, ok func(v string, exists bool) bool) {
	t.Helper()
	if err := e.waitFor(key, timeout, ok); err != nil {
		got, _ := e.Get(t, key)
		t.Fatalf("%s: still %q after %s: %v", key, got, timeout, err)
	}
}

// WaitGone blocks until key does not exist or fails the test after timeout.
func (e *Etcd) WaitGone(t testing.TB, key string, timeout time.Duration) {
	t.Helper()
	if err := e.waitFor(key, timeout, func(_ string, ok bool) bool { return !ok }); err != nil {
		t.Fatalf("%s: still present after %s: %v", key, timeout, err)
	}
}

func (e *Etcd) waitFor(key string, timeout time.Duration, done func(string, bool) bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	resp, err := e.Client.Get(ctx, key)
	if err != nil {
		return err
	}
	v, ok := "", len(resp.Kvs) > 0
	if ok {
		v = string(resp.Kvs[0].Value)
	}
	if done(v, ok) {
		return nil
	}
	wch := e.Client.Watch(ctx, key, clientv3.WithRev(resp.Header.Revision+1))
	for wr := range wch {
		if err := wr.Err(); err != nil {
			return err
		}
		for _, ev := range wr.Events {
			if ev.Type == clientv3.EventTypeDelete {
				v, ok = "", false
			} else {
				v, ok = string(ev.Kv.Value), true
			}
			if done(v, ok) {
				return nil
			}
		}
	}
	return ctx.Err()
}

// AssertSame fails the test unless after holds exactly the keys and values of before
// (two Dumps): "etcd unchanged" after a refused request.
func AssertSame(t testing.TB, before, after map[string]string) {
	t.Helper()
	if len(before) != len(after) {
		t.Fatalf("etcd changed: %d keys before, %d after", len(before), len(after))
	}
	for k, v := range before {
		if after[k] != v {
			t.Fatalf("etcd changed at %s:\n before %s\n after  %s", k, v, after[k])
		}
	}
}
