package store_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

var ubuntu = contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}

// createTasks makes n tasks over regions (i % len(regions)), 16 writers at a time, and
// returns their ids.
func createTasks(t *testing.T, s *store.Store, regions []string, macByte byte, n int) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ids := make([]string, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				mac := fmt.Sprintf("02:%02x:%02x:%02x:%02x:01", macByte, i>>16&0xff, i>>8&0xff, i&0xff)
				task, err := s.CreateTask(ctx, store.NewTask{RegionID: regions[i%len(regions)], TargetMAC: mac, OSRef: ubuntu})
				if err != nil {
					select {
					case errs <- err:
					default:
					}
					return
				}
				ids[i] = task.TaskID
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	return ids
}

// walkTasks pages through a task list with limit rows a page and returns the ids in
// the order seen; during (after page 2) runs once.
func walkTasks(t *testing.T, s *store.Store, region string, status store.Status, limit int, during func()) []string {
	t.Helper()
	ctx := context.Background()
	var seen []string
	p := store.Page{Limit: limit}
	for page := 1; ; page++ {
		if page > 100000/limit {
			t.Fatalf("the walk does not end")
		}
		tasks, marks, err := s.TaskPage(ctx, region, status, p)
		if err != nil {
			t.Fatalf("page %d: %v", page, err)
		}
		if len(tasks) > limit || (marks.Next != "" && len(tasks) != limit) {
			t.Fatalf("page %d: %d tasks with limit %d, next %q", page, len(tasks), limit, marks.Next)
		}
		if (page == 1) != (marks.Prev == "") {
			t.Fatalf("page %d: prev %q", page, marks.Prev)
		}
		for _, task := range tasks {
			if task.Hardware != nil {
				t.Fatalf("a page carries hardware: %s", task.TaskID)
			}
			if (region != "" && task.RegionID != region) || (status != "" && task.Status != status) {
				t.Fatalf("page %d: task %s in %s/%s on a list of %q/%q", page, task.TaskID, task.RegionID, task.Status, region, status)
			}
			seen = append(seen, task.TaskID)
		}
		if page == 2 && during != nil {
			during()
		}
		if marks.Next == "" {
			return seen
		}
		p.After = marks.Next
	}
}

