package store

import (
	"context"
	"fmt"
	"strings"

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
// until ctx ends or the watch fails (the caller decides whether to watch again and
// re-read, since changes during the gap are not replayed). ready (may be nil) is called
// once all three watches are registered. fn is called from one goroutine, in order per
// prefix.
func (s *Store) WatchAll(ctx context.Context, ready func(), fn func(Change)) error {
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	roots := []string{taskRoot, regionRoot, unmatchedRoot}
	chans := make([]clientv3.WatchChan, len(roots))
	for i, p := range roots {
		chans[i] = s.c.Watch(ctx, p, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	}
	created := 0
	handle := func(i int, wr clientv3.WatchResponse, ok bool) error {
		if !ok {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("watch %s: channel closed", roots[i])
		}
		if err := wr.Err(); err != nil {
			return fmt.Errorf("watch %s: %w", roots[i], err)
		}
		if wr.Created {
			if created++; created == len(roots) && ready != nil {
				ready()
			}
			return nil
		}
		for _, ev := range wr.Events {
			if c, ok := parseChange(string(ev.Kv.Key)); ok {
				c.Deleted = ev.Type == clientv3.EventTypeDelete
				fn(c)
			}
		}
		return nil
	}
	for {
		var err error
		select {
		case wr, ok := <-chans[0]:
			err = handle(0, wr, ok)
		case wr, ok := <-chans[1]:
			err = handle(1, wr, ok)
		case wr, ok := <-chans[2]:
			err = handle(2, wr, ok)
		}
		if err != nil {
			return err
		}
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
