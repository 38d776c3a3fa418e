package wantest

import (
	"context"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"lpmos.dev/lpmos/store"
)

const (
	// cutFor is how long the main WAN cut lasts: the 60 s.
	cutFor = 60 * time.Second
	// catchUpWithin is the bound: once the link is back, the control plane
	// shows every change made during the cut within it.
	catchUpWithin = 10 * time.Second
	// shortCut is how long the later cuts last (the compaction and the catch-up
	// sweep): what they measure depends on what changed, not on how long the link was
	// down, and six 60 s cuts would not fit the package's few minutes in make test.
	shortCut = 10 * time.Second
)

// One lab, cut four times:
//
//  1. 60 s with an install streaming in dc2, a second dc2 machine approved but off, a
//     third waiting for approval: dc2 installs all three on its own (the third by a
//     break-glass approval on the appliance host), stores an unknown machine as
//     unmatched; dc1 installs a machine through the control plane meanwhile; the
//     control plane shows dc2 unreachable and stale and refuses its writes with 503.
//     Link back: within 10 s the control plane shows all of it, the trail in order,
//     each entry once, the break-glass approval as local:alice.
//  2. dc2's etcd compacted past everything the control plane saw: after the link is
//     back the control plane shows the same end state (its mirror reloads).
//  3. N = 10, 100, 1000 changes in dc2 during a cut: catch-up time for each.
//
// Each cut after the first starts by checking that the control plane serves dc2 from
// memory exactly as dc2's etcd was before the cut: its mirror caught up with the
// previous one (resumed from its revision after cut 1, reloaded after cut 2).
func TestWANCut(t *testing.T) {
	l := newLab(t)
	began := time.Now()
	e := l.mainCut()
	want := l.compactionCut(e)
	for _, n := range []int{10, 100, 1000} {
		want = l.sweepCut(want, n)
	}
	// A last short cut shows the mirror caught up with the sweep's last cut too.
	l.setLink(false)
	l.awaitUnreachable(time.Now())
	l.staleView(want)
	l.setLink(true)
	l.poll("dc2 reachable again", catchUpWithin, func() bool {
		r := l.regions()["dc2"]
		return r.Reachable != nil && *r.Reachable
	})
	figure(t, "total", time.Since(began), "the whole test after its set-up")
}