// Walking 10,000 tasks a page at a time sees each exactly once, newest first, while
// tasks are created and others change status (move to another range of the status
// index) during the walk; a region's and a status's lists hold just theirs; the
// previous page of a page is the page before it.
func TestTaskPagesWalk10k(t *testing.T) {
	e := storetest.Start(t)
	s, ctx := e.Store, context.Background()
	regions := []string{"dc1", "dc2", "dc3", "dc4"}
	start := time.Now()
	ids := createTasks(t, s, regions, 0, 10000)
	t.Logf("created 10,000 tasks in %s", time.Since(start).Round(time.Millisecond))
	// Some tasks end before the walk: the all-status list merges seven ranges a region.
	for _, id := range ids[:300] {
		if _, err := s.CancelTask(ctx, id, "test"); err != nil {
			t.Fatal(err)
		}
	}

	var added []string
	start = time.Now()
	seen := walkTasks(t, s, "", "", 500, func() {
		added = createTasks(t, s, regions, 1, 40) // newer than any cursor: not in this walk
		for _, id := range ids[300:600] {         // old and new alike: each still once
			if _, err := s.CancelTask(ctx, id, "during the walk"); err != nil {
				t.Fatal(err)
			}
		}
	})
	t.Logf("walked 10,000 tasks, 500 a page, in %s", time.Since(start).Round(time.Millisecond))
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	for _, id := range added {
		want[id] = false
	}
	assertOnceInOrder(t, seen, want)

	// One region, one status: just theirs, and all of them.
	pending := map[string]bool{}
	for i, id := range ids[600:] {
		if regions[(i+600)%len(regions)] == "dc2" {
			pending[id] = true
		}
	}
	for _, id := range added {
		pending[id] = false // may be seen or not: created at the start of this list
	}
	dc2Pending := walkTasks(t, s, "dc2", store.StatusPending, 333, nil)
	assertOnceInOrder(t, dc2Pending, pending)

	// The counts agree with the walks, and the regions are named.
	if n, err := s.CountTasks(ctx, "", ""); err != nil || n != len(ids)+len(added) {
		t.Fatalf("CountTasks of all: %d, %v; want %d", n, err, len(ids)+len(added))
	}
	if n, err := s.CountTasks(ctx, "dc2", store.StatusPending); err != nil || n != len(dc2Pending) {
		t.Fatalf("CountTasks of dc2's pending: %d, %v; want %d", n, err, len(dc2Pending))
	}
	if names, err := s.RegionNames(ctx); err != nil || fmt.Sprint(names) != fmt.Sprint(regions) {
		t.Fatalf("RegionNames: %v, %v; want %v", names, err, regions)
	}

	// Back and forth: page 3's previous page is page 2.
	p1, m1, _ := s.TaskPage(ctx, "dc1", "", store.Page{Limit: 100})
	p2, m2, _ := s.TaskPage(ctx, "dc1", "", store.Page{Limit: 100, After: m1.Next})
	_, m3, _ := s.TaskPage(ctx, "dc1", "", store.Page{Limit: 100, After: m2.Next})
	back, mb, err := s.TaskPage(ctx, "dc1", "", store.Page{Limit: 100, Before: m3.Prev})
	if err != nil || len(back) != 100 || back[0].TaskID != p2[0].TaskID || back[99].TaskID != p2[99].TaskID || mb.Next != m2.Next {
		t.Fatalf("the page before page 3: %d tasks, %v; want page 2", len(back), err)
	}
	// Back from page 2 is the first page, full, with no previous page.
	first, mf, err := s.TaskPage(ctx, "dc1", "", store.Page{Limit: 100, Before: m2.Prev})
	if err != nil || len(first) != 100 || first[0].TaskID != p1[0].TaskID || mf.Prev != "" {
		t.Fatalf("the page before page 2: %d tasks, prev %q, %v; want page 1", len(first), mf.Prev, err)
	}
}

// assertOnceInOrder checks that seen is strictly newest first (UUIDv7 ids sort by
// creation) and holds every id want marks true exactly once, those it marks false at
// most once, and nothing else.
func assertOnceInOrder(t *testing.T, seen []string, want map[string]bool) {
	t.Helper()
	count := map[string]int{}
	for i, id := range seen {
		if i > 0 && seen[i-1] <= id {
			t.Fatalf("row %d: %s after %s: not newest first", i, id, seen[i-1])
		}
		count[id]++
		must, known := want[id]
		switch {
		case !known:
			t.Fatalf("row %d: %s is not on this list", i, id)
		case count[id] > 1:
			t.Fatalf("row %d: %s seen twice", i, id)
		case must:
		}
	}
	for id, must := range want {
		if must && count[id] != 1 {
			t.Fatalf("%s seen %d times, want once (%d rows seen)", id, count[id], len(seen))
		}
	}
}

