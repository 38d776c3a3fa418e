package control

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/federation"
	"lpmos.dev/lpmos/store"
)

// overview is the operator's picture of the fleet, shared by the pages and the live
// push: it turns store reads into region, unmatched-report and task views, and owns
// what the control plane remembers between reads (progress rates, each region's health
// history and last heartbeat, the unmatched total). The hub records into it when the
// watch says regions changed (observe); the pages and the push only read from it, so
// rendering a page never changes what another page shows.
type overview struct {
	fleet  *federation.Fleet
	alert  int // unmatched reports per region above which a region alerts
	rates  *rateTracker
	health *healthLog

	mu       sync.Mutex
	total    int      // unmatched reports, as the hub last observed them
	names    []string // the regions' names, as the hub last observed them
	observed bool     // total and names are set
}

func newOverview(fl *federation.Fleet, alert int) *overview {
	return &overview{fleet: fl, alert: alert, rates: newRateTracker(), health: newHealthLog()}
}

// regions reads every region (one transaction, keys only but for the region keys) as
// views, with the total of unmatched reports. An offline region shows its last
// heartbeat as the health log saw it. It records nothing.
func (o *overview) regions(ctx context.Context) ([]regionView, int, error) {
	at := time.Now().UTC()
	rs, err := o.fleet.ListRegions(ctx)
	if err != nil {
		return nil, 0, err
	}
	out := make([]regionView, 0, len(rs))
	total := 0
	for _, r := range rs {
		v := newRegionView(r, o.alert)
		v.readAt = at
		total += v.Unmatched
		out = append(out, v)
	}
	o.health.annotate(out)
	return out, total, nil
}

// observe reads the regions as regions does and records what it saw: health changes,
// last heartbeats and the unmatched total. The hub calls it when the watch says a
// region, a report or a task's status changed (and after every gap in the watch), so
// the history does not depend on anyone looking at a page.
func (o *overview) observe(ctx context.Context) ([]regionView, int, error) {
	rv, total, err := o.regions(ctx)
	if err != nil {
		return nil, 0, err
	}
	o.health.record(rv)
	o.health.annotate(rv) // a region that just went offline: its last heartbeat
	names := make([]string, len(rv))
	for i, r := range rv {
		names[i] = r.Name
	}
	o.mu.Lock()
	o.total, o.names, o.observed = total, names, true
	o.mu.Unlock()
	return rv, total, nil
}

// regionNames is the regions' names as last observed (a region appears with the
// hub's next observation, within its flush delay), read from the store before the
// first observation: a filter's choices without reading every region's counts.
func (o *overview) regionNames(ctx context.Context) ([]string, error) {
	o.mu.Lock()
	names, ok := o.names, o.observed
	o.mu.Unlock()
	if ok {
		return names, nil
	}
	return o.fleet.RegionNames(ctx)
}

// unmatchedTotal is the number of unmatched reports as last observed (ok is false
// before the first observation). It trails a change by the hub's flush delay; the live
// script keeps an open page's count current.
func (o *overview) unmatchedTotal() (n int, ok bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.total, o.observed
}

// unmatched lists the newest max unmatched reports of a region ("" for all) as views,
// newest first: one page, with the page's hardware only (for the summaries).
func (o *overview) unmatched(ctx context.Context, region string, max int) ([]unmatchedView, error) {
	us, _, _, err := o.fleet.UnmatchedPage(ctx, region, store.Page{Limit: max}, true)
	if err != nil {
		return nil, err
	}
	out := make([]unmatchedView, 0, len(us))
	for _, u := range us {
		out = append(out, newUnmatchedView(u))
	}
	return out, nil
}

// task is one task as a view, with the rate and ETA of its install; stale when it is
// shown as last seen (its region's cluster does not answer).
func (o *overview) task(t store.Task, stale bool) taskView {
	v := newTaskView(t, o.rates)
	v.Stale = stale
	return v
}

// taskPage is one page of tasks as views, newest first: keys-only index reads, then
// only the page's tasks, without hardware.
func (o *overview) taskPage(ctx context.Context, region string, status store.Status, p store.Page) ([]taskView, store.PageMarks, error) {
	tasks, marks, stale, err := o.fleet.TaskPage(ctx, region, status, p, false)
	if err != nil {
		return nil, marks, err
	}
	out := make([]taskView, 0, len(tasks))
	for _, t := range tasks {
		out = append(out, o.task(t, slices.Contains(stale, t.RegionID)))
	}
	return out, marks, nil
}

// history is a region's health changes, newest first, as of rv (a view regions just
// read): a change the hub has not recorded yet is shown, not recorded.
func (o *overview) history(rv regionView) []healthEvent { return o.health.history(rv) }

// since is when the health history starts (this control plane's start).
func (o *overview) since() time.Time { return o.health.started }

// healthLog keeps, per region, the health changes this control plane has observed
// since it started, and the last heartbeat seen of each (in memory only: a restart
// starts a new history).
type healthLog struct {
	mu       sync.Mutex
	started  time.Time
	observed time.Time             // when the last recorded read began
	last     map[string]string     // health: online, offline, unreachable (its etcd does not answer)
	lastBeat map[string]regionView // as last seen online
	events   map[string][]healthEvent
}

