package federation_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/federation"
	"lpmos.dev/lpmos/federation/fedtest"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

func startFleet(t *testing.T, home *store.Store, static []store.RegionCluster) (*federation.Fleet, context.Context) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	f := federation.New(home, static, nil)
	f.Start(ctx)
	t.Cleanup(func() { cancel(); f.Wait() })
	return f, ctx
}

func newTask(t *testing.T, ctx context.Context, st *store.Store, region string, i int) string {
	t.Helper()
	tk, err := st.CreateTask(ctx, store.NewTask{RegionID: region, TargetMAC: fmt.Sprintf("02:00:00:%02x:%02x:%02x", len(region), i>>8, i&0xff),
		OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}})
	if err != nil {
		t.Fatal(err)
	}
	return tk.TaskID
}

// eventually polls cond until it holds or fails the test after d.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A walk over every region's tasks (and reports) spread over three clusters, a page
// at a time forwards and backwards, sees each exactly once, newest first; home's
// leftover keys of a region registered elsewhere are not shown.
func TestMergedPagingAcrossClusters(t *testing.T) {
	home, dc2, dc3 := storetest.Start(t), storetest.Start(t), storetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var want []string // newest first at the end
	for i := range 7 {
		want = append(want, newTask(t, ctx, home.Store, "dc1", i))
		if i < 6 {
			want = append(want, newTask(t, ctx, dc2.Store, "dc2", i))
		}
		if i < 5 {
			want = append(want, newTask(t, ctx, dc3.Store, "dc3", i))
		}
		if i < 3 {
			newTask(t, ctx, home.Store, "dc2", 100+i) // a leftover of dc2's migration
		}
	}
	slices.Reverse(want)
	f, ctx := startFleet(t, home.Store, []store.RegionCluster{
		{Region: "dc2", Endpoints: dc2.Endpoints}, {Region: "dc3", Endpoints: dc3.Endpoints}})

	for _, limit := range []int{1, 4, 30} {
		var got []string
		p := store.Page{Limit: limit}
		var last store.PageMarks
		for pages := 0; ; pages++ {
			ts, m, stale, err := f.TaskPage(ctx, "", "", p, false)
			if err != nil || len(stale) > 0 {
				t.Fatalf("page %d (limit %d): %v, stale %v", pages, limit, err, stale)
			}
			for _, tk := range ts {
				got = append(got, tk.TaskID)
			}
			last = m
			if m.Next == "" {
				break
			}
			p = store.Page{Limit: limit, After: m.Next}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("limit %d: walked %d tasks, want %d in order\n got %v\nwant %v", limit, len(got), len(want), got, want)
		}
		// And back from the last page, through Before.
		var back []string
		p = store.Page{Limit: limit, Before: last.Prev}
		for last.Prev != "" {
			ts, m, _, err := f.TaskPage(ctx, "", "", p, false)
			if err != nil {
				t.Fatal(err)
			}
			for i := len(ts) - 1; i >= 0; i-- {
				back = append(back, ts[i].TaskID)
			}
			if m.Prev == "" {
				break
			}
			p = store.Page{Limit: limit, Before: m.Prev}
		}
		slices.Reverse(back)
		// The backward walk ends with the first page (a full one): every task but the
		// last page's, once, in order.
		lastPage := len(want) % limit
		if lastPage == 0 {
			lastPage = limit
		}
		if limit < len(want) && !slices.Equal(dedupe(back), want[:len(want)-lastPage]) {
			t.Fatalf("limit %d: walking back saw %v\nwant %v", limit, back, want[:len(want)-lastPage])
		}
	}
	n, _, err := f.CountTasks(ctx, "", "")
	if err != nil || n != len(want) {
		t.Fatalf("CountTasks = %d, %v; want %d (home's leftovers not counted)", n, err, len(want))
	}
	// One region on its own cluster: its own list, the store's cursors.
	ts, _, _, err := f.TaskPage(ctx, "dc2", store.StatusPending, store.Page{Limit: 100}, false)
	if err != nil || len(ts) != 6 {
		t.Fatalf("dc2's tasks: %d, %v; want the 6 of its own cluster", len(ts), err)
	}
	// A cursor of the merged list is refused on one region's list, and the reverse.
	_, m, _, _ := f.TaskPage(ctx, "", "", store.Page{Limit: 2}, false)
	if _, _, _, err := f.TaskPage(ctx, "dc2", "", store.Page{Limit: 2, After: m.Next}, false); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("merged cursor on dc2's list: %v", err)
	}
	_, m, _, _ = f.TaskPage(ctx, "dc2", "", store.Page{Limit: 2}, false)
	if _, _, _, err := f.TaskPage(ctx, "", "", store.Page{Limit: 2, After: m.Next}, false); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("dc2's cursor on the merged list: %v", err)
	}

	// Unmatched reports: dc1's in home, dc2's in its cluster, merged.
	var reports []string
	for i := range 3 {
		for _, r := range []struct {
			st     *store.Store
			region string
		}{{home.Store, "dc1"}, {dc2.Store, "dc2"}} {
			res, err := r.st.Report(ctx, r.region, fmt.Sprintf("02:00:00:01:%02x:%02x", len(r.region), i), []byte(`{"hostname":"x"}`))
			if err != nil || res.Unmatched == nil {
				t.Fatalf("report: %+v %v", res, err)
			}
			reports = append(reports, r.region+"/"+res.Unmatched.ID)
		}
	}
	var gotReports []string
	p := store.Page{Limit: 2}
	for {
		us, m, _, err := f.UnmatchedPage(ctx, "", p, false)
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range us {
			gotReports = append(gotReports, u.Region+"/"+u.ID)
		}
		if m.Next == "" {
			break
		}
		p.After = m.Next
	}
	slices.Sort(reports)
	slices.Sort(gotReports)
	if !slices.Equal(reports, gotReports) {
		t.Fatalf("unmatched walk: %v, want %v", gotReports, reports)
	}
}

