package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestTransitions(t *testing.T) {
	legal := map[[2]store.Status]bool{}
	for _, p := range [][2]store.Status{
		{"pending", "pending_approval"}, {"pending", "cancelled"},
		{"pending_approval", "pending_approval"}, {"pending_approval", "approved"}, {"pending_approval", "failed"}, {"pending_approval", "cancelled"},
		{"approved", "installing"}, {"approved", "pending_approval"}, {"approved", "failed"}, {"approved", "cancelled"},
		{"installing", "installing"}, {"installing", "completed"}, {"installing", "pending_approval"}, {"installing", "failed"}, {"installing", "cancelled"},
	} {
		legal[p] = true
	}
	for _, from := range store.Statuses {
		for _, to := range store.Statuses {
			if got := store.CanTransition(from, to); got != legal[[2]store.Status{from, to}] {
				t.Errorf("CanTransition(%s, %s) = %v", from, to, got)
			}
		}
	}
	for _, s := range []store.Status{"completed", "failed", "cancelled"} {
		if !s.Final() || s.Open() {
			t.Errorf("%s should be final", s)
		}
	}
}

func TestNormalizeMAC(t *testing.T) {
	for in, want := range map[string]string{
		"00:1A:2B:3C:4D:5E":  "00:1a:2b:3c:4d:5e",
		"00-1a-2b-3c-4d-5e":  "00:1a:2b:3c:4d:5e",
		" 00:1a:2b:3c:4d:5e": "00:1a:2b:3c:4d:5e",
	} {
		if got, err := store.NormalizeMAC(in); err != nil || got != want {
			t.Errorf("NormalizeMAC(%q) = %q, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "00:1a:2b:3c:4d", "zz:1a:2b:3c:4d:5e", "00:1a:2b:3c:4d:5e:6f:70", "00:1a\n:2b:3c:4d:5e"} {
		if _, err := store.NormalizeMAC(bad); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("NormalizeMAC(%q): want ErrInvalid, got %v", bad, err)
		}
	}
}

func TestTaskLifecycleAndMACIndex(t *testing.T) {
	e := storetest.Start(t)
	s, ctx := e.Store, ctxT(t)
	advertise(t, s, "dc1", ubuntuImage)
	task, err := s.CreateTask(ctx, store.NewTask{RegionID: "dc1", TargetMAC: "00:1A:2B:3C:4D:5E", OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}})
	if err != nil {
		t.Fatal(err)
	}
	if task.Status != store.StatusPending || task.TargetMAC != "00:1a:2b:3c:4d:5e" {
		t.Fatalf("created %+v", task)
	}
	if v, _ := e.Get(t, "/os/install/task/dc1/"+task.TaskID+"/status"); v != "pending" {
		t.Fatalf("status key = %q", v)
	}
	// A second open task for the MAC is a conflict, and writes nothing.
	before := e.Dump(t, "/os/")
	if _, err := s.CreateTask(ctx, store.NewTask{RegionID: "dc1", TargetMAC: "00-1a-2b-3c-4d-5e", OSRef: contract.OSRef{OSType: "debian", OSVersion: "12"}}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("second open task: want ErrConflict, got %v", err)
	}
	storetest.AssertSame(t, before, e.Dump(t, "/os/"))

	// Illegal transition: approve before any report.
	if _, err := s.ApproveTask(as(ctx, "test"), task.TaskID, "x"); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("approve pending: want ErrConflict, got %v", err)
	}
	storetest.AssertSame(t, before, e.Dump(t, "/os/"))

	res, err := s.Report(ctx, "dc1", "00:1a:2b:3c:4d:5e", json.RawMessage(oneDisk))
	if err != nil || !res.Matched || res.Task.Status != store.StatusPendingApproval || !res.Task.Plan.Approvable() {
		t.Fatalf("report: %+v %v", res, err)
	}
	if _, err := s.ApproveTask(as(ctx, "alice"), task.TaskID, res.Task.Plan.Digest); err != nil {
		t.Fatal(err)
	}
	// Only an install in progress completes.
	if _, err := s.RecordProgress(ctx, store.ProgressUpdate{Region: "dc1", MAC: "00:1a:2b:3c:4d:5e", TaskID: task.TaskID, Progress: contract.Progress{Stage: "completed", Percentage: 100}}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("approved -> completed: want ErrConflict, got %v", err)
	}
	// Progress from another MAC is refused.
	if _, err := s.RecordProgress(ctx, store.ProgressUpdate{Region: "dc1", MAC: "00:1a:2b:3c:4d:5f", TaskID: task.TaskID, Progress: contract.Progress{Stage: "downloading", Percentage: 5}}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("foreign progress: %v", err)
	}
	if _, err := s.RecordProgress(ctx, store.ProgressUpdate{Region: "dc1", MAC: "00:1a:2b:3c:4d:5e", TaskID: task.TaskID, Progress: contract.Progress{Stage: "downloading", Percentage: 50}}); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetTask(ctx, task.TaskID)
	if err != nil || got.Status != store.StatusInstalling || got.StartedAt == nil || got.ApprovedAt == nil || got.ReportedAt == nil {
		t.Fatalf("after progress: %+v %v", got, err)
	}
	done, err := s.RecordProgress(ctx, store.ProgressUpdate{Region: "dc1", MAC: "00:1a:2b:3c:4d:5e", TaskID: task.TaskID, Progress: contract.Progress{Stage: "completed", Percentage: 100}})
	if err != nil || done.Status != store.StatusCompleted || done.FinishedAt == nil {
		t.Fatalf("complete: %+v %v", done, err)
	}
	// A repeated completion (the first answer was lost) is acknowledged, changing nothing.
	before = e.Dump(t, "/os/")
	if again, err := s.RecordProgress(ctx, store.ProgressUpdate{Region: "dc1", MAC: "00:1a:2b:3c:4d:5e", TaskID: task.TaskID, Progress: contract.Progress{Stage: "completed", Percentage: 100}}); err != nil || again.Status != store.StatusCompleted {
		t.Fatalf("completed twice: %+v %v", again, err)
	}
	storetest.AssertSame(t, before, e.Dump(t, "/os/"))
	if _, ok := e.Get(t, "/os/index/mac/dc1/00:1a:2b:3c:4d:5e"); ok {
		t.Fatal("MAC index kept after completion")
	}
	// Completed: the MAC is free again, and the latest-task index follows.
	next, err := s.CreateTask(ctx, store.NewTask{RegionID: "dc1", TargetMAC: "00:1a:2b:3c:4d:5e", OSRef: contract.OSRef{OSType: "debian", OSVersion: "12"}})
	if err != nil {
		t.Fatal(err)
	}
	if latest, err := s.LatestTaskForMAC(ctx, "dc1", "00:1a:2b:3c:4d:5e"); err != nil || latest.TaskID != next.TaskID {
		t.Fatalf("latest = %+v %v", latest, err)
	}
	if _, err := s.CancelTask(ctx, next.TaskID, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CancelTask(ctx, next.TaskID, ""); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("cancel twice: %v", err)
	}
	regions, err := s.ListRegions(ctx)
	if err != nil || len(regions) != 1 || regions[0].Counts[store.StatusCompleted] != 1 || regions[0].Counts[store.StatusCancelled] != 1 {
		t.Fatalf("regions: %+v %v", regions, err)
	}
}