// mainCut is scenario 1 and the break-glass approval. It returns e, a dc2 machine
// whose task waits (pending) for the compaction cut.
func (l *lab) mainCut() (e *machine) {
	t := l.t
	a, b, c := l.newMachine("a", "dc2"), l.newMachine("b", "dc2"), l.newMachine("c", "dc2")
	for _, m := range []*machine{a, b, c} {
		l.create(m)
		l.boot(m)
	}
	// Created long before any cut, so that the control plane's mirror holds it when a
	// cut begins (what it shows from memory is compared with dc2's etcd).
	e = l.newMachine("e", "dc2")
	l.create(e)
	da, db := l.reported(a), l.reported(b)
	l.reported(c)
	// b was inventoried and powered off; it is approved while off and boots in the cut.
	b.agent.Stop(5 * time.Second)
	l.approve(a, da)
	l.approve(b, db)
	l.waitBytes(a, 0.2)
	if st, err := l.task(b); err != nil || st.Status != store.StatusApproved {
		t.Fatalf("b before the cut: %v %v, want approved", st.Status, err)
	}
	before := l.dc2State()
	if before.tasks[a.taskID] != store.StatusInstalling {
		t.Fatalf("a at the cut: %q, want installing (mid-stream)", before.tasks[a.taskID])
	}
	var metric0 struct{ count, sum float64 }
	metric0.count, metric0.sum = l.catchUpMetric()
	logged, _ := l.mirrorLog()

	l.setLink(false)
	cut := time.Now()
	figure(t, "cut1 unreachable_shown", l.awaitUnreachable(cut), "link down -> GET /api/v1/regions shows dc2 reachable=false")
	figure(t, "cut1 unreachable_pushed", l.regionPushed(l.feed, cut, false, 10*time.Second).Sub(cut), "link down -> the live push shows dc2 unreachable, stale")
	l.staleView(before)
	l.cutAPI(a, c, before)

	// dc2 on its own: b boots (its boot script carries its agent token) and installs.
	l.boot(b, "--agent-token="+l.bootToken(b))
	// c: a break-glass approval on the appliance host, of the plan `tasks show` prints.
	show, err := l.breakGlass("show", c.taskID)
	if err != nil {
		t.Fatalf("tasks show on dc2's host during the cut: %v\n%s", err, show)
	}
	dg := regexp.MustCompile(`--digest ([0-9a-f]+)`).FindStringSubmatch(show)
	if dg == nil {
		t.Fatalf("tasks show printed no approve command with a digest:\n%s", show)
	}
	const reason = "WAN to hq cut; rack c needed today"
	// A digest that is not the stored plan's, and no reason: refused, nothing written.
	for _, args := range [][]string{{"--digest", strings.Repeat("0", len(dg[1])), "--as", "alice", "--reason", reason},
		{"--digest", dg[1], "--as", "alice"}} {
		if out, err := l.breakGlass(append([]string{"approve", c.taskID}, args...)...); err == nil || !strings.Contains(out, "refused") && !strings.Contains(out, "--reason") {
			t.Fatalf("break-glass approve %v: %v, want refused:\n%s", args, err, out)
		}
	}
	if ct, err := l.task(c); err != nil || ct.Status != store.StatusPendingApproval {
		t.Fatalf("c after refused break-glass approvals: %v %v, want pending_approval", ct.Status, err)
	}
	if out, err := l.breakGlass("approve", c.taskID, "--digest", dg[1], "--as", "alice", "--reason", reason); err != nil ||
		!strings.Contains(out, "approved by local:alice") {
		t.Fatalf("break-glass approval of c: %v\n%s", err, out)
	}
	// An unknown machine lands as unmatched, in dc2's etcd.
	u := l.newMachine("u", "dc2")
	l.boot(u, "--max-attempts=1")
	l.poll("u's report stored as unmatched in dc2's etcd", 30*time.Second, func() bool {
		ctx, cancel := shortCtx()
		defer cancel()
		reports, _, err := l.dc2st.UnmatchedPage(ctx, "dc2", store.Page{Limit: store.MaxPageLimit}, false)
		for _, r := range reports {
			if err == nil && r.MACAddress == u.mac {
				return true
			}
		}
		return false
	})
	// dc1 works fully through the control plane meanwhile.
	d := l.newMachine("d", "dc1")
	l.create(d)
	l.boot(d)
	l.approve(d, l.reported(d))

	for _, m := range []*machine{a, b, c, d} {
		l.installed(m, cutFor)
	}
	figure(t, "cut1 installs_done", time.Since(cut), "a (mid-stream at the cut), b (booted in the cut), c (break-glass), d (dc1) installed")
	var dv apiTask
	if code, body := l.call("GET", "/api/v1/tasks/"+d.taskID, nil, &dv); code != http.StatusOK || dv.Status != store.StatusCompleted || dv.Stale {
		t.Fatalf("dc1's d through the control plane during the cut: %d %s", code, body)
	}
	l.staleView(before) // still the state at the cut: nothing of dc2 leaks through the cut
	if left := cutFor - time.Since(cut); left > 0 {
		time.Sleep(left) // the cut lasts cutFor: its length is what is under test here
	}
	want := l.dc2State()
	l.setLink(true)
	up := time.Now()
	figure(t, "cut1 catchup_api", l.awaitCatchUp(want, up, catchUpWithin), fmt.Sprintf("%s cut; link up -> the API shows every dc2 change (%s)", cutFor, want))
	figure(t, "cut1 catchup_mirror", l.mirrorCaughtUp(metric0, catchUpWithin), "lpmos_control_region_catchup_seconds: link up -> mirror at dc2's revision")
	if r := l.resyncsAfter(logged); r != 0 {
		t.Fatalf("dc2's mirror reloaded %d times to catch up after the first cut, want 0: its watch resumes from the revision it had", r)
	}
	// What an open page gets: dc2 reachable again, and the installs of the cut done.
	live := l.regionPushed(l.feed, up, true, catchUpWithin)
	done := map[string]store.Status{a.taskID: store.StatusCompleted, b.taskID: store.StatusCompleted, c.taskID: store.StatusCompleted}
	if at := l.tasksPushed(l.feed, up, done, catchUpWithin); at.After(live) {
		live = at
	}
	if took := live.Sub(up); took > catchUpWithin {
		t.Fatalf("the live push showed dc2's changes %s after the link came back, want within %s", took, catchUpWithin)
	}
	figure(t, "cut1 catchup_live", live.Sub(up), "link up -> the live push (/live) shows dc2 reachable and a, b, c completed")
	l.trail(a, "admin", "")
	l.trail(b, "admin", "")
	l.trail(c, "local:alice", reason)
	var got apiUnmatched
	l.call("GET", "/api/v1/unmatched?region=dc2&limit=500", nil, &got)
	n := 0
	for _, r := range got.Reports {
		if r.MACAddress == u.mac {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("u's unmatched report listed %d times after the cut, want once", n)
	}
	return e
}

// cutAPI checks the control API during a cut: dc2's task answered from memory
// (stale), writes to dc2 refused 503 with a message within 2 s and nothing written,
// pages not failing.
func (l *lab) cutAPI(a, c *machine, before regionState) {
	t := l.t
	var got apiTask
	if code, body := l.call("GET", "/api/v1/tasks/"+a.taskID, nil, &got); code != http.StatusOK || !got.Stale || got.TaskID != a.taskID {
		t.Fatalf("GET dc2's task during the cut: %d %s, want 200 with stale: true", code, body)
	}
	refused := func(what, method, path string, body any) {
		t.Helper()
		var e apiError
		start := time.Now()
		code, raw := l.call(method, path, body, &e)
		took := time.Since(start)
		if code != http.StatusServiceUnavailable || !strings.Contains(e.Message, "dc2") || !strings.Contains(e.Message, "unreachable") || e.RetryAfter <= 0 {
			t.Fatalf("%s during the cut: %d %s, want 503 naming dc2 unreachable, with retry_after", what, code, raw)
		}
		if took > 3*time.Second { // 2 s by design, slack for a loaded 2-core machine
			t.Fatalf("%s during the cut answered after %s, want within 2 s", what, took)
		}
		figure(t, "cut1 refused_"+strings.Fields(what)[0], took, what+": 503 "+e.Message)
	}
	ct, _ := l.task(c)
	refused("approve on dc2", "POST", "/api/v1/tasks/"+c.taskID+"/approve", map[string]any{"plan_digest": ct.Plan.Digest})
	refused("create in dc2", "POST", "/api/v1/tasks", store.NewTask{RegionID: "dc2", TargetMAC: "52:54:00:16:ff:01", OSRef: osRef})
	if now := l.dc2State(); before.diff(now) != "" {
		t.Fatalf("dc2's etcd changed after refused writes: %s", before.diff(now))
	}
	// The pages: never a 500; dc2's and its task's say since when it is unreachable.
	for page, says := range map[string][]string{"/": nil, "/tasks?region=dc2": nil, "/unmatched": nil, "/audit": nil,
		"/regions/dc2": {"unreachable since"}, "/tasks/" + a.taskID: {"unreachable since", "stale"}} {
		code, body := l.call("GET", page, nil, nil)
		if code != http.StatusOK {
			t.Fatalf("page %s during the cut: %d\n%.500s", page, code, body)
		}
		for _, w := range says {
			if !strings.Contains(body, w) {
				t.Fatalf("page %s during the cut does not say %q:\n%.3000s", page, w, body)
			}
		}
	}
}

// trail checks, through the control API after the cut, a dc2 machine's task and its
// audit trail: completed, fresh, the timeline in order; every entry dc2's etcd holds,
// once, in order; one approval by approver (a local one with its reason when reason is
// set), one start, one completion.
func (l *lab) trail(m *machine, approver, reason string) {
	t := l.t
	var got apiTask
	if code, body := l.call("GET", "/api/v1/tasks/"+m.taskID, nil, &got); code != http.StatusOK {
		t.Fatalf("GET %s's task: %d %s", m.name, code, body)
	}
	if got.Status != store.StatusCompleted || got.Stale {
		t.Fatalf("%s's task after the cut: %s stale=%v, want completed, fresh", m.name, got.Status, got.Stale)
	}
	if got.Approval == nil || got.Approval.ApprovedBy != approver {
		t.Fatalf("%s's approval after the cut: %+v, want by %s", m.name, got.Approval, approver)
	}
	ts := []*time.Time{&got.CreatedAt, got.ReportedAt, got.ApprovedAt, got.StartedAt, got.FinishedAt}
	for i, at := range ts {
		if at == nil || at.IsZero() || i > 0 && at.Before(*ts[i-1]) {
			t.Fatalf("%s's timeline incomplete or out of order: created %v reported %v approved %v started %v finished %v",
				m.name, got.CreatedAt, got.ReportedAt, got.ApprovedAt, got.StartedAt, got.FinishedAt)
		}
	}
	var page apiAudit
	if code, body := l.call("GET", "/api/v1/audit?region=dc2&task="+m.taskID+"&limit=500", nil, &page); code != http.StatusOK {
		t.Fatalf("GET %s's audit trail: %d %s", m.name, code, body)
	}
	direct, err := l.dc2st.ListAudit(stepCtx(t, 10*time.Second), store.AuditFilter{Region: "dc2", TaskID: m.taskID})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Entries) != len(direct) {
		t.Fatalf("%s's audit trail: the API shows %d entries, dc2's etcd holds %d", m.name, len(page.Entries), len(direct))
	}
	count := map[string]int{}
	first := map[string]int{}
	for i, e := range page.Entries { // newest first
		if e.ID != direct[i].ID {
			t.Fatalf("%s's audit entry %d: the API shows %s (%s), dc2's etcd %s (%s)", m.name, i, e.ID, e.Action, direct[i].ID, direct[i].Action)
		}
		if i > 0 && e.Time.After(page.Entries[i-1].Time) {
			t.Fatalf("%s's audit trail out of order at %d: %s after %s", m.name, i, e.Time, page.Entries[i-1].Time)
		}
		count[e.Action]++
		first[e.Action] = len(page.Entries) - i // position oldest first, of the oldest
		if e.Action == store.AuditTaskApprove {
			if e.Actor != approver {
				t.Fatalf("%s approved by %q in the audit trail, want %q", m.name, e.Actor, approver)
			}
			if reason != "" && (e.Kind != store.ActorLocal || e.Detail["reason"] != reason) {
				t.Fatalf("%s's local approval in the audit trail: kind %q reason %q, want local with %q", m.name, e.Kind, e.Detail["reason"], reason)
			}
		}
	}
	for _, a := range []string{store.AuditTaskCreate, store.AuditTaskApprove, store.AuditTaskStart, store.AuditTaskComplete} {
		if count[a] != 1 {
			t.Fatalf("%s's audit trail: %d %s entries, want exactly 1 (all: %v)", m.name, count[a], a, count)
		}
	}
	if count[store.AuditTaskReport] < 1 || !(first[store.AuditTaskCreate] < first[store.AuditTaskReport] &&
		first[store.AuditTaskReport] < first[store.AuditTaskApprove] && first[store.AuditTaskApprove] < first[store.AuditTaskStart] &&
		first[store.AuditTaskStart] < first[store.AuditTaskComplete]) {
		t.Fatalf("%s's audit trail not create < report < approve < start < complete: %v", m.name, first)
	}
}

