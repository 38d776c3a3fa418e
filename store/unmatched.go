package store

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Unmatched reports are what anything on the boot network can make an appliance store
// (POST /api/report is open): they are bounded in number per region and in age, so a
// flood of invented MACs cannot fill etcd.
const (
	// UnmatchedMax is how many unmatched reports a region keeps; the oldest goes first.
	UnmatchedMax = 1000
	// UnmatchedTTL is how long an unmatched report is kept.
	UnmatchedTTL = 24 * time.Hour
)

// unmatchedIDTime is the time in a report id ({timestamp}-{mac}).
func unmatchedIDTime(id string) (time.Time, bool) {
	ts, _, ok := strings.Cut(id, "-")
	if !ok {
		return time.Time{}, false
	}
	t, err := time.Parse("20060102150405", ts)
	return t, err == nil
}

// evictUnmatched deletes the region's oldest unmatched reports so that one more fits
// under UnmatchedMax. Ids start with their time, so key order is age order.
func (s *Store) evictUnmatched(ctx context.Context, region string) error {
	resp, err := s.c.Get(ctx, unmatchedPrefix(region), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return fmt.Errorf("count unmatched reports: %w", err)
	}
	over := int(resp.Count) - UnmatchedMax + 1
	if over <= 0 {
		return nil
	}
	oldest, err := s.c.Get(ctx, unmatchedPrefix(region), clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend), clientv3.WithLimit(int64(over)))
	if err != nil {
		return fmt.Errorf("oldest unmatched reports: %w", err)
	}
	return s.deleteUnmatchedKeys(ctx, region, oldest.Kvs)
}

// ExpireUnmatched deletes the region's unmatched reports older than UnmatchedTTL and
// returns how many. The appliance calls it on its housekeeping round.
func (s *Store) ExpireUnmatched(ctx context.Context, region string) (int, error) {
	resp, err := s.c.Get(ctx, unmatchedPrefix(region), clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return 0, fmt.Errorf("list unmatched reports: %w", err)
	}
	cut := s.now().Add(-UnmatchedTTL)
	n := 0
	for n < len(resp.Kvs) {
		id := string(resp.Kvs[n].Key)[len(unmatchedPrefix(region)):]
		if t, ok := unmatchedIDTime(id); !ok || !t.Before(cut) {
			break
		}
		n++
	}
	return n, s.deleteUnmatchedKeys(ctx, region, resp.Kvs[:n])
}

// deleteUnmatchedKeys deletes reports and their MAC index keys, one transaction each;
// an index key is deleted only while it still names that report.
func (s *Store) deleteUnmatchedKeys(ctx context.Context, region string, kvs []*mvccpb.KeyValue) error {
	for _, kv := range kvs {
		id := string(kv.Key)[len(unmatchedPrefix(region)):]
		_, mac, _ := strings.Cut(id, "-")
		idx := unmatchedIndexKey(region, mac)
		_, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.Value(idx), "=", id)).
			Then(clientv3.OpDelete(string(kv.Key)), clientv3.OpDelete(idx)).
			Else(clientv3.OpDelete(string(kv.Key))).Commit()
		if err != nil {
			return fmt.Errorf("delete unmatched report %s: %w", id, err)
		}
	}
	return nil
}

// NewestUnmatched returns the newest limit unmatched reports of a region ("" for all),
// newest first: the ids start with their time, so a keys-only read picks them and only
// those are read whole (hardware included).
func (s *Store) NewestUnmatched(ctx context.Context, region string, limit int) ([]UnmatchedReport, error) {
	prefix := unmatchedRoot
	if region != "" {
		if err := ValidateRegion(region); err != nil {
			return nil, err
		}
		prefix = unmatchedPrefix(region)
	}
	keys, err := s.c.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("list unmatched reports: %w", err)
	}
	id := func(k []byte) string { return string(k)[strings.LastIndex(string(k), "/")+1:] }
	kvs := keys.Kvs
	sort.Slice(kvs, func(i, j int) bool { return id(kvs[i].Key) > id(kvs[j].Key) })
	if limit > 0 && len(kvs) > limit {
		kvs = kvs[:limit]
	}
	out := make([]UnmatchedReport, 0, len(kvs))
	for len(kvs) > 0 {
		batch := kvs[:min(len(kvs), 100)]
		kvs = kvs[len(batch):]
		ops := make([]clientv3.Op, len(batch))
		for i, kv := range batch {
			ops[i] = clientv3.OpGet(string(kv.Key), clientv3.WithRev(keys.Header.Revision))
		}
		resp, err := s.c.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, fmt.Errorf("read unmatched reports: %w", err)
		}
		for _, rr := range resp.Responses {
			for _, kv := range rr.GetResponseRange().Kvs {
				var r UnmatchedReport
				if json.Unmarshal(kv.Value, &r) != nil {
					continue // not ours: never let one bad value hide the others
				}
				r.ID = id(kv.Key)
				out = append(out, r)
			}
		}
	}
	return out, nil
}