func dedupe(ids []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, id := range ids {
		if seen[id] {
			continue
		}
		seen[id] = true
		out = append(out, id)
	}
	return out
}

// A region cluster that does not answer at start does not hold the fleet up: it is
// listed unreachable, its writes are refused at once; a registration added in etcd is
// followed without a restart, and its region's tasks go to its own cluster.
func TestRegistrationsFollowedLive(t *testing.T) {
	home, dc2 := storetest.Start(t), storetest.Start(t)
	start := time.Now()
	f, ctx := startFleet(t, home.Store, []store.RegionCluster{{Region: "dc9", Endpoints: []string{"127.0.0.1:1"}}})
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("start with an unreachable region cluster took %s", took)
	}
	rs, err := f.ListRegions(ctx)
	if err != nil || len(rs) != 1 || rs[0].Name != "dc9" || rs[0].Cluster != "own" || rs[0].Reachable || rs[0].UnreachableSince == nil || !rs[0].Stale {
		t.Fatalf("regions = %+v, %v", rs, err)
	}
	t0 := time.Now()
	_, err = f.CreateTask(ctx, store.NewTask{RegionID: "dc9", TargetMAC: "02:00:00:00:00:01", OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}})
	var ue *federation.UnreachableError
	if !errors.As(err, &ue) || ue.Region != "dc9" || time.Since(t0) > 500*time.Millisecond {
		t.Fatalf("create in dc9: %v after %s", err, time.Since(t0))
	}
	t.Logf("refused: %v", err)

	if err := home.Store.PutRegionCluster(ctx, store.RegionCluster{Region: "dc2", Endpoints: dc2.Endpoints}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "dc2 registered and reachable", func() bool {
		r, err := f.GetRegion(ctx, "dc2")
		return err == nil && r.Cluster == "own" && r.Reachable
	})
	tk, err := f.CreateTask(ctx, store.NewTask{RegionID: "dc2", TargetMAC: "02:00:00:00:00:02", OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dc2.Store.GetTask(ctx, tk.TaskID); err != nil {
		t.Fatalf("task not in dc2's cluster: %v", err)
	}
	if len(home.Dump(t, "/os/install/task/")) != 0 || len(home.Dump(t, "/os/index/")) != 0 {
		t.Fatalf("dc2's task wrote into home: %v", home.Dump(t, "/os/"))
	}
	got, stale, err := f.GetTask(ctx, tk.TaskID)
	if err != nil || stale || got.RegionID != "dc2" {
		t.Fatalf("GetTask = %+v, %v, %v", got, stale, err)
	}
	if ok, err := home.Store.DeleteRegionCluster(ctx, "dc2"); !ok || err != nil {
		t.Fatal(ok, err)
	}
	eventually(t, 10*time.Second, "dc2 unregistered", func() bool {
		r, err := f.GetRegion(ctx, "dc2")
		return err == nil && r.Cluster == "shared"
	})
}

// dc2's etcd compacted past what the control plane saw while the link was cut: when
// the link is back, the mirror reloads (a resync) and shows the same end state as
// dc2's etcd, nothing stale.
func TestCompactionDuringCut(t *testing.T) {
	home, dc2 := storetest.Start(t), storetest.Start(t)
	link := fedtest.NewLink(t, strings.TrimPrefix(dc2.Endpoints[0], "http://"))
	f, ctx := startFleet(t, home.Store, []store.RegionCluster{{Region: "dc2", Endpoints: []string{link.Endpoint()}}})
	ids := []string{newTask(t, ctx, dc2.Store, "dc2", 1), newTask(t, ctx, dc2.Store, "dc2", 2)}
	rev, err := dc2.Store.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the mirror at dc2's revision", func() bool {
		r, ok := f.MirrorRevision("dc2")
		return ok && r >= rev
	})
	link.Cut()
	eventually(t, 2*time.Second, "dc2 unreachable", func() bool {
		r, err := f.GetRegion(ctx, "dc2")
		return err == nil && !r.Reachable
	})
	// During the cut: one task cancelled, one created, then the history compacted.
	if _, err := dc2.Store.CancelTask(ctx, ids[0], "gone"); err != nil {
		t.Fatal(err)
	}
	ids = append(ids, newTask(t, ctx, dc2.Store, "dc2", 3))
	rev, err = dc2.Store.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dc2.Client.Compact(ctx, rev); err != nil {
		t.Fatal(err)
	}
	if ts, _, stale, err := f.TaskPage(ctx, "dc2", "", store.Page{Limit: 10}, false); err != nil || len(ts) != 2 || fmt.Sprint(stale) != "[dc2]" {
		t.Fatalf("dc2 during the cut: %d tasks, stale %v, %v", len(ts), stale, err)
	}
	resyncs := f.MirrorResyncs("dc2")
	link.Restore(t)
	eventually(t, 10*time.Second, "dc2 back, resynced", func() bool {
		r, ok := f.MirrorRevision("dc2")
		return ok && r >= rev && f.MirrorResyncs("dc2") > resyncs
	})
	// Cut again: what the mirror holds is the end state.
	link.Cut()
	eventually(t, 2*time.Second, "dc2 unreachable again", func() bool {
		r, err := f.GetRegion(ctx, "dc2")
		return err == nil && !r.Reachable
	})
	ts, _, stale, err := f.TaskPage(ctx, "dc2", "", store.Page{Limit: 10}, false)
	if err != nil || len(ts) != 3 || fmt.Sprint(stale) != "[dc2]" {
		t.Fatalf("dc2 from the mirror after the resync: %d tasks, stale %v, %v", len(ts), stale, err)
	}
	for _, tk := range ts {
		want := store.StatusPending
		if tk.TaskID == ids[0] {
			want = store.StatusCancelled
		}
		if tk.Status != want {
			t.Fatalf("task %s from the mirror: %s, want %s", tk.TaskID, tk.Status, want)
		}
	}
	t.Logf("resyncs: %d", f.MirrorResyncs("dc2"))
}

