package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

var ubuntuImage = contract.ImageRef{OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}, SHA256: strings.Repeat("ab", 32), Size: 48 << 20, Format: "raw"}

// Hardware reports as agents send them.
const (
	oneDisk = `{"cpu":{"cores":4},"disks":[{"name":"vda","path":"/dev/vda","size_bytes":1073741824,"serial":"VDA1"}]}`
	// The inventory: a 32 MiB SATADOM that cannot hold the 48 MiB image, and a
	// 500 GB data disk.
	satadomAndRaid = `{"disks":[{"name":"sda","path":"/dev/sda","size_bytes":33554432,"model":"SATADOM","serial":"DOM1"},` +
		`{"name":"sdb","path":"/dev/sdb","size_bytes":500000000000,"model":"DATA-RAID","serial":"RAID1"}]}`
	raidOnly = `{"disks":[{"name":"sdb","path":"/dev/sdb","size_bytes":500000000000,"model":"DATA-RAID","serial":"RAID2"}]}`
)

// advertise keeps a heartbeat with the given catalog alive for the test.
func advertise(t *testing.T, s *store.Store, region string, images ...contract.ImageRef) *store.Heartbeater {
	t.Helper()
	hb, err := s.StartHeartbeat(context.Background(), func() store.Heartbeat {
		return store.Heartbeat{Region: region, Images: images}
	}, 10*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hb.Stop(context.Background()) })
	return hb
}

// approvedTask is reportedTask with its plan approved by alice.
func approvedTask(t *testing.T, e *storetest.Etcd, mac, hw string) store.Task {
	t.Helper()
	task := reportedTask(t, e, mac, hw)
	if _, err := e.Store.ApproveTask(as(ctxT(t), "alice"), task.TaskID, task.Plan.Digest); err != nil {
		t.Fatal(err)
	}
	return task
}

func reportedTask(t *testing.T, e *storetest.Etcd, mac, hw string) store.Task {
	t.Helper()
	ctx := ctxT(t)
	if _, err := e.Store.CreateTask(ctx, store.NewTask{RegionID: "dc1", TargetMAC: mac, OSRef: ubuntuImage.OSRef}); err != nil {
		t.Fatal(err)
	}
	res, err := e.Store.Report(ctx, "dc1", mac, json.RawMessage(hw))
	if err != nil || !res.Matched {
		t.Fatalf("report: %+v %v", res, err)
	}
	return res.Task
}

// The plan names the disk the image really fits on (the control plane once named the
// 32 MiB SATADOM because it planned with an image size of 0, while the agent wrote the
// 48 MiB image to the RAID disk), and the approval records what was approved.
func TestPlanUsesTheRealImageSize(t *testing.T) {
	e := storetest.Start(t)
	advertise(t, e.Store, "dc1", ubuntuImage)
	task := reportedTask(t, e, "52:54:00:00:10:01", satadomAndRaid)
	p := task.Plan
	if !p.Approvable() || p.Disk.Name != "sdb" || p.Disk.Serial != "RAID1" || p.Image.SHA256 != ubuntuImage.SHA256 {
		t.Fatalf("plan = %+v", p)
	}
	stored, _ := e.Get(t, "/os/install/task/dc1/"+task.TaskID+"/plan")
	var fromEtcd contract.Plan
	if err := json.Unmarshal([]byte(stored), &fromEtcd); err != nil || fromEtcd.Digest != p.Digest {
		t.Fatalf("stored plan %q", stored)
	}
	ok, err := e.Store.ApproveTask(as(ctxT(t), "alice"), task.TaskID, p.Digest)
	if err != nil {
		t.Fatal(err)
	}
	a := ok.Approval
	if a.PlanDigest != p.Digest || a.DiskSerial != "RAID1" || a.DiskPath != "/dev/sdb" || a.ImageSHA256 != ubuntuImage.SHA256 || a.ApprovedBy != "alice" {
		t.Fatalf("approval record = %+v", a)
	}
}

