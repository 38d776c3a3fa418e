package federation_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/federation"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

var ubuntu = contract.ImageRef{OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}, SHA256: strings.Repeat("ab", 32), Size: 48 << 20, Format: "raw"}

const oneDisk = `{"cpu":{"cores":4},"disks":[{"name":"vda","path":"/dev/vda","size_bytes":1073741824,"serial":"VDA1"}]}`

func as(ctx context.Context, user string) context.Context {
	return store.WithActor(ctx, store.Actor{Kind: store.ActorUser, Name: user, Source: "192.0.2.10:51000"})
}

// heartbeat starts region's appliance heartbeat (with an image, so plans approve) on s.
func heartbeat(t *testing.T, s *store.Store, region string) *store.Heartbeater {
	t.Helper()
	hb, err := s.StartHeartbeat(context.Background(), func() store.Heartbeat {
		return store.Heartbeat{Region: region, Images: []contract.ImageRef{ubuntu}}
	}, 10*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hb.Stop(context.Background()) })
	return hb
}

// populate gives region tasks in every state (through the calls the control plane and
// the appliance make), an unmatched report, a DHCP lease and region cloud-init
// defaults, with the appliance's heartbeat running; it returns the task ids.
func populate(t *testing.T, ctx context.Context, s *store.Store, region string, macByte int) []string {
	t.Helper()
	hb := heartbeat(t, s, region)
	mac := func(i int) string { return fmt.Sprintf("52:54:00:%02x:00:%02x", macByte, i) }
	var ids []string
	create := func(i int) store.Task {
		task, err := s.CreateTask(as(ctx, "alice"), store.NewTask{RegionID: region, TargetMAC: mac(i), OSRef: ubuntu.OSRef})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, task.TaskID)
		return task
	}
	report := func(i int) store.Task {
		res, err := s.Report(ctx, region, mac(i), json.RawMessage(oneDisk))
		if err != nil || !res.Matched {
			t.Fatalf("report %s: %+v %v", mac(i), res, err)
		}
		return res.Task
	}
	approve := func(i int) store.Task {
		create(i)
		task := report(i)
		if _, err := s.ApproveTask(as(ctx, "alice"), task.TaskID, task.Plan.Digest); err != nil {
			t.Fatal(err)
		}
		return task
	}
	progress := func(task store.Task, i int, stage contract.Stage, pct float64) {
		if _, err := s.RecordProgress(ctx, store.ProgressUpdate{Region: region, MAC: mac(i), TaskID: task.TaskID,
			Progress: contract.Progress{Stage: stage, Percentage: pct}}); err != nil {
			t.Fatalf("progress %s: %v", stage, err)
		}
	}
	create(1) // pending
	create(2)
	report(2) // pending_approval
	approve(3)
	progress(approve(4), 4, "downloading", 40) // installing
	done := approve(5)
	progress(done, 5, "downloading", 50)
	progress(done, 5, "completed", 100)
	failed := approve(6)
	progress(failed, 6, "writing", 60)
	progress(failed, 6, "failed", 60)
	cancelled := create(7)
	if _, err := s.CancelTask(as(ctx, "alice"), cancelled.TaskID, "wrong machine"); err != nil {
		t.Fatal(err)
	}
	if res, err := s.Report(ctx, region, mac(99), json.RawMessage(oneDisk)); err != nil || res.Matched {
		t.Fatalf("unmatched report: %+v %v", res, err)
	}
	if err := s.PutLease(ctx, region, store.DHCPLease{MAC: mac(4), IP: fmt.Sprintf("10.%d.0.4", macByte), Expiry: time.Now().Add(time.Hour).UTC()}); err != nil {
		t.Fatal(err)
	}
	// Region defaults for the next tasks (after these: the test image has no partition
	// table to seed into).
	if err := s.SetRegionCloudInit(as(ctx, "alice"), region, &contract.CloudInit{SSHAuthorizedKeys: []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops@example"}}); err != nil {
		t.Fatal(err)
	}
	// The appliance is stopped for the copy (runbook step 1).
	if err := hb.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	return ids
}

