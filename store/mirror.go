package store

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
)

// A Mirror is one region of one etcd cluster held in memory: its tasks without their
// hardware reports, its unmatched reports as their keys tell them, and its region keys
// (heartbeat, status). The control plane answers from it while the region's cluster
// is unreachable (a WAN link down), marked stale. It is loaded at one revision, then
// follows the three prefixes' watches (watchBatches: resumed after a failure from the
// revision after the last event, reloaded after a compaction took the gap). Readers
// may call it from any goroutine while Run applies; what they get shares memory with
// the mirror (the plan, progress, approval): read it, never change it. Run it once.
type Mirror struct {
	st       *Store
	region   string
	prefixes []string // the task root, the region dir, the unmatched reports

	mu        sync.RWMutex
	d         *mirrorData
	loaded    bool
	loadedRev int64   // every change at or below it is in d; events up to it are ignored
	known     []int64 // per prefix: every change up to it is in d
	heard     time.Time
	resyncs   int
}

// ChangeResync is the Change a Mirror passes after each (re)load: whatever a reader
// shows of the region, it reads again.
const ChangeResync ChangeKind = "resync"

// MirrorHeartbeatMaxAge: while a Mirror hears nothing from its cluster, the region's
// appliance counts as online as long as its last heartbeat is younger than this (the
// lease that would delete the key cannot be seen from here). An appliance beats every
// third of its TTL (30 s by default).
const MirrorHeartbeatMaxAge = time.Minute

// mirrorLive: a Mirror that heard from etcd this recently (a change or a progress
// notice, asked for every mirrorProgressEvery) is following it live.
const (
	mirrorLive          = 5 * time.Second
	mirrorProgressEvery = 250 * time.Millisecond
	mirrorLoadTimeout   = time.Minute
)

// NewMirror mirrors region's tasks (no hardware), unmatched reports (no hardware) and
// region keys (/os/region/{r}/...) of the cluster st dials.
func NewMirror(st *Store, region string) *Mirror {
	return &Mirror{st: st, region: region, d: newMirrorData(region), known: make([]int64, 3),
		prefixes: []string{regionTaskPrefix(region), regionDir(region), unmatchedPrefix(region)}}
}

// Run loads the region at one revision, then watches (watchBatches) from the next
// revision until ctx ends: after a failure it resumes from the revision after the last
// event applied (nothing missed, nothing twice); if that revision was compacted it
// reloads everything at the current revision (a resync; events at or below the loaded
// revision are ignored). changed (may be nil) is called from Run's goroutine for every
// change applied (the same Change WatchAll gives) and with
// Change{Kind: ChangeResync, Region: region} after each (re)load. Returns ctx's error or
// a permanent one (permission denied).
func (m *Mirror) Run(ctx context.Context, changed func(Change)) error {
	if err := ValidateRegion(m.region); err != nil {
		return err
	}
	if changed == nil {
		changed = func(Change) {}
	}
	if err := m.reload(ctx, false); err != nil {
		return err
	}
	changed(Change{Kind: ChangeResync, Region: m.region})
	ctx, cancel := context.WithCancel(ctx)
	var asking sync.WaitGroup
	defer asking.Wait()
	defer cancel()
	kick := make(chan struct{}, 1)
	progressing := false
	var events []Change
	m.mu.RLock()
	from := m.loadedRev + 1
	m.mu.RUnlock()
	return m.st.watchBatches(ctx, m.prefixes, from, func(b watchBatch) error {
		p := slices.Index(m.prefixes, b.prefix)
		switch {
		case b.created && !progressing:
			// Revision moves on etcd's progress notices: a prefix nobody writes
			// says how far it is only when asked.
			progressing = true
			asking.Go(func() { m.askProgress(ctx, kick) })
		case b.resync:
			m.mu.RLock()
			gap := b.compacted-1 > max(m.loadedRev, m.known[p])
			m.mu.RUnlock()
			if !gap {
				return nil // an earlier reload (another prefix's resync) holds the gap
			}
			if err := m.reload(ctx, true); err != nil {
				return err
			}
			changed(Change{Kind: ChangeResync, Region: m.region})
		case b.progress > 0:
			m.mu.Lock()
			m.known[p] = max(m.known[p], b.progress)
			m.heard = m.st.now()
			m.mu.Unlock()
		case len(b.events) > 0:
			events = m.apply(p, b.events, events[:0])
			for _, c := range events {
				changed(c)
			}
			select {
			case kick <- struct{}{}:
			default:
			}
		}
		return nil
	})
}