// compactionCut: during a cut, a local cancel of e's task (its machine never came) and
// unmatched reports in dc2, then dc2's etcd compacted past every revision the control
// plane saw; after the link is back the control plane shows the same state as dc2's
// etcd (and, at the next cut, its mirror holds it: it reloaded).
func (l *lab) compactionCut(e *machine) regionState {
	t := l.t
	var metric0 struct{ count, sum float64 }
	metric0.count, metric0.sum = l.catchUpMetric()
	logged, resyncs := l.mirrorLog()
	before := l.dc2State()

	l.setLink(false)
	cut := time.Now()
	l.awaitUnreachable(cut)
	l.staleView(before)
	const reason = "machine e returned to the vendor"
	if out, err := l.breakGlass("cancel", e.taskID, "--as", "bob", "--reason", reason); err != nil {
		t.Fatalf("break-glass cancel of e: %v\n%s", err, out)
	}
	l.reports(20)
	ctx := stepCtx(t, 30*time.Second)
	resp, err := l.dc2cli.Get(ctx, "/os/health-probe")
	if err != nil {
		t.Fatal(err)
	}
	rev := resp.Header.Revision
	if _, err := l.dc2cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("compact dc2's etcd at %d: %v", rev, err)
	}
	if left := shortCut - time.Since(cut); left > 0 {
		time.Sleep(left) // the cut's length
	}
	want := l.dc2State()
	if want.tasks[e.taskID] != store.StatusCancelled {
		t.Fatalf("e after the local cancel: %q", want.tasks[e.taskID])
	}
	l.setLink(true)
	up := time.Now()
	figure(t, "compacted catchup_api", l.awaitCatchUp(want, up, catchUpWithin), fmt.Sprintf("compacted at revision %d; link up -> the API shows dc2's state (%s)", rev, want))
	figure(t, "compacted catchup_mirror", l.mirrorCaughtUp(metric0, catchUpWithin), "lpmos_control_region_catchup_seconds: link up -> mirror reloaded at dc2's revision")
	if r := l.resyncsAfter(logged); r != resyncs+1 {
		t.Fatalf("dc2's mirror after its revision was compacted: %d reloads in all, want %d (one more)", r, resyncs+1)
	}
	var page apiAudit
	l.call("GET", "/api/v1/audit?region=dc2&task="+e.taskID+"&action=task.cancel", nil, &page)
	if len(page.Entries) != 1 || page.Entries[0].Actor != "local:bob" || page.Entries[0].Detail["reason"] != reason {
		t.Fatalf("e's cancel in the audit trail after the cut: %+v, want one by local:bob", page.Entries)
	}
	return want
}