// regionState is everything a region reads: its tasks whole, unmatched reports,
// leases, cloud-init defaults, audit trail, as JSON.
func regionState(t *testing.T, ctx context.Context, s *store.Store, region string, ids []string) map[string]string {
	t.Helper()
	out := map[string]string{}
	put := func(name string, v any, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		b, _ := json.Marshal(v)
		out[name] = string(b)
	}
	for _, id := range ids {
		task, err := s.GetTask(ctx, id)
		put("task "+id, task, err)
	}
	um, err := s.ListUnmatched(ctx, region)
	put("unmatched", um, err)
	leases, err := s.ListLeases(ctx, region)
	put("leases", leases, err)
	ci, err := s.RegionCloudInit(ctx, region)
	put("cloud-init", ci, err)
	audit, err := s.ListAudit(ctx, store.AuditFilter{Region: region})
	put("audit", audit, err)
	for _, st := range store.Statuses {
		page, _, err := s.TaskPage(ctx, region, st, store.Page{Limit: 100})
		put("page "+string(st), page, err)
	}
	return out
}

// isRegionKey: one of region's keys (its prefixes, or its task index entries).
func isRegionKey(region, key, value string) bool {
	for _, p := range store.RegionPrefixes(region) {
		if strings.HasPrefix(key, p) {
			return true
		}
	}
	return strings.HasPrefix(key, "/os/index/task/") && value == region
}