type healthEvent struct {
	At     time.Time
	Online bool
	Health string
	Note   string
}

const healthLogMax = 100

func newHealthLog() *healthLog {
	return &healthLog{started: time.Now().UTC(), last: map[string]string{}, lastBeat: map[string]regionView{}, events: map[string][]healthEvent{}}
}

// record notes the regions' state as one read saw it (only changes are kept) and the
// heartbeat of each online region. A read older than one already recorded is ignored.
func (h *healthLog) record(rs []regionView) {
	if len(rs) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	at := rs[0].readAt // one read: one time
	if at.Before(h.observed) {
		return
	}
	h.observed = at
	for _, r := range rs {
		if r.Heartbeat != nil {
			h.lastBeat[r.Name] = r
		}
		prev, seen := h.last[r.Name]
		if seen && prev == r.Health {
			continue
		}
		h.last[r.Name] = r.Health
		ev := append(h.events[r.Name], healthEvent{At: at, Online: r.Online, Health: r.Health, Note: changeNote(seen, r.Health)})
		if len(ev) > healthLogMax {
			ev = ev[len(ev)-healthLogMax:]
		}
		h.events[r.Name] = ev
	}
}

func changeNote(seenBefore bool, health string) string {
	if !seenBefore {
		return "first seen " + health
	}
	return "went " + health
}

// annotate fills in, for each offline region, the last heartbeat recorded: the key is
// gone with its lease, so say what it said last.
func (h *healthLog) annotate(rs []regionView) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range rs {
		r := &rs[i]
		if r.Heartbeat != nil {
			continue
		}
		if last, ok := h.lastBeat[r.Name]; ok {
			r.LastSeen, r.APIURL, r.Version = last.Heartbeat, last.APIURL, last.Version
		}
	}
}

// history returns a region's changes, newest first, as of rv: when rv was read after
// the last recorded read and shows a change the log has not recorded yet (the hub
// records it within its flush delay), that change comes first, dated by rv's read.
func (h *healthLog) history(rv regionView) []healthEvent {
	h.mu.Lock()
	defer h.mu.Unlock()
	rec := h.events[rv.Name]
	out := make([]healthEvent, 0, len(rec)+1)
	if prev, seen := h.last[rv.Name]; (!seen || prev != rv.Health) && !rv.readAt.IsZero() && rv.readAt.After(h.observed) {
		out = append(out, healthEvent{At: rv.readAt, Online: rv.Online, Health: rv.Health, Note: changeNote(seen, rv.Health)})
	}
	for i := len(rec) - 1; i >= 0; i-- { // recorded in order
		out = append(out, rec[i])
	}
	return out
}

// rateTracker derives rate and ETA from successive progress samples when the agent
// does not report them itself. Samples are in memory: after a restart the first
// update of each install shows no rate until the next one.
type rateTracker struct {
	mu   sync.Mutex
	last map[string]contract.Progress // previous sample per task
	prev map[string]contract.Progress // the one before, for a rate over one interval
}

func newRateTracker() *rateTracker {
	return &rateTracker{last: map[string]contract.Progress{}, prev: map[string]contract.Progress{}}
}

// observe records p (once per UpdatedAt, so re-rendering a page does not skew the
// rate) and returns the rate and ETA texts.
func (r *rateTracker) observe(id string, p contract.Progress) (rate, eta string) {
	r.mu.Lock()
	last, ok := r.last[id]
	if !ok || p.UpdatedAt.After(last.UpdatedAt) {
		if ok {
			r.prev[id] = last
		}
		r.last[id], last = p, p
	}
	prev, hasPrev := r.prev[id]
	r.mu.Unlock()

	bps, etaSec := p.RateBps, p.ETASeconds
	var pctPerSec float64
	if hasPrev {
		if dt := last.UpdatedAt.Sub(prev.UpdatedAt).Seconds(); dt > 0 {
			if bps == 0 && last.BytesDone > prev.BytesDone {
				bps = float64(last.BytesDone-prev.BytesDone) / dt
			}
			pctPerSec = (last.Percentage - prev.Percentage) / dt
		}
	}
	switch {
	case bps > 0:
		rate = humanBytes(int64(bps)) + "/s"
	case pctPerSec > 0:
		rate = fmt.Sprintf("%.1f %%/min", pctPerSec*60)
	}
	if etaSec <= 0 {
		switch {
		case bps > 0 && p.BytesTotal > p.BytesDone:
			etaSec = float64(p.BytesTotal-p.BytesDone) / bps
		case pctPerSec > 0:
			etaSec = (100 - p.Percentage) / pctPerSec
		}
	}
	if etaSec > 0 {
		eta = humanDuration(time.Duration(etaSec * float64(time.Second)))
	}
	return rate, eta
}

func (r *rateTracker) forget(id string) {
	r.mu.Lock()
	delete(r.last, id)
	delete(r.prev, id)
	r.mu.Unlock()
}