// Approval binds to the plan the person saw: a missing or stale digest is refused
// with nothing written, and so is a plan that cannot be carried out.
func TestApprovalBindsToThePlanDigest(t *testing.T) {
	e := storetest.Start(t)
	advertise(t, e.Store, "dc1", ubuntuImage)
	ctx := ctxT(t)
	task := reportedTask(t, e, "52:54:00:00:10:02", satadomAndRaid)
	seen := task.Plan.Digest
	// The hardware changes between the dialog opening and the click.
	res, err := e.Store.Report(ctx, "dc1", "52:54:00:00:10:02", json.RawMessage(raidOnly))
	if err != nil || res.Task.Plan.Digest == seen {
		t.Fatalf("re-report: %+v %v", res, err)
	}
	before := e.Dump(t, "/os/")
	for _, digest := range []string{seen, "", "not-a-digest"} {
		_, err := e.Store.ApproveTask(as(ctx, "alice"), task.TaskID, digest)
		if !errors.Is(err, store.ErrConflict) && !errors.Is(err, store.ErrInvalid) {
			t.Fatalf("approve with digest %q: %v", digest, err)
		}
		storetest.AssertSame(t, before, e.Dump(t, "/os/"))
	}
	if _, err := e.Store.ApproveTask(as(ctx, "alice"), task.TaskID, seen); !errors.Is(err, store.ErrPlanChanged) {
		t.Fatalf("stale digest: want ErrPlanChanged, got %v", err)
	}

	// A plan that refuses (no disk fits) cannot be approved, whatever the digest.
	small := reportedTask(t, e, "52:54:00:00:10:03", `{"disks":[{"name":"sda","path":"/dev/sda","size_bytes":33554432}]}`)
	if small.Plan.Approvable() || !strings.Contains(small.Plan.Refused, "too small") {
		t.Fatalf("plan for a too-small disk = %+v", small.Plan)
	}
	before = e.Dump(t, "/os/")
	if _, err := e.Store.ApproveTask(as(ctx, "alice"), small.TaskID, small.Plan.Digest); !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), "too small") {
		t.Fatalf("approve a refused plan: %v", err)
	}
	storetest.AssertSame(t, before, e.Dump(t, "/os/"))
}

// After approval a report never silently continues: the same plan keeps the approval
// (the agent restarted before writing); another plan, or any report during the install,
// sends the task back to a person with the approval removed.
func TestReportAfterApproval(t *testing.T) {
	e := storetest.Start(t)
	advertise(t, e.Store, "dc1", ubuntuImage)
	ctx := ctxT(t)
	mac := "52:54:00:00:10:04"
	task := approvedTask(t, e, mac, satadomAndRaid)
	before := e.Dump(t, "/os/")
	res, err := e.Store.Report(ctx, "dc1", mac, json.RawMessage(satadomAndRaid))
	if err != nil || res.Task.Status != store.StatusApproved {
		t.Fatalf("same report after approval: %+v %v", res.Task.Status, err)
	}
	storetest.AssertSame(t, before, e.Dump(t, "/os/"))

	res, err = e.Store.Report(ctx, "dc1", mac, json.RawMessage(raidOnly))
	got := res.Task
	if err != nil || got.Status != store.StatusPendingApproval || got.Approval != nil || !strings.Contains(got.Review, "changed after approval") {
		t.Fatalf("changed report after approval: %+v %v", got, err)
	}
	if _, ok := e.Get(t, "/os/install/task/dc1/"+task.TaskID+"/approval"); ok {
		t.Fatal("the approval key survived a changed report")
	}
	if _, err := e.Store.ApproveTask(as(ctx, "alice"), task.TaskID, got.Plan.Digest); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Store.RecordProgress(ctx, store.ProgressUpdate{Region: "dc1", MAC: mac, TaskID: task.TaskID, Progress: contract.Progress{Stage: "writing", Percentage: 40}}); err != nil {
		t.Fatal(err)
	}
	// The machine restarted mid-install and reports again, identical hardware or not.
	res, err = e.Store.Report(ctx, "dc1", mac, json.RawMessage(raidOnly))
	got = res.Task
	if err != nil || got.Status != store.StatusPendingApproval || got.Approval != nil || !strings.Contains(got.Review, "partially written") {
		t.Fatalf("report during install: %+v %v", got, err)
	}
	// Progress of the interrupted install is refused now.
	if _, err := e.Store.RecordProgress(ctx, store.ProgressUpdate{Region: "dc1", MAC: mac, TaskID: task.TaskID, Progress: contract.Progress{Stage: "writing", Percentage: 41}}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("progress after re-review: %v", err)
	}
}

// A plan waits for its image: the region uploads it later, Replan writes the new plan
// (a new digest) and only then may the task be approved.
func TestReplanWhenTheCatalogChanges(t *testing.T) {
	e := storetest.Start(t)
	hb := advertise(t, e.Store, "dc1")
	ctx := ctxT(t)
	task := reportedTask(t, e, "52:54:00:00:10:05", oneDisk)
	if task.Plan.Approvable() || !strings.Contains(task.Plan.Refused, "no image for ubuntu 22.04") {
		t.Fatalf("plan without the image = %+v", task.Plan)
	}
	if n, err := e.Store.Replan(ctx, "dc1"); err != nil || n != 0 {
		t.Fatalf("replan with nothing new: %d %v", n, err)
	}
	hb.Stop(ctx)
	advertise(t, e.Store, "dc1", ubuntuImage)
	if n, err := e.Store.Replan(ctx, "dc1"); err != nil || n != 1 {
		t.Fatalf("replan after the upload: %d %v", n, err)
	}
	got, err := e.Store.GetTask(ctx, task.TaskID)
	if err != nil || !got.Plan.Approvable() || got.Plan.Digest == task.Plan.Digest {
		t.Fatalf("replanned: %+v %v", got.Plan, err)
	}
	if _, err := e.Store.ApproveTask(as(ctx, "alice"), task.TaskID, task.Plan.Digest); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("the old plan's digest approved: %v", err)
	}
	if _, err := e.Store.ApproveTask(as(ctx, "alice"), task.TaskID, got.Plan.Digest); err != nil {
		t.Fatal(err)
	}
}

