package federation

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/store"
)

// Routing: every operation on a region goes to the store of the cluster that holds
// it; a region cluster that does not answer is read from its mirror (stale) and
// refuses writes with an *UnreachableError.

// Stale says a read was served from a region cluster's mirror.
type Stale bool

// writable returns the store that takes region's writes: home, or a reachable region
// cluster's (else an *UnreachableError, at once).
func (f *Fleet) writable(region string) (*store.Store, *cluster, error) {
	c := f.own(region)
	if c == nil {
		return f.home, nil, nil
	}
	st, _, ok, _ := c.state()
	if !ok {
		return nil, nil, c.unreachable()
	}
	return st, c, nil
}

// write runs op on region's store; a region cluster that stops answering during it
// turns the failure into an *UnreachableError.
func write[T any](ctx context.Context, f *Fleet, region string, op func(context.Context, *store.Store) (T, error)) (T, error) {
	var zero T
	st, c, err := f.writable(region)
	if err != nil {
		return zero, err
	}
	if c == nil {
		return op(ctx, st)
	}
	cctx, cancel := ownCall(ctx)
	defer cancel()
	v, err := op(cctx, st)
	if f.failed(ctx, c, err) {
		return zero, c.unreachable()
	}
	return v, err
}

// CreateTask creates a task in its region's cluster.
func (f *Fleet) CreateTask(ctx context.Context, n store.NewTask) (store.Task, error) {
	if err := store.ValidateRegion(n.RegionID); err != nil {
		return store.Task{}, err
	}
	return write(ctx, f, n.RegionID, func(ctx context.Context, st *store.Store) (store.Task, error) { return st.CreateTask(ctx, n) })
}

// locate finds the region holding task id: a mirror's index first, else home's task
// index (a task of a region registered elsewhere found there is a leftover), else
// each reachable region cluster (a task its mirror has not seen yet). It returns the
// task when it read it on the way (home's), and the cluster (nil: home).
func (f *Fleet) locate(ctx context.Context, id string) (*cluster, *store.Task, error) {
	for _, c := range f.all() {
		if _, m, _, _ := c.state(); m != nil {
			if _, ok := m.Task(id); ok {
				return c, nil, nil
			}
		}
	}
	t, err := f.home.GetTask(ctx, id)
	switch {
	case err == nil && f.own(t.RegionID) == nil:
		return nil, &t, nil
	case err != nil && !errors.Is(err, store.ErrNotFound):
		return nil, nil, err
	}
	// Every region cluster at once: one WAN round trip, not one per cluster.
	cs := f.all()
	found := make([]bool, len(cs))
	down := make([]bool, len(cs))
	var wg sync.WaitGroup
	for i, c := range cs {
		st, _, ok, _ := c.state()
		if !ok {
			down[i] = true
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := ownCall(ctx)
			_, err := st.GetTask(cctx, id)
			cancel()
			found[i], down[i] = err == nil, f.failed(ctx, c, err)
		}()
	}
	wg.Wait()
	var unreachable []string
	for i, c := range cs {
		if found[i] {
			return c, nil, nil
		}
		if down[i] {
			unreachable = append(unreachable, c.rc.Region)
		}
	}
	if len(unreachable) > 0 {
		sort.Strings(unreachable)
		return nil, nil, fmt.Errorf("%w: task %s (not in any region that answers; unreachable: %s)", store.ErrNotFound, id, strings.Join(unreachable, ", "))
	}
	return nil, nil, fmt.Errorf("%w: task %s", store.ErrNotFound, id)
}

// GetTask reads a task from its region's cluster, or its mirror (stale) when the
// cluster does not answer.
func (f *Fleet) GetTask(ctx context.Context, id string) (store.Task, Stale, error) {
	c, t, err := f.locate(ctx, id)
	if err != nil {
		return store.Task{}, false, err
	}
	if c == nil {
		if t != nil {
			return *t, false, nil
		}
		v, err := f.home.GetTask(ctx, id)
		return v, false, err
	}
	st, m, ok, _ := c.state()
	if ok {
		cctx, cancel := ownCall(ctx)
		v, err := st.GetTask(cctx, id)
		cancel()
		if !f.failed(ctx, c, err) {
			return v, false, err
		}
	}
	if m != nil {
		if v, ok := m.Task(id); ok {
			return v, true, nil
		}
	}
	return store.Task{}, false, c.unreachable()
}