func TestUnmatchedAndAutoMatch(t *testing.T) {
	e := storetest.Start(t)
	s, ctx := e.Store, ctxT(t)
	mac := "fe:b7:02:c0:95:e0"
	var first *store.UnmatchedReport
	for i := range 3 {
		res, err := s.Report(ctx, "dc1", mac, json.RawMessage(fmt.Sprintf(`{"n":%d}`, i)))
		if err != nil || res.Matched {
			t.Fatalf("report %d: %+v %v", i, res, err)
		}
		if first == nil {
			first = res.Unmatched
		}
	}
	list, err := s.ListUnmatched(ctx, "dc1")
	if err != nil || len(list) != 1 || string(list[0].Hardware) != `{"n":2}` {
		t.Fatalf("one report per MAC, newest kept: %+v %v", list, err)
	}
	v, ok := e.Get(t, "/os/unmatched_reports/dc1/"+list[0].ID)
	if !ok {
		t.Fatal("unmatched report not at its key")
	}
	var raw map[string]any
	json.Unmarshal([]byte(v), &raw)
	for _, f := range []string{"mac_address", "region", "hardware", "received_at", "error"} {
		if _, ok := raw[f]; !ok {
			t.Errorf("unmatched report lacks %q: %s", f, v)
		}
	}
	task, err := s.CreateTask(ctx, store.NewTask{RegionID: "dc1", TargetMAC: mac, OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}})
	if err != nil || task.Status != store.StatusPendingApproval || string(task.Hardware) != `{"n":2}` {
		t.Fatalf("auto-match: %+v %v", task, err)
	}
	if left := e.Dump(t, "/os/unmatched_reports/"); len(left) != 0 {
		t.Fatalf("report not removed: %v", left)
	}
	if _, ok := e.Get(t, "/os/index/unmatched/dc1/"+mac); ok {
		t.Fatal("unmatched index kept")
	}
}