// An unmatched report older than AutoMatchMaxAge is not attached to a new task (nobody
// has seen that machine for an hour: it must report again).
func TestStaleUnmatchedReportIsNotAttached(t *testing.T) {
	e := storetest.Start(t)
	advertise(t, e.Store, "dc1", ubuntuImage)
	ctx := ctxT(t)
	mac := "52:54:00:00:10:06"
	clock := time.Now().UTC().Add(-2 * store.AutoMatchMaxAge)
	e.Store.SetClock(func() time.Time { return clock })
	if res, err := e.Store.Report(ctx, "dc1", mac, json.RawMessage(oneDisk)); err != nil || res.Matched {
		t.Fatalf("unmatched report: %+v %v", res, err)
	}
	e.Store.SetClock(func() time.Time { return time.Now().UTC() })
	task, err := e.Store.CreateTask(ctx, store.NewTask{RegionID: "dc1", TargetMAC: mac, OSRef: ubuntuImage.OSRef})
	if err != nil || task.Status != store.StatusPending || task.Hardware != nil || task.Plan != nil {
		t.Fatalf("task from a stale report: %+v %v", task, err)
	}
	if left := e.Dump(t, "/os/unmatched_reports/dc1/"); len(left) != 0 {
		t.Fatalf("stale report kept: %v", left)
	}
}

// A task stuck in approved or installing past the deploy timeout fails with the reason;
// one within it is left alone.
func TestFailOverdue(t *testing.T) {
	e := storetest.Start(t)
	advertise(t, e.Store, "dc1", ubuntuImage)
	ctx := ctxT(t)
	start := time.Now().UTC()
	e.Store.SetClock(func() time.Time { return start })
	old := reportedTask(t, e, "52:54:00:00:10:07", oneDisk)
	if _, err := e.Store.ApproveTask(as(ctx, "alice"), old.TaskID, old.Plan.Digest); err != nil {
		t.Fatal(err)
	}
	e.Store.SetClock(func() time.Time { return start.Add(50 * time.Minute) })
	fresh := reportedTask(t, e, "52:54:00:00:10:08", oneDisk)
	if _, err := e.Store.ApproveTask(as(ctx, "alice"), fresh.TaskID, fresh.Plan.Digest); err != nil {
		t.Fatal(err)
	}
	e.Store.SetClock(func() time.Time { return start.Add(61 * time.Minute) })
	failed, err := e.Store.FailOverdue(ctx, "dc1", time.Hour)
	if err != nil || len(failed) != 1 || failed[0].TaskID != old.TaskID || failed[0].Status != store.StatusFailed || !strings.Contains(failed[0].Error, "deploy timeout") {
		t.Fatalf("FailOverdue = %+v, %v", failed, err)
	}
	if got, _ := e.Store.GetTask(ctx, fresh.TaskID); got.Status != store.StatusApproved {
		t.Fatalf("the fresh approval was touched: %s", got.Status)
	}
}

// Cancel during the install: the agent's account of what it wrote is kept, the status
// stays cancelled, and the error says the disk is partially written.
func TestCancelDuringInstall(t *testing.T) {
	e := storetest.Start(t)
	advertise(t, e.Store, "dc1", ubuntuImage)
	ctx := ctxT(t)
	mac := "52:54:00:00:10:09"
	task := approvedTask(t, e, mac, oneDisk)
	if _, err := e.Store.RecordProgress(ctx, store.ProgressUpdate{Region: "dc1", MAC: mac, TaskID: task.TaskID, Progress: contract.Progress{Stage: "writing", Percentage: 3}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Store.CancelTask(ctx, task.TaskID, ""); err != nil {
		t.Fatal(err)
	}
	abort := store.ProgressUpdate{Region: "dc1", MAC: mac, TaskID: task.TaskID, Progress: contract.Progress{Stage: contract.StageCancelled, Percentage: 3, BytesDone: 128 << 20}}
	got, err := e.Store.RecordProgress(ctx, abort)
	if err != nil || got.Status != store.StatusCancelled || got.Progress.BytesDone != 128<<20 || !strings.Contains(got.Error, "partially written") {
		t.Fatalf("abort record: %+v %v", got, err)
	}
	abort.MAC = "52:54:00:00:10:0a"
	if _, err := e.Store.RecordProgress(ctx, abort); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("another MAC's abort record: %v", err)
	}
}

// as is ctx with a person acting: what the control plane's authentication does.
func as(ctx context.Context, user string) context.Context {
	return store.WithActor(ctx, store.Actor{Kind: store.ActorUser, Name: user, Source: "192.0.2.10:51000"})
}