// dc1 moves from the shared cluster to its own with tasks in every state: after the
// migration a store on the own cluster reads every task, report, lease and audit entry
// of dc1 as the shared one did; the shared cluster holds no dc1 key and dc2's keys and
// the control plane's are untouched; every refusal on the way writes nothing.
func TestMigrateRegion(t *testing.T) {
	shared, own := storetest.Start(t), storetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if _, _, err := shared.Store.Bootstrap(ctx, "admin", "a long admin password", time.Hour); err != nil {
		t.Fatal(err)
	}
	dc1 := populate(t, ctx, shared.Store, "dc1", 1)
	populate(t, ctx, shared.Store, "dc2", 2)
	want := regionState(t, ctx, shared.Store, "dc1", dc1)
	if len(want) < 10 || !strings.Contains(want["page installing"], "downloading") || !strings.Contains(want["unmatched"], "52:54:00:01:00:63") {
		t.Fatalf("populate: %v", want)
	}
	sharedBefore := shared.Dump(t, "/os/")

	var out bytes.Buffer
	mig := federation.Migration{Home: shared.Store, Target: own.Store, Region: "dc1", Out: &out}
	to := store.RegionCluster{Region: "dc1", Endpoints: own.Endpoints}

	unchanged := func(step string) {
		t.Helper()
		storetest.AssertSame(t, sharedBefore, shared.Dump(t, "/os/"))
		if d := own.Dump(t, "/os/"); len(d) != 0 && step != "planted" {
			t.Fatalf("%s: the target was written: %v", step, d)
		}
	}
	refused := func(step, want string, err error) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: want an error saying %q, got %v", step, want, err)
		}
		unchanged(step)
	}

	// Refusals before anything is copied.
	_, err := federation.Migration{Home: shared.Store, Target: shared.Store, Region: "dc1"}.Copy(ctx, to, true)
	refused("copy onto itself", "control plane's own etcd", err)
	_, err = mig.Copy(ctx, store.RegionCluster{Region: "dc2", Endpoints: own.Endpoints}, false)
	refused("target of another region", "region \"dc2\"", err)
	_, err = federation.Migration{Home: shared.Store, Target: own.Store, Region: "dc9"}.Copy(ctx, store.RegionCluster{Region: "dc9", Endpoints: own.Endpoints}, false)
	refused("empty region", "no key of region dc9", err)
	_, err = mig.Verify(ctx)
	refused("verify before copy", "no migration of region dc1", err)
	refused("register before copy", "no migration of region dc1", mig.Register(ctx))
	refused("finish before copy", "no migration of region dc1", mig.Finish(ctx, false))

	// The appliance still running against the shared etcd.
	hb := heartbeat(t, shared.Store, "dc1")
	_, err = mig.Copy(ctx, to, false)
	if err == nil || !strings.Contains(err.Error(), "appliance is alive") {
		t.Fatalf("copy with the appliance alive: %v", err)
	}
	if err := hb.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	sharedBefore = shared.Dump(t, "/os/") // Stop rewrote status offline (same value)

	// A target that does not answer.
	dead := storetest.Start(t)
	dead.Server.Close()
	dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
	_, err = federation.Migration{Home: shared.Store, Target: dead.Store, Region: "dc1"}.Copy(dctx, store.RegionCluster{Region: "dc1", Endpoints: dead.Endpoints}, false)
	dcancel()
	if err == nil || !strings.Contains(err.Error(), "read the target") {
		t.Fatalf("unreachable target: %v", err)
	}
	unchanged("unreachable target")

	// A target that holds dc1 keys already: refused without --force, replaced with it.
	if err := own.Store.PutLease(ctx, "dc1", store.DHCPLease{MAC: "52:54:00:01:00:77", IP: "10.1.0.77"}); err != nil {
		t.Fatal(err)
	}
	planted := own.Dump(t, "/os/")
	_, err = mig.Copy(ctx, to, false)
	refused("planted", "holds 1 key(s) of region dc1", err)
	storetest.AssertSame(t, planted, own.Dump(t, "/os/"))

	start := time.Now()
	rec, err := mig.Copy(ctx, to, true)
	if err != nil {
		t.Fatalf("copy: %v\n%s", err, out.String())
	}
	t.Logf("copy of %d keys: %s\n%s", rec.Keys, time.Since(start).Round(time.Millisecond), out.String())
	if _, ok := own.Get(t, "/os/dhcp/leases/dc1/10.1.0.77"); ok {
		t.Fatal("--force kept the target's own dc1 key")
	}
	wantKeys := 0
	for k, v := range sharedBefore {
		if isRegionKey("dc1", k, v) {
			wantKeys++
		}
	}
	if rec.Keys != wantKeys || !strings.Contains(out.String(), fmt.Sprintf("copied %d key(s)", wantKeys)) || !strings.Contains(out.String(), "7 task index") {
		t.Fatalf("copied %d keys, the shared etcd holds %d of dc1:\n%s", rec.Keys, wantKeys, out.String())
	}
	// The own cluster, read as the region (InRegion: no task index), holds dc1 whole.
	inOwn, err := own.Store.InRegion("dc1")
	if err != nil {
		t.Fatal(err)
	}
	got := regionState(t, ctx, inOwn, "dc1", dc1)
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("own cluster %s:\n got  %s\n want %s", k, got[k], v)
		}
	}
	for k, v := range own.Dump(t, "/os/") {
		if !isRegionKey("dc1", k, v) {
			t.Fatalf("the copy wrote %s, not a dc1 key", k)
		}
	}
	// A second copy is refused: the target holds the region now.
	_, err = mig.Copy(ctx, to, false)
	if err == nil || !strings.Contains(err.Error(), "holds") {
		t.Fatalf("second copy: %v", err)
	}

	out.Reset()
	if _, err := mig.Verify(ctx); err != nil || !strings.Contains(out.String(), "unchanged since the copy") || !strings.Contains(out.String(), "as copied") {
		t.Fatalf("verify: %v\n%s", err, out.String())
	}
	// Finish before the registration: refused.
	sharedBefore = shared.Dump(t, "/os/")
	ownBefore := own.Dump(t, "/os/")
	if err := mig.Finish(ctx, false); err == nil || !strings.Contains(err.Error(), "register dc1 first") {
		t.Fatalf("finish before register: %v", err)
	}
	storetest.AssertSame(t, sharedBefore, shared.Dump(t, "/os/"))
	storetest.AssertSame(t, ownBefore, own.Dump(t, "/os/"))

	if err := mig.Register(ctx); err != nil {
		t.Fatalf("register: %v", err)
	}
	cs, _, _, err := shared.Store.RegionClusters(ctx)
	if err != nil || len(cs) != 1 || cs[0].Region != "dc1" || cs[0].Endpoints[0] != own.Endpoints[0] {
		t.Fatalf("registered: %+v %v", cs, err)
	}
	// The appliance now runs on its own etcd: heartbeat, an install's progress.
	heartbeat(t, own.Store, "dc1")
	if _, err := inOwn.RecordProgress(ctx, store.ProgressUpdate{Region: "dc1", MAC: "52:54:00:01:00:04", TaskID: dc1[3],
		Progress: contract.Progress{Stage: "writing", Percentage: 70}}); err != nil {
		t.Fatal(err)
	}

	// Something still writes dc1 in the shared etcd: finish refuses, deletes nothing.
	if err := shared.Store.PutLease(ctx, "dc1", store.DHCPLease{MAC: "52:54:00:01:00:08", IP: "10.1.0.8"}); err != nil {
		t.Fatal(err)
	}
	sharedBefore, ownBefore = shared.Dump(t, "/os/"), own.Dump(t, "/os/")
	err = mig.Finish(ctx, false)
	if err == nil || !strings.Contains(err.Error(), "changed since the copy") || !strings.Contains(err.Error(), "/os/dhcp/leases/dc1/10.1.0.8") {
		t.Fatalf("finish after a write in the shared etcd: %v", err)
	}
	storetest.AssertSame(t, sharedBefore, shared.Dump(t, "/os/"))
	storetest.AssertSame(t, ownBefore, own.Dump(t, "/os/"))
	if err := shared.Store.DeleteLease(ctx, "dc1", "10.1.0.8"); err != nil {
		t.Fatal(err)
	}

	// The own etcd compacted past the copy: finish compares key by key instead.
	resp, err := own.Client.Get(ctx, "/os/health-probe")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := own.Client.Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := mig.Finish(ctx, false); err != nil {
		t.Fatalf("finish: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "compacted") || !strings.Contains(out.String(), fmt.Sprintf("deleted %d key(s)", wantKeys)) {
		t.Fatalf("finish said:\n%s", out.String())
	}
	t.Logf("finish:\n%s", out.String())

	after := shared.Dump(t, "/os/")
	for k, v := range after {
		if isRegionKey("dc1", k, v) {
			t.Fatalf("the shared etcd still holds %s after finish", k)
		}
		if _, was := sharedBefore[k]; !was && !strings.HasPrefix(k, "/os/audit/_control/") {
			t.Fatalf("finish wrote %s in the shared etcd", k)
		}
	}
	for k, v := range sharedBefore {
		if !isRegionKey("dc1", k, v) && k != "/os/federation/migrations/dc1" && after[k] != v {
			t.Fatalf("finish changed %s (not dc1's) in the shared etcd", k)
		}
	}
	if _, err := shared.Store.GetRegionMigration(ctx, "dc1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("migration record after finish: %v", err)
	}
	// Each step is audited in the control plane's scope.
	entries, err := shared.Store.ListAudit(ctx, store.AuditFilter{Action: store.AuditRegionMigrate})
	if err != nil || len(entries) != 3 {
		t.Fatalf("audit of the migration: %+v %v", entries, err)
	}
	// The own cluster still serves dc1 (the task moved on there), by id through its index too.
	task, err := own.Store.GetTask(ctx, dc1[3])
	if err != nil || task.Progress == nil || task.Progress.Stage != "writing" {
		t.Fatalf("own cluster after finish: %+v %v", task, err)
	}
}