// sweepCut: n unmatched reports written through dc2's appliance during a cut; the
// control plane's catch-up once the link is back, as the API shows it and as the
// control plane measures its mirror.
func (l *lab) sweepCut(prev regionState, n int) regionState {
	t := l.t
	metric0 := struct{ count, sum float64 }{}
	metric0.count, metric0.sum = l.catchUpMetric()
	l.setLink(false)
	cut := time.Now()
	l.awaitUnreachable(cut)
	l.staleView(prev)
	w0 := time.Now()
	l.reports(n)
	wrote := time.Since(w0)
	if left := shortCut - time.Since(cut); left > 0 {
		time.Sleep(left) // the cut's length
	}
	want := l.dc2State()
	l.setLink(true)
	up := time.Now()
	note := fmt.Sprintf("%d changes in dc2 during a %s cut (written in %.1f s); link up -> the API shows them (%s)", n, time.Since(cut).Round(time.Second), wrote.Seconds(), want)
	figure(t, fmt.Sprintf("n=%d catchup_api", n), l.awaitCatchUp(want, up, catchUpWithin), note)
	figure(t, fmt.Sprintf("n=%d catchup_mirror", n), l.mirrorCaughtUp(metric0, catchUpWithin), "lpmos_control_region_catchup_seconds")
	mem, ok := l.metrics()["lpmos_control_mirror_bytes"]
	if !ok || mem <= 0 {
		t.Fatalf("lpmos_control_mirror_bytes for dc2: %v (present %v)", mem, ok)
	}
	record(t, fmt.Sprintf("n=%d mirror_bytes", n), fmt.Sprintf("%.0f KiB", mem/1024), fmt.Sprintf("lpmos_control_mirror_bytes: the control plane's memory for dc2 (%s)", want))
	return want
}

var reportSeq atomic.Int32

// reports has n machines nobody expects report to dc2's appliance (8 at a time): n
// unmatched reports (the oldest evicted over store.UnmatchedMax).
func (l *lab) reports(n int) {
	l.t.Helper()
	batch := reportSeq.Add(1)
	var wg sync.WaitGroup
	var failed atomic.Int32
	var lastErr atomic.Value
	next := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				mac := fmt.Sprintf("52:54:01:%02x:%02x:%02x", batch, i>>8, i&0xff)
				body := map[string]any{"mac_address": mac, "hardware": map[string]any{"cpu": map[string]any{"cores": 1}}}
				code, resp := call(l.dc2HTTP, "POST", fmt.Sprintf("http://127.0.0.1:%d/api/report", applPort), "", body, nil)
				if code != http.StatusNotFound {
					failed.Add(1)
					lastErr.Store(fmt.Sprintf("%d %s", code, resp))
				}
			}
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
feed:
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if f := failed.Load(); f > 0 || ctx.Err() != nil {
		l.t.Fatalf("unmatched reports to dc2's appliance: %d of %d not answered 404 (last: %v), %v", f, n, lastErr.Load(), ctx.Err())
	}
}
