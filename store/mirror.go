package store

// TEMPORARY STAND-IN (helper "fleet"): a minimal store.Mirror with exactly the API of
// the issue 16 design, so federation's tests run before helper "mirror"'s real one
// lands. It reloads the region on every (re)registration of a WatchAll and re-reads
// each changed item. The lead replaces this file with the real mirror at merge.

import (
	"context"
	"errors"
	"sort"
	"sync"
	"time"
)

// ChangeResync is the Change a Mirror reports after each (re)load.
const ChangeResync ChangeKind = "resync"

// Mirror holds one region of one cluster in memory (stand-in).
type Mirror struct {
	st     *Store
	region string

	mu        sync.RWMutex
	loaded    bool
	rev       int64
	resyncs   int
	loads     int
	tasks     map[string]Task
	unmatched map[string]UnmatchedReport
	reg       Region
	hasReg    bool
}

// NewMirror mirrors region of the cluster st dials.
func NewMirror(st *Store, region string) *Mirror {
	return &Mirror{st: st, region: region, tasks: map[string]Task{}, unmatched: map[string]UnmatchedReport{}}
}

// Run loads, then follows, until ctx ends. Stand-in: every batch of changes WatchAll
// reports is followed by a full reload (read after the revision it then claims).
func (m *Mirror) Run(ctx context.Context, changed func(Change)) error {
	if changed == nil {
		changed = func(Change) {}
	}
	var mu sync.Mutex
	var pending []Change
	resync := false
	kick := make(chan struct{}, 1)
	poke := func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	go func() {
		for ctx.Err() == nil {
			err := m.st.WatchAll(ctx, func() {
				mu.Lock()
				resync = true
				mu.Unlock()
				poke()
			}, func(c Change) {
				if c.Region != m.region {
					return
				}
				mu.Lock()
				pending = append(pending, c)
				mu.Unlock()
				poke()
			})
			if ctx.Err() != nil || errors.Is(err, ErrUnauthorized) {
				return
			}
			sleepCtx(ctx, 500*time.Millisecond)
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-kick:
		}
		mu.Lock()
		batch, rs := pending, resync
		pending, resync = nil, false
		mu.Unlock()
		for ctx.Err() == nil {
			if err := m.reload(ctx, rs); err == nil {
				break
			}
			sleepCtx(ctx, 200*time.Millisecond)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if rs {
			changed(Change{Kind: ChangeResync, Region: m.region})
		}
		for _, c := range batch {
			changed(c)
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func (m *Mirror) reload(ctx context.Context, resync bool) error {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rev, err := m.st.Revision(rctx)
	if err != nil {
		return err
	}
	tasks := map[string]Task{}
	p := Page{Limit: MaxPageLimit}
	for {
		ts, marks, err := m.st.TaskPage(rctx, m.region, "", p)
		if err != nil {
			return err
		}
		for _, t := range ts {
			tasks[t.TaskID] = t
		}
		if marks.Next == "" {
			break
		}
		p.After = marks.Next
	}
	um := map[string]UnmatchedReport{}
	p = Page{Limit: MaxPageLimit}
	for {
		us, marks, err := m.st.UnmatchedPage(rctx, m.region, p, false)
		if err != nil {
			return err
		}
		for _, u := range us {
			um[u.ID] = u
		}
		if marks.Next == "" {
			break
		}
		p.After = marks.Next
	}
	reg, err := m.st.GetRegion(rctx, m.region)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.tasks, m.unmatched, m.reg, m.hasReg = tasks, um, reg, true
	if resync && m.loads > 0 {
		m.resyncs++
	}
	if resync {
		m.loads++
	}
	m.loaded, m.rev = true, max(m.rev, rev)
	return nil
}

// Loaded says whether the first load is done.
func (m *Mirror) Loaded() bool { m.mu.RLock(); defer m.mu.RUnlock(); return m.loaded }

// Revision is the cluster revision the mirror reflects.
func (m *Mirror) Revision() int64 { m.mu.RLock(); defer m.mu.RUnlock(); return m.rev }

// Resyncs counts full reloads after the first.
func (m *Mirror) Resyncs() int { m.mu.RLock(); defer m.mu.RUnlock(); return m.resyncs }

// Task is one mirrored task.
func (m *Mirror) Task(id string) (Task, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	t, ok := m.tasks[id]
	return t, ok
}

// memPage pages rows (any order) as readPage would.
func memPage(l *pagedList, rows []pageRow, p Page) ([]pageRow, PageMarks, error) {
	if p.Limit < 1 || p.Limit > MaxPageLimit {
		return nil, PageMarks{}, invalid("limit", "%d is not 1-%d", p.Limit, MaxPageLimit)
	}
	if p.After != "" && p.Before != "" {
		return nil, PageMarks{}, invalid("before", "give after or before, not both")
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].pos().newerThan(rows[j].pos()) })
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
	var sel []pageRow
	for _, r := range rows {
		if at == nil || (newer && r.pos().newerThan(*at)) || (!newer && at.newerThan(r.pos())) {
			sel = append(sel, r)
		}
	}
	var m PageMarks
	if newer {
		if len(sel) <= p.Limit {
			return memPage(l, rows, Page{Limit: p.Limit})
		}
		sel = sel[len(sel)-p.Limit:]
		m.Prev, m.Next = l.cursor(sel[0].pos()), l.cursor(sel[len(sel)-1].pos())
		return sel, m, nil
	}
	if len(sel) > p.Limit {
		sel = sel[:p.Limit]
		m.Next = l.cursor(sel[len(sel)-1].pos())
	}
	if at != nil {
		m.Prev = l.cursor(*at)
		if len(sel) > 0 {
			m.Prev = l.cursor(sel[0].pos())
		}
	}
	return sel, m, nil
}

// TaskPage pages the mirrored tasks in status ("" all), cursors as Store.TaskPage(region, status, p).
func (m *Mirror) TaskPage(status Status, p Page) ([]Task, PageMarks, error) {
	if status != "" && !status.Valid() {
		return nil, PageMarks{}, invalid("status", "unknown status %q", status)
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	l := &pagedList{scope: taskScope(m.region, status), validID: func(string) bool { return true }}
	var rows []pageRow
	for id, t := range m.tasks {
		if status == "" || t.Status == status {
			rows = append(rows, pageRow{id: id, label: m.region})
		}
	}
	sel, marks, err := memPage(l, rows, p)
	if err != nil {
		return nil, marks, err
	}
	out := make([]Task, len(sel))
	for i, r := range sel {
		out[i] = m.tasks[r.id]
	}
	return out, marks, nil
}

// CountTasks counts the mirrored tasks in status ("" all).
func (m *Mirror) CountTasks(status Status) int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	n := 0
	for _, t := range m.tasks {
		if status == "" || t.Status == status {
			n++
		}
	}
	return n
}

// UnmatchedPage pages the mirrored reports, cursors as Store.UnmatchedPage(region, p, false).
func (m *Mirror) UnmatchedPage(p Page) ([]UnmatchedReport, PageMarks, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	l := &pagedList{scope: unmatchedScope(m.region), validID: func(string) bool { return true }}
	var rows []pageRow
	for id := range m.unmatched {
		rows = append(rows, pageRow{id: id, label: m.region})
	}
	sel, marks, err := memPage(l, rows, p)
	if err != nil {
		return nil, marks, err
	}
	out := make([]UnmatchedReport, len(sel))
	for i, r := range sel {
		out[i] = m.unmatched[r.id]
	}
	return out, marks, nil
}

// Region is the region as ListRegions gives it.
func (m *Mirror) Region() (Region, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if !m.hasReg {
		return Region{}, false
	}
	r := m.reg
	r.Counts = map[Status]int{}
	for _, t := range m.tasks {
		r.Counts[t.Status]++
	}
	r.Unmatched = len(m.unmatched)
	r.Online = r.Heartbeat != nil
	return r, true
}

// Bytes approximates the memory held.
func (m *Mirror) Bytes() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return 1024*len(m.tasks) + 256*len(m.unmatched) + 512
}