// askProgress asks etcd for a progress notice on the watches' stream after changes
// (kick) and every mirrorProgressEvery: etcd answers once every watch of the stream has
// sent all it has, so each prefix learns the revision it is complete up to (writes
// outside the region, such as DHCP leases, move the cluster's revision too).
func (m *Mirror) askProgress(ctx context.Context, kick <-chan struct{}) {
	t := time.NewTicker(mirrorProgressEvery)
	defer t.Stop()
	// The watches' own metadata: RequestProgress finds their stream by it.
	wctx := clientv3.WithRequireLeader(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-kick:
		case <-t.C:
		}
		m.st.c.RequestProgress(wctx) // no answer while a watch catches up: asked again
	}
}

// apply applies a batch of prefix p's events above the loaded revision and appends
// what changed to out.
func (m *Mirror) apply(p int, evs []*clientv3.Event, out []Change) []Change {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, ev := range evs {
		if ev.Kv.ModRevision <= m.loadedRev {
			continue // in the load already: a resync's replay never goes back
		}
		deleted := ev.Type == clientv3.EventTypeDelete
		if m.d.applyKV(ev.Kv, deleted) {
			if c, ok := parseChange(string(ev.Kv.Key)); ok {
				c.Deleted = deleted
				out = append(out, c)
			}
		}
	}
	m.known[p] = max(m.known[p], evs[len(evs)-1].Kv.ModRevision)
	m.heard = m.st.now()
	return out
}

