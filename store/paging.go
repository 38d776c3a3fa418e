package store

import (
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Lists that grow with the fleet (tasks, unmatched reports, the audit trail) are read a
// page at a time, newest first. Each is made of key ranges whose keys end in a
// time-ordered id (UUIDv7 task ids, {timestamp}-{mac} report ids, timestamped audit
// ids), so a place in a list is the id last seen, and the next page is an etcd range
// from there with a limit, keys only: a page costs the same on the first page and
// the hundredth, with 10 tasks or 100,000.

// MaxPageLimit bounds one page of any list (the HTTP layers bound it lower).
const MaxPageLimit = 5000

// Page asks for one page of a list. At most one of After and Before is set.
type Page struct {
	Limit  int    // rows, 1..MaxPageLimit
	After  string // a cursor: the rows older than it (the next page)
	Before string // a cursor: the rows newer than it (the previous page)
}

// PageMarks are the cursors of the pages beside one page: Next the older rows (""
// when none), Prev the newer rows ("" on the first page).
type PageMarks struct {
	Next, Prev string
}

// pageRange is one range of a list: every key is prefix + id, ids in time order.
type pageRange struct {
	label  string // tells rows of equal id apart across ranges (the region)
	prefix string
}

// pagedList is a list as the paging reads it.
type pagedList struct {
	// scope names the list and its filters: a cursor from another list (or other
	// filters) is refused rather than read as a place in this one.
	scope  string
	ranges []pageRange
	// validID says whether a cursor's id can be an id of this list.
	validID func(string) bool
	// scan: the ranges are not in id order (the audit trail of a region is grouped by
	// task): each is read whole, keys only, and ordered here. label is then the part
	// of the key between the prefix and the id.
	scan bool
	// keep, when set, filters rows by value (the audit trail by actor or action): the
	// ranges are read whole with their values (scan).
	keep func(value []byte) bool
	// keepID, when set, filters rows by id; it may only cut the old end of the list
	// (a lower bound on time), so a limited read stays exact.
	keepID func(id string) bool
	// timed, when set, says the ids carry their time: older rows are read by windows
	// of time (olderRows).
	timed *timedIDs
	// values: the rows need their (small) values, such as the region a task index key
	// names.
	values bool
}

// pageRow is one row of a page: its key, id and label, and its value when the list
// read values.
type pageRow struct {
	key, id, label string
	value          []byte
}

// pagePos is a place in a list: rows are ordered by id, then label, newest first.
type pagePos struct{ id, label string }

func (a pagePos) newerThan(b pagePos) bool {
	return a.id > b.id || (a.id == b.id && a.label > b.label)
}

// cursor is a place in list l, as the HTTP layers pass it around: opaque, URL-safe.
func (l *pagedList) cursor(p pagePos) string {
	return base64.RawURLEncoding.EncodeToString([]byte(l.scope + "\x00" + p.id + "\x00" + p.label))
}

// parseCursor reads a cursor of list l; field names the parameter it came in.
func (l *pagedList) parseCursor(field, c string) (pagePos, error) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	parts := strings.Split(string(b), "\x00")
	if err != nil || len(c) > 1024 || len(parts) != 3 {
		return pagePos{}, invalid(field, "%q is not a cursor of this list (use the next or prev value a list returned)", clip(c))
	}
	if parts[0] != l.scope {
		return pagePos{}, invalid(field, "the cursor belongs to another list or other filters: start again from the first page")
	}
	if parts[1] == "" || strings.Contains(parts[1], "/") || !l.validID(parts[1]) {
		return pagePos{}, invalid(field, "the cursor names no place in this list")
	}
	return pagePos{id: parts[1], label: parts[2]}, nil
}

func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// readPage reads one page of l, newest first, at one revision (returned, for reading
// the rows' tasks or values at that same view).
func (s *Store) readPage(ctx context.Context, l *pagedList, p Page) ([]pageRow, PageMarks, int64, error) {
	var rev int64
	rows, marks, err := l.page(p, func(n int, at *pagePos, newer bool) ([]pageRow, error) {
		rows, r, err := s.pageRows(ctx, l, n, at, newer)
		rev = r
		return rows, err
	})
	if err != nil {
		return nil, PageMarks{}, 0, err
	}
	return rows, marks, rev, nil
}