// byID runs a write on the task id in its region's cluster.
func (f *Fleet) byID(ctx context.Context, id string, op func(context.Context, *store.Store) (store.Task, error)) (store.Task, error) {
	c, _, err := f.locate(ctx, id)
	if err != nil {
		return store.Task{}, err
	}
	region := ""
	if c != nil {
		region = c.rc.Region
	}
	if region == "" {
		return op(ctx, f.home)
	}
	return write(ctx, f, region, op)
}

// ApproveTask approves in the task's region's cluster.
func (f *Fleet) ApproveTask(ctx context.Context, id, planDigest string) (store.Task, error) {
	return f.byID(ctx, id, func(ctx context.Context, st *store.Store) (store.Task, error) {
		return st.ApproveTask(ctx, id, planDigest)
	})
}

// CancelTask cancels in the task's region's cluster.
func (f *Fleet) CancelTask(ctx context.Context, id, reason string) (store.Task, error) {
	return f.byID(ctx, id, func(ctx context.Context, st *store.Store) (store.Task, error) { return st.CancelTask(ctx, id, reason) })
}

// ResetAgentToken resets the task's agent token in its region's cluster.
func (f *Fleet) ResetAgentToken(ctx context.Context, id string) (store.Task, error) {
	return f.byID(ctx, id, func(ctx context.Context, st *store.Store) (store.Task, error) { return st.ResetAgentToken(ctx, id) })
}

// ownRead runs a read on a region cluster: live when it answers, else fromMirror
// (stale); nil fromMirror makes an unreachable cluster an *UnreachableError.
func ownRead[T any](ctx context.Context, f *Fleet, c *cluster, live func(context.Context, *store.Store) (T, error), fromMirror func(*store.Mirror) (T, error)) (T, Stale, error) {
	var zero T
	st, m, ok, _ := c.state()
	if ok {
		cctx, cancel := ownCall(ctx)
		v, err := live(cctx, st)
		cancel()
		if !f.failed(ctx, c, err) {
			return v, false, err
		}
	}
	if fromMirror == nil {
		return zero, false, c.unreachable()
	}
	if m == nil || !m.Loaded() {
		return zero, true, nil // never loaded: nothing known yet
	}
	v, err := fromMirror(m)
	return v, true, err
}

type taskPage struct {
	tasks []store.Task
	marks store.PageMarks
}

// TaskPage is one page of the tasks of a region ("" for every region) in a status
// ("" for all), newest first; with hardware when whole (a mirror holds none). stale
// names the regions served from memory.
func (f *Fleet) TaskPage(ctx context.Context, region string, status store.Status, p store.Page, whole bool) ([]store.Task, store.PageMarks, []string, error) {
	if status != "" && !status.Valid() {
		return nil, store.PageMarks{}, nil, &store.ValidationError{Field: "status", Message: "unknown status " + string(status)}
	}
	homePage := f.home.TaskPage
	if whole {
		homePage = f.home.TaskPageWhole
	}
	if region != "" {
		if err := regionPage(region, p); err != nil {
			return nil, store.PageMarks{}, nil, err
		}
		c := f.own(region)
		if c == nil {
			ts, m, err := homePage(ctx, region, status, p)
			return ts, m, nil, err
		}
		tp, stale, err := f.ownTaskPage(ctx, c, status, p, whole)
		if stale {
			return tp.tasks, tp.marks, []string{region}, err
		}
		return tp.tasks, tp.marks, nil, err
	}
	own := f.ownRegions()
	srcs := []source[store.Task]{{
		page: func(ctx context.Context, p store.Page) ([]store.Task, store.PageMarks, bool, error) {
			ts, m, err := homePage(ctx, "", status, p)
			return ts, m, false, err
		},
		cursor: func(at pos) string { return store.TaskPageCursor("", status, at.id, at.label) },
		keep:   func(t store.Task) bool { return !own[t.RegionID] },
	}}
	for _, c := range f.all() {
		r := c.rc.Region
		srcs = append(srcs, source[store.Task]{region: r,
			page: func(ctx context.Context, p store.Page) ([]store.Task, store.PageMarks, bool, error) {
				tp, stale, err := f.ownTaskPage(ctx, c, status, p, whole)
				return tp.tasks, tp.marks, bool(stale), err
			},
			cursor: func(at pos) string { return store.TaskPageCursor(r, status, at.id, r) },
		})
	}
	m, err := mergePage(ctx, "fleet/tasks//"+string(status), srcs, func(t store.Task) pos { return pos{id: t.TaskID, label: t.RegionID} }, p)
	return m.items, m.marks, m.stale, err
}

