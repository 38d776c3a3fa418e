package store

import (
	"context"
	"encoding/json"
	"fmt"
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

// evictUnmatched deletes the region's oldest unmatched reports so that room more fit
// under UnmatchedMax. Ids start with their time, so key order is age order.
func (s *Store) evictUnmatched(ctx context.Context, region string, room int) error {
	resp, err := s.c.Get(ctx, unmatchedPrefix(region), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return fmt.Errorf("count unmatched reports: %w", err)
	}
	over := int(resp.Count) - UnmatchedMax + room
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

// newUnmatchedList is the unmatched report list of region ("" for every region)
// without its ranges (shared with Mirror.UnmatchedPage: one cursor for both).
func newUnmatchedList(region string) *pagedList {
	return &pagedList{scope: "unmatched/" + region, validID: func(id string) bool {
		_, ok := unmatchedIDTime(id)
		return ok
	}, timed: &timedIDs{time: unmatchedIDTime, grain: time.Second,
		floor: func(t time.Time) string { return t.UTC().Format("20060102150405") }}}
}

// unmatchedSummary is the report a row's id alone tells (id, region, MAC, received_at
// to the second): UnmatchedPage without hardware, and a Mirror's.
func unmatchedSummary(region, id string) (UnmatchedReport, bool) {
	t, ok := unmatchedIDTime(id)
	_, mac, _ := strings.Cut(id, "-")
	return UnmatchedReport{ID: id, Region: region, MACAddress: mac, ReceivedAt: t}, ok
}

// UnmatchedPage returns one page of a region's ("" for every region) unmatched
// reports, newest first. The ids start with their time, so a page is a keys-only
// range from the cursor with a limit per region; without hardware the reports are
// summaries made from their keys alone (id, region, MAC, received_at to the second:
// no value is read), with hardware only the page's reports are read whole.
func (s *Store) UnmatchedPage(ctx context.Context, region string, p Page, withHardware bool) ([]UnmatchedReport, PageMarks, error) {
	regions := []string{region}
	if region == "" {
		var err error
		if regions, err = s.childNames(ctx, unmatchedRoot); err != nil {
			return nil, PageMarks{}, err
		}
	} else if err := ValidateRegion(region); err != nil {
		return nil, PageMarks{}, err
	}
	l := newUnmatchedList(region)
	for _, r := range regions {
		l.ranges = append(l.ranges, pageRange{label: r, prefix: unmatchedPrefix(r)})
	}
	rows, marks, rev, err := s.readPage(ctx, l, p)
	if err != nil {
		return nil, PageMarks{}, err // a bad cursor says so as it is
	}
	var values map[string][]byte
	if withHardware {
		keys := make([]string, len(rows))
		for i, r := range rows {
			keys[i] = r.key
		}
		if values, err = s.readValues(ctx, keys, rev); err != nil {
			return nil, PageMarks{}, fmt.Errorf("read unmatched reports: %w", err)
		}
	}
	out := make([]UnmatchedReport, 0, len(rows))
	for _, r := range rows {
		u := UnmatchedReport{ID: r.id, Region: r.label}
		if withHardware {
			v, ok := values[r.key]
			if !ok || json.Unmarshal(v, &u) != nil {
				continue // gone, or not ours: never let one bad value hide the others
			}
			u.ID = r.id
		} else {
			var ok bool
			if u, ok = unmatchedSummary(r.label, r.id); !ok {
				continue
			}
		}
		out = append(out, u)
	}
	return out, marks, nil
}