// page makes one page of l, newest first, from rows fetches: up to n rows beyond at
// (nil: from the newest), newest first, or oldest first when newer. etcd's ranges
// fetch them for readPage, memory for a Mirror: one cursor logic for both.
func (l *pagedList) page(p Page, fetch func(n int, at *pagePos, newer bool) ([]pageRow, error)) ([]pageRow, PageMarks, error) {
	if p.Limit < 1 || p.Limit > MaxPageLimit {
		return nil, PageMarks{}, invalid("limit", "%d is not 1-%d", p.Limit, MaxPageLimit)
	}
	if p.After != "" && p.Before != "" {
		return nil, PageMarks{}, invalid("before", "give after or before, not both")
	}
	var at *pagePos
	newer := p.Before != ""
	if field, c := "after", p.After; p.After != "" || newer {
		if newer {
			field, c = "before", p.Before
		}
		pos, err := l.parseCursor(field, c)
		if err != nil {
			return nil, PageMarks{}, err
		}
		at = &pos
	}
	rows, err := fetch(p.Limit+1, at, newer)
	if err != nil {
		return nil, PageMarks{}, err
	}
	more := len(rows) > p.Limit
	if more {
		rows = rows[:p.Limit]
	}
	var m PageMarks
	if newer {
		if !more {
			// Nothing newer than this page: it is the first page, and a first page is
			// full.
			return l.page(Page{Limit: p.Limit}, fetch)
		}
		slices.Reverse(rows)
		m.Prev = l.cursor(rows[0].pos())
		m.Next = l.cursor(rows[len(rows)-1].pos())
		return rows, m, nil
	}
	if more {
		m.Next = l.cursor(rows[len(rows)-1].pos())
	}
	if at != nil {
		m.Prev = l.cursor(*at) // the rows newer than the cursor: the page before
		if len(rows) > 0 {
			m.Prev = l.cursor(rows[0].pos())
		}
	}
	return rows, m, nil
}

func (r pageRow) pos() pagePos { return pagePos{id: r.id, label: r.label} }

// pageRows reads up to n rows of l beyond at (nil: from the newest), newest first, or
// oldest first when newer (the rows newer than at).
func (s *Store) pageRows(ctx context.Context, l *pagedList, n int, at *pagePos, newer bool) ([]pageRow, int64, error) {
	if !newer && !l.scan && l.timed != nil {
		if rows, rev, ok, err := s.olderRows(ctx, l, n, at); ok || err != nil {
			return rows, rev, err
		}
	}
	reads := make([]rangeRead, 0, len(l.ranges))
	for _, r := range l.ranges {
		rd := rangeRead{key: r.prefix, end: clientv3.GetPrefixRangeEnd(r.prefix), keysOnly: l.keep == nil && !l.values}
		if !l.scan {
			// A range from the cursor with a limit: etcd does the seeking.
			rd.order, rd.limit = clientv3.SortDescend, int64(n)
			switch {
			case at != nil && newer:
				rd.order, rd.key = clientv3.SortAscend, r.prefix+at.id
				if r.label <= at.label {
					rd.key += "\x00" // the cursor's own row is not newer than itself
				}
			case at != nil:
				rd.end = r.prefix + at.id
				if r.label < at.label {
					rd.end += "\x00" // the same id in a range after the cursor's is older
				}
			}
		}
		reads = append(reads, rd)
	}
	resps, rev, err := s.readAtOneRev(ctx, reads, 0)
	if err != nil {
		return nil, 0, fmt.Errorf("read page: %w", err)
	}
	return l.rows(resps, n, at, newer), rev, nil
}

// rows turns range responses (one per range of l, in order) into at most n rows
// beyond at, newest first (oldest first when newer).
func (l *pagedList) rows(resps []*etcdserverpb.RangeResponse, n int, at *pagePos, newer bool) []pageRow {
	var rows []pageRow
	for i, resp := range resps {
		r := l.ranges[i]
		for _, kv := range resp.GetKvs() {
			row, ok := l.row(r, kv)
			if !ok || (l.keepID != nil && !l.keepID(row.id)) || (l.keep != nil && !l.keep(kv.Value)) {
				continue
			}
			if at != nil && (newer != row.pos().newerThan(*at) || row.pos() == *at) {
				continue // a scan reads everything; a limited read is already beyond at
			}
			rows = append(rows, row)
		}
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].pos().newerThan(rows[j].pos()) != newer })
	if len(rows) > n {
		rows = rows[:n]
	}
	return rows
}

// timedIDs are ids that carry their time (UUIDv7 task ids, {timestamp}-{mac} report
// ids), so a list of them can be read backwards by time windows.
type timedIDs struct {
	time  func(id string) (time.Time, bool)
	floor func(t time.Time) string // the least id of time t: every id of t or later sorts at or above it
	grain time.Duration            // the ids' resolution
}