func (f *Fleet) ownTaskPage(ctx context.Context, c *cluster, status store.Status, p store.Page, whole bool) (taskPage, Stale, error) {
	r := c.rc.Region
	return ownRead(ctx, f, c, func(ctx context.Context, st *store.Store) (taskPage, error) {
		page := st.TaskPage
		if whole {
			page = st.TaskPageWhole
		}
		ts, m, err := page(ctx, r, status, p)
		return taskPage{ts, m}, err
	}, func(m *store.Mirror) (taskPage, error) {
		ts, marks, err := m.TaskPage(status, p)
		return taskPage{ts, marks}, err
	})
}

// CountTasks counts the tasks of a region ("" for all) in a status ("" for all);
// stale names the regions counted from memory.
func (f *Fleet) CountTasks(ctx context.Context, region string, status store.Status) (int, []string, error) {
	if region != "" {
		if err := store.ValidateRegion(region); err != nil {
			return 0, nil, err
		}
		if c := f.own(region); c != nil {
			n, stale, err := f.ownCount(ctx, c, status)
			if stale {
				return n, []string{region}, err
			}
			return n, nil, err
		}
		n, err := f.home.CountTasks(ctx, region, status)
		return n, nil, err
	}
	n, err := f.home.CountTasks(ctx, "", status)
	if err != nil {
		return 0, nil, err
	}
	var stale []string
	for _, c := range f.all() {
		r := c.rc.Region
		left, err := f.home.CountTasks(ctx, r, status) // leftovers of a migration in home
		if err != nil {
			return 0, nil, err
		}
		k, st, err := f.ownCount(ctx, c, status)
		if err != nil {
			return 0, nil, err
		}
		n += k - left
		if st {
			stale = append(stale, r)
		}
	}
	sort.Strings(stale)
	return n, stale, nil
}

func (f *Fleet) ownCount(ctx context.Context, c *cluster, status store.Status) (int, Stale, error) {
	r := c.rc.Region
	return ownRead(ctx, f, c, func(ctx context.Context, st *store.Store) (int, error) {
		return st.CountTasks(ctx, r, status)
	}, func(m *store.Mirror) (int, error) { return m.CountTasks(status), nil })
}