func TestManualMatch(t *testing.T) {
	e := storetest.Start(t)
	s, ctx := e.Store, ctxT(t)
	res, _ := s.Report(ctx, "dc1", "52:54:00:00:00:01", json.RawMessage(`{"a":1}`))
	// Linking to a task of another MAC is refused; a new task from the report works.
	other, _ := s.CreateTask(ctx, store.NewTask{RegionID: "dc1", TargetMAC: "52:54:00:00:00:02", OSRef: contract.OSRef{OSType: "u", OSVersion: "1"}})
	if _, err := s.MatchUnmatched(ctx, "dc1", res.Unmatched.ID, store.MatchRequest{TaskID: other.TaskID}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("link to other MAC: %v", err)
	}
	task, err := s.MatchUnmatched(ctx, "dc1", res.Unmatched.ID, store.MatchRequest{OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}})
	if err != nil || task.Status != store.StatusPendingApproval || task.TargetMAC != "52:54:00:00:00:01" {
		t.Fatalf("match: %+v %v", task, err)
	}
	if _, err := s.MatchUnmatched(ctx, "dc1", res.Unmatched.ID, store.MatchRequest{OSRef: contract.OSRef{OSType: "x", OSVersion: "1"}}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("matching a consumed report: %v", err)
	}
}

// 100 agents report at once for 100 tasks: each matched exactly once, to its own task.
func TestConcurrentReports(t *testing.T) {
	e := storetest.Start(t)
	s, ctx := e.Store, ctxT(t)
	const n = 100
	want := map[string]string{}
	for i := range n {
		mac := fmt.Sprintf("52:54:00:00:%02x:%02x", i/256, i%256)
		task, err := s.CreateTask(ctx, store.NewTask{RegionID: "dc1", TargetMAC: mac, OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}})
		if err != nil {
			t.Fatal(err)
		}
		want[mac] = task.TaskID
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	got := map[string]string{}
	for mac := range want {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := s.Report(ctx, "dc1", mac, json.RawMessage(`{"mac":"`+mac+`"}`))
			mu.Lock()
			defer mu.Unlock()
			if err != nil || !res.Matched {
				t.Errorf("%s: %+v %v", mac, res, err)
				return
			}
			got[mac] = res.Task.TaskID
		}()
	}
	wg.Wait()
	for mac, id := range want {
		if got[mac] != id {
			t.Errorf("%s matched %q, want %q", mac, got[mac], id)
		}
	}
	tasks, _ := s.ListTasks(ctx, store.ListFilter{Region: "dc1", Status: store.StatusPendingApproval})
	if len(tasks) != n {
		t.Fatalf("%d tasks pending_approval, want %d", len(tasks), n)
	}
	for _, tk := range tasks {
		if string(tk.Hardware) != `{"mac":"`+tk.TargetMAC+`"}` {
			t.Errorf("task %s has hardware %s", tk.TaskID, tk.Hardware)
		}
	}
	if um := e.Dump(t, "/os/unmatched_reports/"); len(um) != 0 {
		t.Fatalf("unexpected unmatched reports: %v", um)
	}
}