// Windows: etcd applies a limit to an ascending range only. A descending one (newest
// first) reads every key of the range, values included, and sorts them before it
// cuts: a first page would cost the whole list. So the older rows are read by
// windows of time from the cursor backwards, each counted first (etcd's index only)
// and narrowed while it holds far more than the page needs, then read: a page reads
// about its own rows, and an empty stretch of time costs a widening of the window.
const (
	firstWindow = time.Minute
	// windowSlack: a window holding more than this many times the rows still needed
	// is narrowed.
	windowSlack = 4
)

// epoch: no id of a list predates it; the window that reaches it is the range's
// start.
var epoch = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)

// olderRows is pageRows' older direction by windows (see firstWindow). ok is false
// when the cursor's id carries no time: the caller reads the plain way.
func (s *Store) olderRows(ctx context.Context, l *pagedList, n int, at *pagePos) (rows []pageRow, rev int64, ok bool, err error) {
	tHi := s.now().Add(time.Minute) // ids of a clock a little ahead are in the first window
	his := make([]string, len(l.ranges))
	for i, r := range l.ranges {
		his[i] = clientv3.GetPrefixRangeEnd(r.prefix)
		if at != nil {
			his[i] = r.prefix + at.id
			if r.label < at.label {
				his[i] += "\x00"
			}
		}
	}
	if at != nil {
		t, ok := l.timed.time(at.id)
		if !ok {
			return nil, 0, false, nil
		}
		tHi = t
	}
	w := firstWindow
	for step := 0; step < 1000; step++ {
		start := tHi.Add(-w)
		atStart := start.Before(epoch)
		los := make([]string, len(l.ranges))
		reads := make([]rangeRead, len(l.ranges))
		for i, r := range l.ranges {
			los[i] = r.prefix + l.timed.floor(start)
			switch {
			case atStart:
				los[i] = r.prefix
			case his[i] < los[i]:
				los[i] = his[i] // an id older than its time says: nothing newer here
			}
			reads[i] = rangeRead{key: los[i], end: his[i], countOnly: true}
		}
		counts, r, err := s.readAtOneRev(ctx, reads, rev)
		if err != nil {
			return nil, 0, true, fmt.Errorf("read page: %w", err)
		}
		rev = r
		need, total := n-len(rows), int64(0)
		for _, c := range counts {
			total += c.Count
		}
		if total > int64(windowSlack*need+16) && w > l.timed.grain {
			// Too many rows in the window: narrow it to about twice what is needed,
			// supposing them evenly spread.
			w = max(l.timed.grain, time.Duration(float64(w)*float64(2*need+8)/float64(total)))
			continue
		}
		if total > 0 {
			var reads []rangeRead
			var read []int // which ranges
			for i, c := range counts {
				if c.Count > 0 {
					reads = append(reads, rangeRead{key: los[i], end: his[i], keysOnly: l.keep == nil && !l.values,
						order: clientv3.SortDescend, limit: int64(need)})
					read = append(read, i)
				}
			}
			resps, _, err := s.readAtOneRev(ctx, reads, rev)
			if err != nil {
				return nil, 0, true, fmt.Errorf("read page: %w", err)
			}
			all := make([]*etcdserverpb.RangeResponse, len(l.ranges))
			for j, i := range read {
				all[i] = resps[j]
			}
			// Every row of this window is older than every row of the ones before.
			rows = append(rows, l.rows(all, need, at, false)...)
		}
		if len(rows) >= n || atStart {
			return rows, rev, true, nil
		}
		copy(his, los)
		tHi = start
		if total == 0 {
			w *= 8 // nothing here: look further back faster
		} else {
			w *= 2
		}
	}
	return nil, 0, true, fmt.Errorf("read page: no end after 1000 windows")
}

// rangeRead is one range read of a page: [key, end), sorted by key in order and
// limited when limit > 0.
type rangeRead struct {
	key, end  string
	keysOnly  bool
	countOnly bool
	order     clientv3.SortOrder
	limit     int64
}

func (rd rangeRead) op(rev int64) clientv3.Op {
	opts := []clientv3.OpOption{clientv3.WithRange(rd.end)}
	if rd.keysOnly {
		opts = append(opts, clientv3.WithKeysOnly())
	}
	if rd.countOnly {
		opts = append(opts, clientv3.WithCountOnly())
	}
	if rd.limit > 0 {
		opts = append(opts, clientv3.WithSort(clientv3.SortByKey, rd.order), clientv3.WithLimit(rd.limit))
	}
	if rev > 0 {
		opts = append(opts, clientv3.WithRev(rev))
	}
	return clientv3.OpGet(rd.key, opts...)
}