// Catch-up figures: N changes made in dc2 while its link was cut (each a new task),
// then the link restored: how long until the mirror holds dc2's revision (and every
// task), and the memory the mirror holds. Logged for docs/federation.md.
func TestCatchUpFigures(t *testing.T) {
	for _, n := range []int{10, 100, 1000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			home, dc2 := storetest.Start(t), storetest.Start(t)
			link := fedtest.NewLink(t, strings.TrimPrefix(dc2.Endpoints[0], "http://"))
			f, ctx := startFleet(t, home.Store, []store.RegionCluster{{Region: "dc2", Endpoints: []string{link.Endpoint()}}})
			eventually(t, 10*time.Second, "mirror loaded", func() bool { _, ok := f.MirrorRevision("dc2"); return ok })
			link.Cut()
			eventually(t, 2*time.Second, "dc2 unreachable", func() bool {
				r, err := f.GetRegion(ctx, "dc2")
				return err == nil && !r.Reachable
			})
			for i := range n {
				newTask(t, ctx, dc2.Store, "dc2", i)
			}
			rev, err := dc2.Store.Revision(ctx)
			if err != nil {
				t.Fatal(err)
			}
			link.Restore(t)
			back := time.Now()
			eventually(t, 10*time.Second, "caught up", func() bool { r, _ := f.MirrorRevision("dc2"); return r >= rev })
			took := time.Since(back)
			eventually(t, 2*time.Second, "dc2 reachable", func() bool {
				r, err := f.GetRegion(ctx, "dc2")
				return err == nil && r.Reachable
			})
			// Everything is in the mirror: cut again and read it from there.
			link.Cut()
			eventually(t, 2*time.Second, "dc2 unreachable again", func() bool {
				r, err := f.GetRegion(ctx, "dc2")
				return err == nil && !r.Reachable
			})
			if k, stale, err := f.CountTasks(ctx, "dc2", ""); err != nil || k != n || len(stale) != 1 {
				t.Fatalf("mirror holds %d tasks (stale %v, %v), want %d", k, stale, err, n)
			}
			b := f.MirrorBytes()["dc2"]
			t.Logf("FIGURE catch-up N=%d: link back -> mirror at dc2's revision in %s; mirror %d bytes (%d per task)", n, took.Round(time.Millisecond), b, b/n)
		})
	}
}