// reload loads the region at one revision, again and again while etcd does not
// answer, and puts it in place of what the mirror held.
func (m *Mirror) reload(ctx context.Context, resync bool) error {
	wait := retryFirst
	for {
		lctx, cancel := context.WithTimeout(ctx, mirrorLoadTimeout)
		d, rev, err := m.load(lctx)
		cancel()
		if err == nil {
			m.mu.Lock()
			m.d, m.loadedRev, m.loaded, m.heard = d, rev, true, m.st.now()
			for i := range m.known {
				m.known[i] = max(m.known[i], rev)
			}
			if resync {
				m.resyncs++
			}
			m.mu.Unlock()
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if permanent(err) {
			return fmt.Errorf("mirror region %s: %w", m.region, err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// permanent: etcd refuses this client (its role does not cover the region, its
// credentials are wrong); trying again changes nothing.
func permanent(err error) bool {
	switch grpcCode(err) {
	case codes.PermissionDenied, codes.Unauthenticated, codes.InvalidArgument:
		return true
	}
	return false
}

// mirrorKeysPage bounds one keys-only read of the region's task keys.
const mirrorKeysPage = 20000

// load reads the region at one revision: the region dir, the unmatched reports' keys,
// the task keys (keys only, by pages), then every task key but the hardware reports
// (ranges between them, about one per task, 100 to a transaction).
func (m *Mirror) load(ctx context.Context) (*mirrorData, int64, error) {
	d := newMirrorData(m.region)
	taskP := regionTaskPrefix(m.region)
	first := []rangeRead{
		{key: regionDir(m.region), end: clientv3.GetPrefixRangeEnd(regionDir(m.region))},
		{key: unmatchedPrefix(m.region), end: clientv3.GetPrefixRangeEnd(unmatchedPrefix(m.region)), keysOnly: true},
	}
	resps, rev, err := m.st.readAtOneRev(ctx, first, 0)
	if err != nil {
		return nil, 0, fmt.Errorf("load region %s: %w", m.region, err)
	}
	for _, r := range resps {
		for _, kv := range r.GetKvs() {
			d.applyKV(kv, false)
		}
	}
	// The task keys: the ranges between hardware reports hold everything else.
	var reads []rangeRead
	from, end := taskP, clientv3.GetPrefixRangeEnd(taskP)
	start, pending := taskP, false
	for {
		resp, err := m.st.c.Get(ctx, from, clientv3.WithRange(end), clientv3.WithKeysOnly(),
			clientv3.WithRev(rev), clientv3.WithLimit(mirrorKeysPage))
		if err != nil {
			return nil, 0, fmt.Errorf("load region %s tasks: %w", m.region, err)
		}
		for _, kv := range resp.Kvs {
			k := string(kv.Key)
			if _, _, field, ok := splitTaskKey(k); ok && field == fieldHardware {
				if pending {
					reads = append(reads, rangeRead{key: start, end: k})
				}
				d.applyKV(kv, false) // present, value not kept
				start, pending = k+"\x00", false
				continue
			}
			pending = true
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	if pending {
		reads = append(reads, rangeRead{key: start, end: end})
	}
	if len(reads) > 0 {
		resps, _, err := m.st.readAtOneRev(ctx, reads, rev)
		if err != nil {
			return nil, 0, fmt.Errorf("load region %s tasks: %w", m.region, err)
		}
		for _, r := range resps {
			for _, kv := range r.GetKvs() {
				d.applyKV(kv, false)
			}
		}
	}
	return d, rev, nil
}

// Loaded reports whether the first load is done (before it, the mirror holds nothing).
func (m *Mirror) Loaded() bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.loaded
}

// Revision is the cluster revision the mirror reflects: every change of the region up
// to it is applied. It moves with the region's changes and with etcd's progress
// notices (asked for 4 times a second), so it reaches the cluster's revision after writes
// elsewhere in the cluster too; 0 before the first load.
func (m *Mirror) Revision() int64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if !m.loaded {
		return 0
	}
	return slices.Min(m.known)
}

// Resyncs counts the full reloads after the first load (a compaction took changes the
// watch had not delivered).
func (m *Mirror) Resyncs() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.resyncs
}

// Task returns a task of the region, without its hardware report.
func (m *Mirror) Task(id string) (Task, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	mt := m.d.tasks[id]
	if mt == nil || mt.parts&partBit[fieldMetadata] == 0 {
		return Task{}, false
	}
	return mt.t, true
}

// TaskPage is Store.TaskPage(region, status, p) from memory: the same rows, marks and
// cursors (a cursor of one pages the other).
func (m *Mirror) TaskPage(status Status, p Page) ([]Task, PageMarks, error) {
	if status != "" && !status.Valid() {
		return nil, PageMarks{}, invalid("status", "unknown status %q", status)
	}
	l := newTaskList(m.region, status)
	m.mu.RLock()
	defer m.mu.RUnlock()
	rows, marks, err := l.page(p, m.rowsOf(m.d.lists[status]))
	if err != nil {
		return nil, PageMarks{}, err
	}
	out := make([]Task, 0, len(rows))
	for _, r := range rows {
		out = append(out, m.d.tasks[r.id].t)
	}
	return out, marks, nil
}

// CountTasks counts the region's tasks in status ("" for all; 0 for an unknown one).
func (m *Mirror) CountTasks(status Status) int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.d.lists[status])
}

// UnmatchedPage is Store.UnmatchedPage(region, p, false) from memory: summaries from
// the report ids, the same marks and cursors.
func (m *Mirror) UnmatchedPage(p Page) ([]UnmatchedReport, PageMarks, error) {
	l := newUnmatchedList(m.region)
	m.mu.RLock()
	defer m.mu.RUnlock()
	rows, marks, err := l.page(p, m.rowsOf(m.d.unmatchedIDs))
	if err != nil {
		return nil, PageMarks{}, err
	}
	out := make([]UnmatchedReport, 0, len(rows))
	for _, r := range rows {
		if u, ok := unmatchedSummary(m.region, r.id); ok {
			out = append(out, u)
		}
	}
	return out, marks, nil
}

// rowsOf is a page's fetch over ids (sorted, oldest first), every row labelled with
// the region as the Store's single-region lists label them: up to n rows beyond at,
// newest first, or oldest first when newer.
func (m *Mirror) rowsOf(ids []string) func(n int, at *pagePos, newer bool) ([]pageRow, error) {
	return func(n int, at *pagePos, newer bool) ([]pageRow, error) {
		var rows []pageRow
		row := func(id string) pageRow { return pageRow{id: id, label: m.region} }
		if newer {
			// The first id newer than at, then up.
			i, _ := slices.BinarySearch(ids, at.id)
			for ; i < len(ids) && !row(ids[i]).pos().newerThan(*at); i++ {
			}
			for ; i < len(ids) && len(rows) < n; i++ {
				rows = append(rows, row(ids[i]))
			}
			return rows, nil
		}
		i := len(ids) // one past the newest row older than at
		if at != nil {
			i, _ = slices.BinarySearch(ids, at.id)
			for ; i < len(ids) && at.newerThan(row(ids[i]).pos()); i++ {
			}
		}
		for i--; i >= 0 && len(rows) < n; i-- {
			rows = append(rows, row(ids[i]))
		}
		return rows, nil
	}
}

// Region is the region as ListRegions gives it: heartbeat, status, counts per status,
// unmatched reports. Online, at call time: a heartbeat key is there and the mirror
// follows its cluster live (as ListRegions: the key lives on the appliance's lease),
// or, while it hears nothing from it, the heartbeat is younger than
// MirrorHeartbeatMaxAge. false until the first load.
func (m *Mirror) Region() (Region, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	d := m.d
	r := Region{Name: m.region, Status: RegionOffline, Counts: map[Status]int{}, Unmatched: len(d.unmatched)}
	if d.status != nil {
		r.Status = *d.status
	}
	if d.heartbeat != nil {
		hb := *d.heartbeat
		r.Heartbeat = &hb
	}
	for _, st := range Statuses {
		if n := len(d.lists[st]); n > 0 {
			r.Counts[st] = n
		}
	}
	now := m.st.now()
	r.Online = r.Heartbeat != nil && (now.Sub(m.heard) <= mirrorLive || now.Sub(r.Heartbeat.Timestamp) <= MirrorHeartbeatMaxAge)
	if !r.Online {
		r.Status = RegionOffline
	}
	return r, m.loaded
}

// Per-entry overheads of Bytes beyond the values' own bytes: the decoded structs, the
// map entry and the ids in the sorted lists (measured: mirror_test.go).
const (
	mirrorTaskOverhead      = 450
	mirrorUnmatchedOverhead = 120
)

// Bytes is about how much memory the mirror holds (the memory per region figure):
// the values it keeps plus a measured overhead per task and report.
func (m *Mirror) Bytes() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	d := m.d
	return d.valueBytes + len(d.tasks)*mirrorTaskOverhead + len(d.unmatched)*mirrorUnmatchedOverhead
}

// mirrorData is what a Mirror holds: built by a load, then changed by events.
type mirrorData struct {
	region string
	tasks  map[string]*mirrorTask
	// lists: the ids of the listed tasks per status ("" for all), sorted (oldest
	// first), as the status index would page them.
	lists        map[Status][]string
	unmatched    map[string]bool // every key under the prefix (what the Store counts)
	unmatchedIDs []string        // the ones that are rows of its list, sorted
	heartbeat    *Heartbeat
	status       *string
	valueBytes   int // the bytes of the values kept
}

func newMirrorData(region string) *mirrorData {
	return &mirrorData{region: region, tasks: map[string]*mirrorTask{}, lists: map[Status][]string{}, unmatched: map[string]bool{}}
}

// mirrorTask is a task as mirrored: which of its keys exist and how long their values
// are.
type mirrorTask struct {
	t     Task
	parts uint8
	sizes [7]int32
}

// partBit: a bit per task key the mirror knows (its index is the bit's position).
var partBit = map[string]uint8{
	fieldMetadata: 1 << 0, fieldStatus: 1 << 1, fieldHardware: 1 << 2, fieldProgress: 1 << 3,
	fieldApproval: 1 << 4, fieldPlan: 1 << 5, fieldToken: 1 << 6,
}

// listed says in which status list the task is: a task with metadata and a valid
// status, as the status index (same transaction as the status) and readTasks list it.
func (mt *mirrorTask) listed() (Status, bool) {
	if mt == nil || mt.parts&partBit[fieldMetadata] == 0 || mt.t.TaskID == "" || !mt.t.Status.Valid() {
		return "", false
	}
	return mt.t.Status, true
}

// applyKV applies one key of the region (a load's or an event's) and reports whether
// it is one the mirror follows.
func (d *mirrorData) applyKV(kv *mvccpb.KeyValue, deleted bool) bool {
	k := string(kv.Key)
	switch {
	case strings.HasPrefix(k, regionTaskPrefix(d.region)):
		region, id, field, ok := splitTaskKey(k)
		if !ok || region != d.region {
			return false
		}
		d.applyTask(id, field, kv.Value, deleted)
	case strings.HasPrefix(k, regionDir(d.region)):
		switch k {
		case heartbeatKey(d.region):
			d.heartbeat = nil
			var hb Heartbeat
			if !deleted && json.Unmarshal(kv.Value, &hb) == nil {
				d.heartbeat = &hb
			}
		case regionStatusKey(d.region):
			d.status = nil
			if !deleted {
				v := string(kv.Value)
				d.status = &v
			}
		}
	case strings.HasPrefix(k, unmatchedPrefix(d.region)):
		id := k[len(unmatchedPrefix(d.region)):]
		if deleted == !d.unmatched[id] {
			return true // already so (a load's keys, then the same event)
		}
		row := id != "" && !strings.Contains(id, "/")
		if deleted {
			delete(d.unmatched, id)
			if i, found := slices.BinarySearch(d.unmatchedIDs, id); found && row {
				d.unmatchedIDs = slices.Delete(d.unmatchedIDs, i, i+1)
			}
		} else {
			d.unmatched[id] = true
			if i, found := slices.BinarySearch(d.unmatchedIDs, id); !found && row {
				d.unmatchedIDs = slices.Insert(d.unmatchedIDs, i, id)
			}
		}
	default:
		return false
	}
	return true
}

// applyTask sets or deletes one key of task id. The Task is replaced, never changed
// in place: a reader's copy keeps what it read.
func (d *mirrorData) applyTask(id, field string, v []byte, deleted bool) {
	bit, known := partBit[field]
	if !known {
		return // a key of ours the mirror does not keep (or a foreign one)
	}
	old := d.tasks[id]
	var mt mirrorTask
	if old != nil {
		mt = *old
	}
	// Cleared first: a value decodes into nothing left from the one before.
	switch field {
	case fieldMetadata:
		mt.t.Metadata = Metadata{}
	case fieldStatus:
		mt.t.Status = ""
	case fieldProgress:
		mt.t.Progress = nil
	case fieldApproval:
		mt.t.Approval = nil
	case fieldPlan:
		mt.t.Plan = nil
	case fieldToken:
		mt.t.AgentToken = nil
	}
	i := 0
	for b := bit; b > 1; b >>= 1 {
		i++
	}
	d.valueBytes -= int(mt.sizes[i])
	mt.sizes[i] = 0
	mt.parts &^= bit
	if !deleted {
		mt.parts |= bit
		if field != fieldHardware {
			sn := taskSnap{task: mt.t}
			if err := sn.apply(field, v, 0); err == nil {
				mt.t, mt.sizes[i] = sn.task, int32(len(v))
				d.valueBytes += len(v)
			}
		}
	}
	was, wasListed := old.listed()
	is, isListed := mt.listed()
	if mt.parts == 0 {
		delete(d.tasks, id)
	} else {
		d.tasks[id] = &mt
	}
	if was == is && wasListed == isListed {
		return
	}
	if wasListed {
		d.unlist("", id)
		d.unlist(was, id)
	}
	if isListed {
		d.list("", id)
		d.list(is, id)
	}
}

func (d *mirrorData) list(st Status, id string) {
	ids := d.lists[st]
	if i, found := slices.BinarySearch(ids, id); !found {
		d.lists[st] = slices.Insert(ids, i, id)
	}
}

func (d *mirrorData) unlist(st Status, id string) {
	ids := d.lists[st]
	if i, found := slices.BinarySearch(ids, id); found {
		d.lists[st] = slices.Delete(ids, i, i+1)
	}
}