// A finish that stopped half-way (the shared etcd's connection lost between two
// batches of deletions) is resumed by finishing again; a write in between is found.
func TestMigrateFinishResumes(t *testing.T) {
	shared, own := storetest.Start(t), storetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// More keys than one transaction (128) holds.
	for i := range 100 {
		if err := shared.Store.PutLease(ctx, "dc1", store.DHCPLease{MAC: fmt.Sprintf("52:54:00:01:01:%02x", i), IP: fmt.Sprintf("10.1.1.%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	dc1 := populate(t, ctx, shared.Store, "dc1", 1)
	mig := federation.Migration{Home: shared.Store, Target: own.Store, Region: "dc1"}
	rec, err := mig.Copy(ctx, store.RegionCluster{Region: "dc1", Endpoints: own.Endpoints}, false)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Keys <= 128 {
		t.Fatalf("only %d keys: the test needs more than one batch", rec.Keys)
	}
	if err := mig.Register(ctx); err != nil {
		t.Fatal(err)
	}
	// What an interrupted finish leaves: the record marked finishing, part deleted.
	rec.Finishing = true
	if err := shared.Store.PutRegionMigration(ctx, rec); err != nil {
		t.Fatal(err)
	}
	src, err := shared.Store.ReadRegionKeys(ctx, "dc1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := shared.Store.DeleteRegionKeys(ctx, src.KVs[:128]); err != nil || n != 128 {
		t.Fatalf("partial delete: %d %v", n, err)
	}
	// A write since the copy is still refused.
	if err := shared.Store.PutLease(ctx, "dc1", store.DHCPLease{MAC: "52:54:00:01:00:08", IP: "10.1.0.8"}); err != nil {
		t.Fatal(err)
	}
	if err := mig.Finish(ctx, false); err == nil || !strings.Contains(err.Error(), "10.1.0.8") {
		t.Fatalf("resumed finish after a write: %v", err)
	}
	if err := shared.Store.DeleteLease(ctx, "dc1", "10.1.0.8"); err != nil {
		t.Fatal(err)
	}
	if err := mig.Finish(ctx, false); err != nil {
		t.Fatalf("resumed finish: %v", err)
	}
	for k, v := range shared.Dump(t, "/os/") {
		if isRegionKey("dc1", k, v) {
			t.Fatalf("left in the shared etcd: %s", k)
		}
	}
	inOwn, _ := own.Store.InRegion("dc1")
	for _, id := range dc1 {
		if _, err := inOwn.GetTask(ctx, id); err != nil {
			t.Fatalf("task %s on the own cluster: %v", id, err)
		}
	}
}

// Abort forgets a migration not yet registered (the shared etcd untouched); a copy
// onto a cluster where the region's appliance runs already is refused even with
// --force; finish with static (the target in the control plane's configuration, not
// registered) goes without a registration.
func TestMigrateAbortLiveTargetStatic(t *testing.T) {
	shared, own := storetest.Start(t), storetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	populate(t, ctx, shared.Store, "dc1", 1)
	mig := federation.Migration{Home: shared.Store, Target: own.Store, Region: "dc1"}
	to := store.RegionCluster{Region: "dc1", Endpoints: own.Endpoints}
	sharedBefore := shared.Dump(t, "/os/install/")
	if _, err := mig.Copy(ctx, to, false); err != nil {
		t.Fatal(err)
	}
	if err := mig.Abort(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := shared.Store.GetRegionMigration(ctx, "dc1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("record after abort: %v", err)
	}
	storetest.AssertSame(t, sharedBefore, shared.Dump(t, "/os/install/"))
	if err := mig.Abort(ctx); err == nil || !strings.Contains(err.Error(), "no migration") {
		t.Fatalf("abort twice: %v", err)
	}

	// The region's appliance runs on the target: even --force refuses.
	hb := heartbeat(t, own.Store, "dc1")
	ownBefore := own.Dump(t, "/os/")
	if _, err := mig.Copy(ctx, to, true); err == nil || !strings.Contains(err.Error(), "runs on the target already") {
		t.Fatalf("copy onto a live appliance: %v", err)
	}
	storetest.AssertSame(t, ownBefore, own.Dump(t, "/os/"))
	if err := hb.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := mig.Copy(ctx, to, true); err != nil {
		t.Fatalf("copy again with --force: %v", err)
	}
	if err := mig.Register(ctx); err != nil {
		t.Fatal(err)
	}
	if err := mig.Abort(ctx); err == nil || !strings.Contains(err.Error(), "regions remove dc1 first") {
		t.Fatalf("abort once registered: %v", err)
	}
	if _, err := shared.Store.DeleteRegionCluster(ctx, "dc1"); err != nil {
		t.Fatal(err)
	}
	if err := mig.Finish(ctx, false); err == nil || !strings.Contains(err.Error(), "not registered") {
		t.Fatalf("finish unregistered: %v", err)
	}
	if err := mig.Finish(ctx, true); err != nil {
		t.Fatalf("finish --static: %v", err)
	}
	for k, v := range shared.Dump(t, "/os/") {
		if isRegionKey("dc1", k, v) {
			t.Fatalf("left: %s", k)
		}
	}
}
