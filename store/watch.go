package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ChangeKind says which part of the v2.1 tree a Change is about.
type ChangeKind string

const (
	ChangeTask      ChangeKind = "task"      // /os/install/task/{region}/{id}/{field}
	ChangeRegion    ChangeKind = "region"    // /os/region/{region}/{heartbeat|status}
	ChangeUnmatched ChangeKind = "unmatched" // /os/unmatched_reports/{region}/{id}
)

// Change is one key change seen by WatchAll: which task, region or report moved.
// Readers re-read what they show; the raw value is not passed on.
type Change struct {
	Kind   ChangeKind
	Region string
	// TaskID is set for ChangeTask, ID for ChangeUnmatched (the report id).
	TaskID, ID string
	// Part is the task key that changed (ChangeTask only).
	Part    TaskPart
	Deleted bool
}

// WatchAll streams changes of every region's tasks, region keys and unmatched reports
// until ctx ends, resuming by itself after a failure (watchPrefixes). ready (may be nil)
// is called once all three watches are registered, and again after a resync: changes
// were lost to a compaction, the caller re-reads what it shows. fn is called from one
// goroutine, in order per prefix. The error is ctx's, or a permanent refusal (a
// permission denied).
func (s *Store) WatchAll(ctx context.Context, ready func(), fn func(Change)) error {
	return s.watchPrefixes(ctx, []string{taskRoot, regionRoot, unmatchedRoot}, 0, ready, func(ev *clientv3.Event) {
		if c, ok := parseChange(string(ev.Kv.Key)); ok {
			c.Deleted = ev.Type == clientv3.EventTypeDelete
			fn(c)
		}
	})
}

// watchBatch is what one prefix's watch hands on: events in revision order, or a
// registration, a resync, a progress notice, or a permanent error.
type watchBatch struct {
	prefix  string // the prefix watched
	events  []*clientv3.Event
	created bool
	resync  bool
	// compacted is the resync's compaction revision: the changes from the watch's
	// revision up to compacted-1 are gone, the watch carries on from compacted.
	compacted int64
	// progress: etcd's progress notice (RequestProgress), every change of the prefix
	// up to this revision was delivered.
	progress int64
	err      error // permanent: the watch ended
}

// watchPrefixes watches each prefix from revision from (0: now) until ctx ends. A watch
// that fails (the member dialled died; the cluster lost its leader, which cancels a
// WithRequireLeader watch) is watched again from the revision after the last event it
// delivered, so nothing is missed or delivered twice. When that revision was compacted
// meanwhile, the watch starts again at the compaction and ready is called (resync):
// the changes in the gap are gone from etcd's history, the caller re-reads. ready is
// also called once every prefix is first registered. fn is called from this goroutine.
func (s *Store) watchPrefixes(ctx context.Context, prefixes []string, from int64, ready func(), fn func(*clientv3.Event)) error {
	registered, readied := 0, false
	return s.watchBatches(ctx, prefixes, from, func(b watchBatch) error {
		switch {
		case b.created && !readied:
			if registered++; registered == len(prefixes) {
				readied = true
				if ready != nil {
					ready()
				}
			}
		case b.resync && readied && ready != nil:
			ready()
		}
		for _, ev := range b.events {
			fn(ev)
		}
		return nil
	})
}

// watchBatches runs one watchResuming per prefix and hands every batch to fn, from
// this goroutine, in order per prefix, until ctx ends, a watch fails for good, or fn
// returns an error.
func (s *Store) watchBatches(ctx context.Context, prefixes []string, from int64, fn func(watchBatch) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	out := make(chan watchBatch)
	for _, p := range prefixes {
		go s.watchResuming(ctx, p, from, out)
	}
	for {
		var b watchBatch
		select {
		case <-ctx.Done():
			return ctx.Err()
		case b = <-out:
		}
		if b.err != nil {
			return b.err
		}
		if err := fn(b); err != nil {
			return err
		}
	}
}

// watchResuming is one prefix's watch for watchPrefixes.
func (s *Store) watchResuming(ctx context.Context, prefix string, next int64, out chan<- watchBatch) {
	send := func(b watchBatch) bool {
		b.prefix = prefix
		select {
		case out <- b:
			return true
		case <-ctx.Done():
			return false
		}
	}
	wait, registered := retryFirst, false
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithCreatedNotify()}
		if next > 0 {
			opts = append(opts, clientv3.WithRev(next))
		}
		var failed error
		for wr := range s.c.Watch(wctx, prefix, opts...) {
			if wr.CompactRevision != 0 {
				// The history from next on is compacted: start at the compaction.
				next, failed = wr.CompactRevision, nil
				if !send(watchBatch{resync: true, compacted: next}) {
					break
				}
				wait = 0
				break
			}
			if err := wr.Err(); err != nil {
				failed = err
				break
			}
			if wr.Created {
				if next == 0 {
					next = wr.Header.Revision + 1
				}
				wait = retryFirst
				if !registered {
					registered = true
					if !send(watchBatch{created: true}) {
						break
					}
				}
				continue
			}
			if wr.IsProgressNotify() {
				if !send(watchBatch{progress: wr.Header.Revision}) {
					break
				}
				continue
			}
			if n := len(wr.Events); n > 0 {
				next = wr.Events[n-1].Kv.ModRevision + 1
				if !send(watchBatch{events: wr.Events}) {
					break
				}
			}
		}
		cancel()
		if ctx.Err() != nil {
			return
		}
		if failed != nil && !Transient(failed) && !errors.Is(failed, rpctypes.ErrCompacted) {
			send(watchBatch{err: fmt.Errorf("watch %s: %w", prefix, failed)})
			return
		}
		// A closed channel or a transient error (no leader): watch again from next.
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		wait = min(2*max(wait, retryFirst), retryMax)
	}
}

// parseChange reads a key of the three watched trees; foreign keys are skipped.
func parseChange(key string) (Change, bool) {
	if region, id, field, ok := splitTaskKey(key); ok {
		return Change{Kind: ChangeTask, Region: region, TaskID: id, Part: TaskPart(field)}, true
	}
	if rest, ok := strings.CutPrefix(key, regionRoot); ok {
		region, name, ok := strings.Cut(rest, "/")
		return Change{Kind: ChangeRegion, Region: region}, ok && !strings.Contains(name, "/")
	}
	if rest, ok := strings.CutPrefix(key, unmatchedRoot); ok {
		region, id, ok := strings.Cut(rest, "/")
		return Change{Kind: ChangeUnmatched, Region: region, ID: id}, ok && !strings.Contains(id, "/")
	}
	return Change{}, false
}
