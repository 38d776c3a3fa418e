package store

import (
	"context"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"lpmos.dev/lpmos/store/etcdserver"
)

// startEtcd is storetest.Start for this package's own tests (storetest imports store).
func startEtcd(t *testing.T) *Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv, err := etcdserver.Start(ctx, etcdserver.Config{DataDir: t.TempDir(), Quiet: true,
		ListenClientURLs: "http://127.0.0.1:0", ListenPeerURLs: "http://127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	cli, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return New(cli)
}

// next reads the watch's next batch, or fails the test after 10 s.
func next(t *testing.T, out <-chan watchBatch) watchBatch {
	t.Helper()
	select {
	case b := <-out:
		return b
	case <-time.After(10 * time.Second):
		t.Fatal("no watch batch within 10 s")
	}
	return watchBatch{}
}

// A watch resumed from a revision delivers exactly the changes after it, and one
// resumed from a revision that a real compaction removed says resync, starts again at
// the compaction and carries on: the caller re-reads, nothing after is missed.
func TestWatchResumesAndResyncsAfterCompaction(t *testing.T) {
	s := startEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	prefix := taskRoot + "dc1/"
	var revs []int64
	for i := range 6 {
		r, err := s.c.Put(ctx, fmt.Sprintf("%s0190c7a4-0000-7000-8000-00000000000%d/status", prefix, i), "pending")
		if err != nil {
			t.Fatal(err)
		}
		revs = append(revs, r.Header.Revision)
	}

	// Resumed after the third write: the fourth to sixth, nothing before.
	out := make(chan watchBatch)
	wctx, wcancel := context.WithCancel(ctx)
	go s.watchResuming(wctx, prefix, revs[2]+1, out)
	if b := next(t, out); !b.created {
		t.Fatalf("first batch %+v, want the registration", b)
	}
	var got []int64
	for len(got) < 3 {
		b := next(t, out)
		for _, ev := range b.events {
			got = append(got, ev.Kv.ModRevision)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(revs[3:]) {
		t.Fatalf("resumed watch delivered revisions %v, want %v", got, revs[3:])
	}
	wcancel()

	// Compact away everything up to the fifth write, then resume after the second.
	if _, err := s.c.Compact(ctx, revs[4], clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	out = make(chan watchBatch)
	go s.watchResuming(ctx, prefix, revs[1]+1, out)
	// etcd registers the watch, then says the revision is compacted.
	if b := next(t, out); !b.created {
		t.Fatalf("first batch %+v, want the registration", b)
	}
	if b := next(t, out); !b.resync {
		t.Fatalf("batch after the registration %+v, want a resync", b)
	}
	r, err := s.c.Put(ctx, prefix+"0190c7a4-0000-7000-8000-000000000009/status", "pending")
	if err != nil {
		t.Fatal(err)
	}
	got = nil
	for len(got) == 0 || got[len(got)-1] != r.Header.Revision {
		for _, ev := range next(t, out).events {
			got = append(got, ev.Kv.ModRevision)
		}
	}
	// From the compaction revision on: the fifth and sixth writes again, then the new one.
	if want := []int64{revs[4], revs[5], r.Header.Revision}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after the resync: revisions %v, want %v", got, want)
	}

	// The public watch calls ready at the registration and again on the resync (the
	// live pages re-read).
	readies := make(chan struct{}, 4)
	go s.watchPrefixes(ctx, []string{prefix}, revs[1]+1, func() { readies <- struct{}{} }, func(*clientv3.Event) {})
	for i := range 2 {
		select {
		case <-readies:
		case <-time.After(10 * time.Second):
			t.Fatalf("ready called %d times, want 2 (registration, resync)", i)
		}
	}
}