// 1,000 unmatched reports in two regions, walked 97 a page across both (a page ends
// between two reports of one id at row 291), each seen
// exactly once newest first while new reports arrive; two reports with the same id
// (same MAC, same second) in both regions are told apart by their region. The
// summaries are made from the keys: no hardware.
func TestUnmatchedPagesWalk(t *testing.T) {
	e := storetest.Start(t)
	s, ctx := e.Store, context.Background()
	var mu sync.Mutex
	clock := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	s.SetClock(func() time.Time { mu.Lock(); defer mu.Unlock(); return clock })
	tick := func() { mu.Lock(); clock = clock.Add(time.Second); mu.Unlock() }
	hw := json.RawMessage(`{"cpu":{"cores":8}}`)
	type key struct{ region, id string }
	want := map[key]bool{}
	for i := range 1000 {
		region, mac := "dc1", fmt.Sprintf("06:00:00:00:%02x:%02x", i>>8, i&0xff)
		if i%2 == 1 {
			region = "dc2"
		}
		switch {
		case i%10 == 9:
			mac = fmt.Sprintf("06:00:00:00:%02x:%02x", (i-1)>>8, (i-1)&0xff) // dc1's MAC of the same second
		case i == 400 || i == 700:
			mu.Lock()
			clock = clock.Add(20 * time.Hour) // quiet stretches: the reading windows widen over them
			mu.Unlock()
		default:
			tick()
		}
		res, err := s.Report(ctx, region, mac, hw)
		if err != nil || res.Unmatched == nil {
			t.Fatalf("report %d: %+v %v", i, res, err)
		}
		want[key{region, res.Unmatched.ID}] = true
	}
	if len(want) != 1000 {
		t.Fatalf("%d distinct reports, want 1000", len(want))
	}
	var seen []key
	p := store.Page{Limit: 97}
	for page := 1; page <= 20; page++ {
		reports, marks, err := s.UnmatchedPage(ctx, "", p, false)
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range reports {
			if u.Hardware != nil || u.MACAddress == "" || u.ReceivedAt.IsZero() {
				t.Fatalf("summary %+v", u)
			}
			seen = append(seen, key{u.Region, u.ID})
		}
		if page == 2 {
			for i := range 30 { // newer reports, a third region: not in this walk
				tick()
				if _, err := s.Report(ctx, "dc3", fmt.Sprintf("0a:00:00:00:00:%02x", i), hw); err != nil {
					t.Fatal(err)
				}
			}
		}
		if marks.Next == "" {
			break
		}
		p.After = marks.Next
	}
	if len(seen) != 1000 {
		t.Fatalf("walked %d reports, want 1000", len(seen))
	}
	for i, k := range seen {
		if !want[k] {
			t.Fatalf("row %d: %v is not one of the reports, or seen twice", i, k)
		}
		want[k] = false
		if i > 0 && (seen[i-1].id < k.id || (seen[i-1].id == k.id && seen[i-1].region <= k.region)) {
			t.Fatalf("row %d: %v after %v: not newest first", i, k, seen[i-1])
		}
	}
	// With hardware: the page's reports whole.
	whole, _, err := s.UnmatchedPage(ctx, "dc1", store.Page{Limit: 5}, true)
	if err != nil || len(whole) != 5 || string(whole[0].Hardware) != string(hw) || whole[0].Error == "" {
		t.Fatalf("a page with hardware: %+v %v", whole, err)
	}
}