// Reports racing task creation for the same MAC: whichever order etcd sees, the
// report ends on the task (matched or auto-matched), never stranded as unmatched.
func TestReportRacesCreate(t *testing.T) {
	e := storetest.Start(t)
	s, ctx := e.Store, ctxT(t)
	for i := range 20 {
		mac := fmt.Sprintf("52:54:00:aa:00:%02x", i)
		var wg sync.WaitGroup
		wg.Add(2)
		var task store.Task
		go func() { defer wg.Done(); s.Report(ctx, "dc1", mac, json.RawMessage(`{"x":1}`)) }()
		go func() {
			defer wg.Done()
			var err error
			task, err = s.CreateTask(ctx, store.NewTask{RegionID: "dc1", TargetMAC: mac, OSRef: contract.OSRef{OSType: "u", OSVersion: "1"}})
			if err != nil {
				t.Error(err)
			}
		}()
		wg.Wait()
		got, err := s.GetTask(ctx, task.TaskID)
		if err != nil || got.Status != store.StatusPendingApproval || string(got.Hardware) != `{"x":1}` {
			t.Fatalf("round %d: %+v %v", i, got, err)
		}
	}
	if um := e.Dump(t, "/os/unmatched_reports/"); len(um) != 0 {
		t.Fatalf("stranded reports: %v", um)
	}
}

func TestValidation(t *testing.T) {
	e := storetest.Start(t)
	s, ctx := e.Store, ctxT(t)
	for name, n := range map[string]store.NewTask{
		"bad mac":      {RegionID: "dc1", TargetMAC: "nope", OSRef: contract.OSRef{OSType: "u", OSVersion: "1"}},
		"bad region":   {RegionID: "DC_1", TargetMAC: "00:1a:2b:3c:4d:5e", OSRef: contract.OSRef{OSType: "u", OSVersion: "1"}},
		"slash region": {RegionID: "dc1/x", TargetMAC: "00:1a:2b:3c:4d:5e", OSRef: contract.OSRef{OSType: "u", OSVersion: "1"}},
		"no os":        {RegionID: "dc1", TargetMAC: "00:1a:2b:3c:4d:5e", OSRef: contract.OSRef{OSVersion: "1"}},
		"newline os":   {RegionID: "dc1", TargetMAC: "00:1a:2b:3c:4d:5e", OSRef: contract.OSRef{OSType: "u\nx", OSVersion: "1"}},
		"disk range":   {RegionID: "dc1", TargetMAC: "00:1a:2b:3c:4d:5e", OSRef: contract.OSRef{OSType: "u", OSVersion: "1"}, Disk: &contract.DiskHint{MinBytes: 10, MaxBytes: 5}},
	} {
		if _, err := s.CreateTask(ctx, n); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("%s: want ErrInvalid, got %v", name, err)
		}
	}
	if d := e.Dump(t, "/os/"); len(d) != 0 {
		t.Fatalf("invalid input wrote %v", d)
	}
}

func TestHeartbeat(t *testing.T) {
	e := storetest.Start(t)
	s, ctx := e.Store, ctxT(t)
	hb, err := s.StartHeartbeat(ctx, func() store.Heartbeat { return store.Heartbeat{Region: "dc1"} }, 2*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.GetRegion(ctx, "dc1")
	if err != nil || !r.Online || r.Status != "online" {
		t.Fatalf("running: %+v %v", r, err)
	}
	if err := hb.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.Get(t, "/os/region/dc1/heartbeat"); ok {
		t.Fatal("heartbeat survives a clean stop")
	}
	r, _ = s.GetRegion(ctx, "dc1")
	if r.Online || r.Status != "offline" {
		t.Fatalf("stopped: %+v", r)
	}
}