// ListTasks lists the tasks matching fl (a MAC's tasks: few), oldest first.
func (f *Fleet) ListTasks(ctx context.Context, fl store.ListFilter) ([]store.Task, []string, error) {
	var out []store.Task
	var stale []string
	own := f.ownRegions()
	if fl.Region == "" || !own[fl.Region] {
		ts, err := f.home.ListTasks(ctx, fl)
		if err != nil {
			return nil, nil, err
		}
		for _, t := range ts {
			if !own[t.RegionID] {
				out = append(out, t)
			}
		}
	}
	for _, c := range f.all() {
		r := c.rc.Region
		if fl.Region != "" && fl.Region != r {
			continue
		}
		one := fl
		one.Region = r
		ts, st, err := ownRead(ctx, f, c, func(ctx context.Context, s *store.Store) ([]store.Task, error) {
			return s.ListTasks(ctx, one)
		}, func(m *store.Mirror) ([]store.Task, error) { return mirrorTasks(m, one) })
		if err != nil {
			return nil, nil, err
		}
		if st {
			stale = append(stale, r)
		}
		out = append(out, ts...)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out, stale, nil
}

// mirrorTasks is ListTasks over a mirror: every task of fl's status, filtered.
func mirrorTasks(m *store.Mirror, fl store.ListFilter) ([]store.Task, error) {
	var out []store.Task
	p := store.Page{Limit: store.MaxPageLimit}
	for {
		ts, marks, err := m.TaskPage(fl.Status, p)
		if err != nil {
			return nil, err
		}
		for _, t := range ts {
			if fl.MAC == "" || t.TargetMAC == fl.MAC {
				out = append(out, t)
			}
		}
		if marks.Next == "" {
			return out, nil
		}
		p.After = marks.Next
	}
}

// OpenTaskForMAC is the open task of mac in region (ErrNotFound: none).
func (f *Fleet) OpenTaskForMAC(ctx context.Context, region, mac string) (store.Task, error) {
	c := f.own(region)
	if c == nil {
		return f.home.OpenTaskForMAC(ctx, region, mac)
	}
	t, _, err := ownRead(ctx, f, c, func(ctx context.Context, st *store.Store) (store.Task, error) {
		return st.OpenTaskForMAC(ctx, region, mac)
	}, func(m *store.Mirror) (store.Task, error) {
		ts, err := mirrorTasks(m, store.ListFilter{MAC: mac})
		if err != nil {
			return store.Task{}, err
		}
		for _, t := range ts {
			if t.Status.Open() {
				return t, nil
			}
		}
		return store.Task{}, fmt.Errorf("%w: open task for %s", store.ErrNotFound, mac)
	})
	if err == nil && t.TaskID == "" {
		return t, fmt.Errorf("%w: open task for %s", store.ErrNotFound, mac)
	}
	return t, err
}

// ---- unmatched reports

// UnmatchedPage is one page of a region's ("" for all) unmatched reports, newest
// first (from a mirror: without hardware).
func (f *Fleet) UnmatchedPage(ctx context.Context, region string, p store.Page, withHardware bool) ([]store.UnmatchedReport, store.PageMarks, []string, error) {
	type page struct {
		us []store.UnmatchedReport
		m  store.PageMarks
	}
	ownPage := func(ctx context.Context, c *cluster, p store.Page) (page, Stale, error) {
		r := c.rc.Region
		return ownRead(ctx, f, c, func(ctx context.Context, st *store.Store) (page, error) {
			us, m, err := st.UnmatchedPage(ctx, r, p, withHardware)
			return page{us, m}, err
		}, func(m *store.Mirror) (page, error) {
			us, marks, err := m.UnmatchedPage(p)
			return page{us, marks}, err
		})
	}
	if region != "" {
		if err := regionPage(region, p); err != nil {
			return nil, store.PageMarks{}, nil, err
		}
		c := f.own(region)
		if c == nil {
			us, m, err := f.home.UnmatchedPage(ctx, region, p, withHardware)
			return us, m, nil, err
		}
		pg, stale, err := ownPage(ctx, c, p)
		if stale {
			return pg.us, pg.m, []string{region}, err
		}
		return pg.us, pg.m, nil, err
	}
	own := f.ownRegions()
	srcs := []source[store.UnmatchedReport]{{
		page: func(ctx context.Context, p store.Page) ([]store.UnmatchedReport, store.PageMarks, bool, error) {
			us, m, err := f.home.UnmatchedPage(ctx, "", p, withHardware)
			return us, m, false, err
		},
		cursor: func(at pos) string { return store.UnmatchedPageCursor("", at.id, at.label) },
		keep:   func(u store.UnmatchedReport) bool { return !own[u.Region] },
	}}
	for _, c := range f.all() {
		r := c.rc.Region
		srcs = append(srcs, source[store.UnmatchedReport]{region: r,
			page: func(ctx context.Context, p store.Page) ([]store.UnmatchedReport, store.PageMarks, bool, error) {
				pg, stale, err := ownPage(ctx, c, p)
				return pg.us, pg.m, bool(stale), err
			},
			cursor: func(at pos) string { return store.UnmatchedPageCursor(r, at.id, r) },
		})
	}
	m, err := mergePage(ctx, "fleet/unmatched/", srcs, func(u store.UnmatchedReport) pos { return pos{id: u.ID, label: u.Region} }, p)
	return m.items, m.marks, m.stale, err
}

// GetUnmatched reads one report, hardware included (a region cluster that does not
// answer: *UnreachableError, a mirror holds no hardware).
func (f *Fleet) GetUnmatched(ctx context.Context, region, id string) (store.UnmatchedReport, error) {
	c := f.own(region)
	if c == nil {
		return f.home.GetUnmatched(ctx, region, id)
	}
	u, _, err := ownRead(ctx, f, c, func(ctx context.Context, st *store.Store) (store.UnmatchedReport, error) {
		return st.GetUnmatched(ctx, region, id)
	}, nil)
	return u, err
}

// MatchUnmatched matches a report in its region's cluster.
func (f *Fleet) MatchUnmatched(ctx context.Context, region, id string, m store.MatchRequest) (store.Task, error) {
	if err := store.ValidateRegion(region); err != nil {
		return store.Task{}, err
	}
	return write(ctx, f, region, func(ctx context.Context, st *store.Store) (store.Task, error) {
		return st.MatchUnmatched(ctx, region, id, m)
	})
}

// ---- region cloud-init defaults

// RegionCloudInit reads region's cloud-init defaults from its cluster.
func (f *Fleet) RegionCloudInit(ctx context.Context, region string) (*contract.CloudInit, error) {
	if err := store.ValidateRegion(region); err != nil {
		return nil, err
	}
	c := f.own(region)
	if c == nil {
		return f.home.RegionCloudInit(ctx, region)
	}
	v, _, err := ownRead(ctx, f, c, func(ctx context.Context, st *store.Store) (*contract.CloudInit, error) {
		return st.RegionCloudInit(ctx, region)
	}, nil)
	return v, err
}

// SetRegionCloudInit writes region's cloud-init defaults in its cluster.
func (f *Fleet) SetRegionCloudInit(ctx context.Context, region string, ci *contract.CloudInit) error {
	if err := store.ValidateRegion(region); err != nil {
		return err
	}
	_, err := write(ctx, f, region, func(ctx context.Context, st *store.Store) (struct{}, error) {
		return struct{}{}, st.SetRegionCloudInit(ctx, region, ci)
	})
	return err
}

// ---- audit

// AuditPage is one page of the audit trail matching fl, newest first. A region's (or
// a task's) entries are in its region's cluster; every region's are home's (control
// entries and the shared regions) merged with each region cluster's that answers
// (unreachable ones are named in skipped: a mirror holds no audit).
func (f *Fleet) AuditPage(ctx context.Context, fl store.AuditFilter, p store.Page) ([]store.AuditEntry, store.PageMarks, []string, error) {
	if fl.TaskID != "" && fl.Region == "" {
		c, t, err := f.locate(ctx, fl.TaskID)
		switch {
		case errors.Is(err, store.ErrNotFound):
			return []store.AuditEntry{}, store.PageMarks{}, nil, nil
		case err != nil:
			return nil, store.PageMarks{}, nil, err
		case c != nil:
			fl.Region = c.rc.Region
		case t != nil:
			fl.Region = t.RegionID
		}
	}
	if fl.Region != "" {
		if err := regionPage(fl.Region, p); err != nil {
			return nil, store.PageMarks{}, nil, err
		}
		c := f.own(fl.Region)
		if c == nil {
			es, m, err := f.home.AuditPage(ctx, fl, p)
			return es, m, nil, err
		}
		type page struct {
			es []store.AuditEntry
			m  store.PageMarks
		}
		pg, _, err := ownRead(ctx, f, c, func(ctx context.Context, st *store.Store) (page, error) {
			es, m, err := st.AuditPage(ctx, fl, p)
			return page{es, m}, err
		}, nil)
		return pg.es, pg.m, nil, err
	}
	own := f.ownRegions()
	srcs := []source[store.AuditEntry]{{
		page: func(ctx context.Context, p store.Page) ([]store.AuditEntry, store.PageMarks, bool, error) {
			es, m, err := f.home.AuditPage(ctx, fl, p)
			return es, m, false, err
		},
		cursor: func(at pos) string { return auditCursor(fl, at) },
		keep:   func(e store.AuditEntry) bool { return !own[e.Region] },
	}}
	var skipped []string
	var mu sync.Mutex
	for _, c := range f.all() {
		r := c.rc.Region
		if _, _, ok, _ := c.state(); !ok {
			skipped = append(skipped, r)
			continue
		}
		srcs = append(srcs, source[store.AuditEntry]{region: r,
			page: func(ctx context.Context, p store.Page) ([]store.AuditEntry, store.PageMarks, bool, error) {
				st, _, ok, _ := c.state()
				if ok {
					cctx, cancel := ownCall(ctx)
					es, m, err := st.AuditPage(cctx, fl, p)
					cancel()
					if !f.failed(ctx, c, err) {
						return es, m, false, err
					}
				}
				mu.Lock()
				skipped = append(skipped, r)
				mu.Unlock()
				return nil, store.PageMarks{}, false, nil
			},
			cursor: func(at pos) string { return auditCursor(fl, at) },
		})
	}
	key := func(e store.AuditEntry) pos { return pos{id: e.ID, label: e.Region + "/" + e.TaskID} }
	m, err := mergePage(ctx, fmt.Sprintf("fleet/audit//%s/%s/%s/%d", fl.TaskID, fl.Actor, fl.Action, fl.Since.Unix()), srcs, key, p)
	sort.Strings(skipped)
	return m.items, m.marks, skipped, err
}

// auditCursor is a source's cursor at a merged audit place (label: region/task).
func auditCursor(fl store.AuditFilter, at pos) string {
	region, task, _ := strings.Cut(at.label, "/")
	return store.AuditPageCursor(fl, store.AuditEntry{ID: at.id, Region: region, TaskID: task})
}