// A cursor is checked: garbage, one of another list or of other filters, a limit out
// of range, or both directions at once are ErrInvalid, naming the parameter.
func TestBadCursorsRefused(t *testing.T) {
	e := storetest.Start(t)
	s, ctx := e.Store, context.Background()
	createTasks(t, s, []string{"dc1", "dc2"}, 0, 6)
	for i := range 3 {
		if _, err := s.Report(ctx, "dc1", fmt.Sprintf("06:00:00:00:00:%02x", i), json.RawMessage(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	_, tm, err := s.TaskPage(ctx, "dc1", "", store.Page{Limit: 1})
	if err != nil || tm.Next == "" {
		t.Fatalf("first task page: %+v %v", tm, err)
	}
	_, um, err := s.UnmatchedPage(ctx, "dc1", store.Page{Limit: 1}, false)
	if err != nil || um.Next == "" {
		t.Fatalf("first unmatched page: %+v %v", um, err)
	}
	_, am, err := s.AuditPage(ctx, store.AuditFilter{Region: "dc1"}, store.Page{Limit: 1})
	if err != nil || am.Next == "" {
		t.Fatalf("first audit page: %+v %v", am, err)
	}
	check := func(what, field string, err error) {
		t.Helper()
		var ve *store.ValidationError
		if !errors.As(err, &ve) || ve.Field != field || !errors.Is(err, store.ErrInvalid) {
			t.Errorf("%s: %v, want a ValidationError on %s", what, err, field)
		}
	}
	_, _, err = s.TaskPage(ctx, "dc1", "", store.Page{Limit: 1, After: "not a cursor!"})
	check("garbage", "after", err)
	// The right list (the cursor's layout, written out), an id that is no UUID.
	noTask := base64.RawURLEncoding.EncodeToString([]byte("tasks/dc1/\x00not-a-uuid\x00dc1"))
	_, _, err = s.TaskPage(ctx, "dc1", "", store.Page{Limit: 1, Before: noTask})
	check("a cursor naming no task", "before", err)
	_, _, err = s.TaskPage(ctx, "dc1", "", store.Page{Limit: 1, After: um.Next})
	check("an unmatched cursor on tasks", "after", err)
	_, _, err = s.TaskPage(ctx, "dc2", "", store.Page{Limit: 1, After: tm.Next})
	check("dc1's cursor on dc2", "after", err)
	_, _, err = s.TaskPage(ctx, "dc1", store.StatusPending, store.Page{Limit: 1, After: tm.Next})
	check("another status filter", "after", err)
	_, _, err = s.UnmatchedPage(ctx, "dc1", store.Page{Limit: 1, After: tm.Next}, false)
	check("a task cursor on unmatched", "after", err)
	_, _, err = s.AuditPage(ctx, store.AuditFilter{Region: "dc1", Actor: "x"}, store.Page{Limit: 1, After: am.Next})
	check("an audit cursor with other filters", "after", err)
	_, _, err = s.TaskPage(ctx, "dc1", "", store.Page{Limit: 0})
	check("limit 0", "limit", err)
	_, _, err = s.TaskPage(ctx, "dc1", "", store.Page{Limit: store.MaxPageLimit + 1})
	check("limit over the maximum", "limit", err)
	_, _, err = s.TaskPage(ctx, "dc1", "", store.Page{Limit: 1, After: tm.Next, Before: tm.Next})
	check("both directions", "before", err)
	// The good cursors still work.
	if tasks, _, err := s.TaskPage(ctx, "dc1", "", store.Page{Limit: 5, After: tm.Next}); err != nil || len(tasks) != 2 {
		t.Fatalf("dc1's second page: %d tasks, %v", len(tasks), err)
	}
}

// The audit trail pages newest first: one task's entries (a range from the cursor),
// a region's (grouped by task in etcd, ordered by time here) and a user filter.
func TestAuditPages(t *testing.T) {
	e := storetest.Start(t)
	s := e.Store
	ctx := store.WithActor(context.Background(), store.Actor{Kind: store.ActorUser, Name: "alice"})
	var ids []string
	for i := range 12 {
		task, err := s.CreateTask(ctx, store.NewTask{RegionID: "dc1", TargetMAC: fmt.Sprintf("02:00:00:00:00:%02x", i), OSRef: ubuntu})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, task.TaskID)
	}
	bob := store.WithActor(context.Background(), store.Actor{Kind: store.ActorUser, Name: "bob"})
	for _, id := range ids[:5] {
		if _, err := s.CancelTask(bob, id, "test"); err != nil {
			t.Fatal(err)
		}
	}
	walk := func(f store.AuditFilter, limit int) []store.AuditEntry {
		t.Helper()
		var out []store.AuditEntry
		p := store.Page{Limit: limit}
		for range 100 {
			entries, marks, err := s.AuditPage(ctx, f, p)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, entries...)
			if marks.Next == "" {
				return out
			}
			p.After = marks.Next
		}
		t.Fatal("the walk does not end")
		return nil
	}
	all, err := s.ListAudit(ctx, store.AuditFilter{Region: "dc1"})
	if err != nil || len(all) != 17 {
		t.Fatalf("the region's trail: %d entries, %v; want 12 creates and 5 cancels", len(all), err)
	}
	for _, c := range []struct {
		f    store.AuditFilter
		want int
	}{
		{store.AuditFilter{Region: "dc1"}, 17},
		{store.AuditFilter{}, 17},
		{store.AuditFilter{TaskID: ids[0]}, 2},
		{store.AuditFilter{Region: "dc1", Actor: "bob"}, 5},
		{store.AuditFilter{Action: store.AuditTaskCreate}, 12},
	} {
		got := walk(c.f, 2)
		if len(got) != c.want {
			t.Fatalf("%+v: %d entries, want %d", c.f, len(got), c.want)
		}
		for i := 1; i < len(got); i++ {
			if got[i-1].ID <= got[i].ID {
				t.Fatalf("%+v: entry %d %s after %s: not newest first", c.f, i, got[i].ID, got[i-1].ID)
			}
		}
	}
}
