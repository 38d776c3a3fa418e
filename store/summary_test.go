package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"testing"

	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

// TaskPage's pages agree with ListTasks' status filter, minus the hardware, across
// more tasks than one read transaction fetches.
func TestTaskPagesAgreeWithListTasks(t *testing.T) {
	e := storetest.Start(t)
	s, ctx := e.Store, ctxT(t)
	advertise(t, s, "dc2", ubuntuImage)
	ref := ubuntuImage.OSRef
	for i := range 60 {
		if _, err := s.CreateTask(ctx, store.NewTask{RegionID: "dc1", TargetMAC: fmt.Sprintf("02:00:00:00:01:%02x", i), OSRef: ref}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.CreateTask(ctx, store.NewTask{RegionID: "dc2", TargetMAC: "02:00:00:00:02:01", OSRef: ref}); err != nil {
		t.Fatal(err)
	}
	// Reported and approved: its hardware must not be read, its approval must.
	approved, err := s.CreateTask(ctx, store.NewTask{RegionID: "dc2", TargetMAC: "02:00:00:00:02:02", OSRef: ref})
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.Report(ctx, "dc2", approved.TargetMAC, json.RawMessage(oneDisk))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ApproveTask(as(ctx, "test"), approved.TaskID, res.Task.Plan.Digest); err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		region string
		status store.Status
		n      int
	}{
		{"dc1", store.StatusPending, 60}, {"", store.StatusPending, 61}, {"dc2", store.StatusPending, 1},
		{"", store.StatusApproved, 1}, {"dc2", store.StatusApproved, 1}, {"dc1", store.StatusApproved, 0},
		{"dc9", store.StatusPending, 0}, {"", store.StatusCompleted, 0},
	} {
		got, err := allPages(ctx, s, c.region, c.status)
		if err != nil {
			t.Fatalf("TaskPage(%q, %s): %v", c.region, c.status, err)
		}
		// The reference: every task of the region read whole, filtered here (ListTasks
		// with a status goes through the index too), then with its hardware checked.
		all, err := s.ListTasks(ctx, store.ListFilter{Region: c.region})
		if err != nil {
			t.Fatal(err)
		}
		byIndex, err := s.ListTasks(ctx, store.ListFilter{Region: c.region, Status: c.status})
		if err != nil {
			t.Fatal(err)
		}
		var want []store.Task
		for _, task := range all {
			if task.Status == c.status {
				want = append(want, task)
			}
		}
		if !reflect.DeepEqual(byIndex, want) {
			t.Errorf("ListTasks(%q, %s) through the index: %d tasks, want %d read whole", c.region, c.status, len(byIndex), len(want))
		}
		for i := range want {
			want[i].Hardware = nil
		}
		if len(got) != c.n || !reflect.DeepEqual(got, want) {
			t.Errorf("TaskPage(%q, %s), every page: %d tasks, want %d as ListTasks reads them (without hardware)", c.region, c.status, len(got), c.n)
		}
	}
	if got, _ := allPages(ctx, s, "dc2", store.StatusApproved); len(got) != 1 || got[0].Approval == nil || got[0].ReportedAt == nil || got[0].Hardware != nil {
		t.Errorf("approved summary = %+v", got)
	}
	for _, bad := range [][2]string{{"dc1", "nope"}, {"Bad!", "pending"}} {
		if _, err := allPages(ctx, s, bad[0], store.Status(bad[1])); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("TaskPage(%q, %q): want ErrInvalid, got %v", bad[0], bad[1], err)
		}
	}
}

// allPages reads every page of a task list, 7 tasks a page, and returns the tasks
// oldest first (as ListTasks has them).
func allPages(ctx context.Context, s *store.Store, region string, status store.Status) ([]store.Task, error) {
	var out []store.Task
	p := store.Page{Limit: 7}
	for {
		tasks, marks, err := s.TaskPage(ctx, region, status, p)
		if err != nil {
			return nil, err
		}
		out = append(out, tasks...)
		if marks.Next == "" {
			slices.Reverse(out)
			return out, nil
		}
		p.After = marks.Next
	}
}