// row is kv as a row of range r, or false for a key that is not one (a foreign key
// under the prefix).
func (l *pagedList) row(r pageRange, kv *mvccpb.KeyValue) (pageRow, bool) {
	rest, ok := strings.CutPrefix(string(kv.Key), r.prefix)
	if !ok || rest == "" {
		return pageRow{}, false
	}
	row := pageRow{key: string(kv.Key), id: rest, label: r.label, value: kv.Value}
	if l.scan {
		i := strings.LastIndex(rest, "/")
		row.id = rest[i+1:]
		if i >= 0 {
			row.label = rest[:i]
		}
	}
	if row.id == "" || strings.Contains(row.id, "/") {
		return pageRow{}, false
	}
	return row, true
}

// countRows counts the rows of a list that is in id order (not a scan), all ranges
// at one revision: etcd counts, nothing is sent.
func (s *Store) countRows(ctx context.Context, l *pagedList) (int, error) {
	ops := make([]clientv3.Op, 0, len(l.ranges))
	for _, r := range l.ranges {
		ops = append(ops, rangeRead{key: r.prefix, end: clientv3.GetPrefixRangeEnd(r.prefix), countOnly: true}.op(0))
	}
	n := 0
	for len(ops) > 0 {
		batch := ops[:min(len(ops), 100)]
		ops = ops[len(batch):]
		resp, err := s.c.Txn(ctx).Then(batch...).Commit()
		if err != nil {
			return 0, fmt.Errorf("count: %w", err)
		}
		for _, r := range resp.Responses {
			n += int(r.GetResponseRange().Count)
		}
	}
	return n, nil
}

// readAtOneRev runs reads in transactions of at most 100 (etcd's default limit is
// 128 operations), all at revision rev (0: the first one's): one consistent view.
func (s *Store) readAtOneRev(ctx context.Context, reads []rangeRead, rev int64) ([]*etcdserverpb.RangeResponse, int64, error) {
	out := make([]*etcdserverpb.RangeResponse, 0, len(reads))
	for len(reads) > 0 || rev == 0 {
		batch := reads[:min(len(reads), 100)]
		reads = reads[len(batch):]
		ops := make([]clientv3.Op, len(batch))
		for i, rd := range batch {
			ops[i] = rd.op(rev)
		}
		resp, err := s.c.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, 0, err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, r := range resp.Responses {
			out = append(out, r.GetResponseRange())
		}
	}
	return out, rev, nil
}

// readValues reads the values of keys at revision rev, in batches: a page's values
// after a keys-only page read. A key gone at rev is left out.
func (s *Store) readValues(ctx context.Context, keys []string, rev int64) (map[string][]byte, error) {
	out := make(map[string][]byte, len(keys))
	for len(keys) > 0 {
		batch := keys[:min(len(keys), 100)]
		keys = keys[len(batch):]
		ops := make([]clientv3.Op, len(batch))
		for i, k := range batch {
			ops[i] = clientv3.OpGet(k, clientv3.WithRev(rev))
		}
		resp, err := s.c.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, err
		}
		for _, r := range resp.Responses {
			for _, kv := range r.GetResponseRange().Kvs {
				out[string(kv.Key)] = kv.Value
			}
		}
	}
	return out, nil
}

// childNames lists the first path segments under root (the regions under a v2.1
// root such as /os/install/task/), one short keys-only read per name: O(regions),
// never O(keys).
func (s *Store) childNames(ctx context.Context, root string) ([]string, error) {
	var out []string
	from, end := root, clientv3.GetPrefixRangeEnd(root)
	for len(out) < 10000 {
		resp, err := s.c.Get(ctx, from, clientv3.WithRange(end), clientv3.WithKeysOnly(), clientv3.WithLimit(1))
		if err != nil {
			return nil, fmt.Errorf("list regions under %s: %w", root, err)
		}
		if len(resp.Kvs) == 0 {
			break
		}
		k := string(resp.Kvs[0].Key)
		name, _, ok := strings.Cut(k[len(root):], "/")
		if !ok || ValidateRegion(name) != nil {
			from = k + "\x00" // not a region's key: step over it
			continue
		}
		out = append(out, name)
		from = clientv3.GetPrefixRangeEnd(root + name + "/")
	}
	return out, nil
}

// RegionNames lists every region a task, an unmatched report or an appliance has
// used, sorted: O(regions) short reads, where ListRegions reads every task's index
// key to count them.
func (s *Store) RegionNames(ctx context.Context) ([]string, error) {
	seen := map[string]bool{}
	for _, root := range []string{taskRoot, unmatchedRoot, regionRoot} {
		names, err := s.childNames(ctx, root)
		if err != nil {
			return nil, err
		}
		for _, n := range names {
			seen[n] = true
		}
	}
	out := make([]string, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	sort.Strings(out)
	return out, nil
}
