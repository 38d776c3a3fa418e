package store_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

// authEtcd is an embedded etcd with auth on: the control plane's user, regions dc1,
// dc10 and dc2 (dc10 beside dc1: a prefix that is not closed by '/' would cover it),
// each with the password "pw-"+user.
func authEtcd(t *testing.T) *storetest.Etcd {
	t.Helper()
	e := storetest.Start(t)
	ctx := ctxT(t)
	if err := e.Store.EnsureControlRole(ctx, "pw-"+store.ControlUser); err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{"dc1", "dc10", "dc2"} {
		if err := e.Store.EnsureRegionRole(ctx, r, "pw-"+store.RegionUser(r)); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Store.EnableAuth(ctx, "pw-root"); err != nil {
		t.Fatal(err)
	}
	return e
}

// client dials e as user (password "pw-"+user).
func client(t *testing.T, e *storetest.Etcd, user string) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints, DialTimeout: 10 * time.Second, Username: user, Password: "pw-" + user})
	if err != nil {
		t.Fatalf("dial as %s: %v", user, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func openAs(t *testing.T, e *storetest.Etcd, user string) *store.Store {
	t.Helper()
	s, err := store.OpenUser(ctxT(t), e.Endpoints, user, "pw-"+user)
	if err != nil {
		t.Fatalf("open as %s: %v", user, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// The role holds exactly RegionPrefixes (read-write) and the health probe (read), and
// EnsureRegionRole takes back a permission someone added by hand.
func TestRegionRoleIsExactlyTheRegionPrefixes(t *testing.T) {
	e := authEtcd(t)
	ctx := ctxT(t)
	root := openAs(t, e, "root")
	want := func() []string {
		var w []string
		for _, p := range store.RegionPrefixes("dc2") {
			w = append(w, "readwrite "+p+" (prefix)")
		}
		w = append(w, "read /os/health-probe")
		slices.Sort(w)
		return w
	}()
	perms := func() []string {
		ps, err := root.RolePermissions(ctx, store.RegionUser("dc2"))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, p := range ps {
			got = append(got, p.String())
		}
		slices.Sort(got)
		return got
	}
	if got := perms(); !slices.Equal(got, want) {
		t.Fatalf("role region-dc2:\n got  %q\n want %q", got, want)
	}
	rootCli := client(t, e, "root")
	if _, err := rootCli.RoleGrantPermission(ctx, store.RegionUser("dc2"), "/os/", clientv3.GetPrefixRangeEnd("/os/"), clientv3.PermissionType(clientv3.PermRead)); err != nil {
		t.Fatal(err)
	}
	if _, err := rootCli.RoleGrantPermission(ctx, store.RegionUser("dc2"), store.RegionPrefixes("dc2")[0], clientv3.GetPrefixRangeEnd(store.RegionPrefixes("dc2")[0]), clientv3.PermissionType(clientv3.PermRead)); err != nil {
		t.Fatal(err)
	}
	if got := perms(); slices.Equal(got, want) {
		t.Fatal("the hand-made grants did not change the role")
	}
	if err := root.EnsureRegionRole(ctx, "dc2", ""); err != nil {
		t.Fatal(err)
	}
	if got := perms(); !slices.Equal(got, want) {
		t.Fatalf("after EnsureRegionRole again:\n got  %q\n want %q", got, want)
	}
	// The password stayed (an empty one leaves a user's alone).
	client(t, e, store.RegionUser("dc2"))
	// A new user without a password is for certificates only: no password opens it.
	if err := root.EnsureRegionRole(ctx, "dc3", ""); err != nil {
		t.Fatal(err)
	}
	for _, pw := range []string{"", "pw-region-dc3"} {
		if s, err := store.OpenUser(ctx, e.Endpoints, store.RegionUser("dc3"), pw); !store.CredentialsRefused(err) {
			if s != nil {
				s.Close()
			}
			t.Fatalf("region-dc3 with password %q: want refused, got %v", pw, err)
		}
	}
}

// With dc2's credentials every dc1 (and dc10) prefix and every control-only prefix is
// refused by etcd, for reads, writes, deletes, transactions and watches, each asserted
// per prefix; dc2's own prefixes answer.
func TestRegionCannotReachAnotherRegion(t *testing.T) {
	e := authEtcd(t)
	ctx := ctxT(t)
	ctl := openAs(t, e, store.ControlUser)
	dc1 := openAs(t, e, store.RegionUser("dc1"))
	// Something to find in dc1: a task with hardware, an unmatched report, a lease.
	if _, err := ctl.CreateTask(ctx, store.NewTask{RegionID: "dc1", TargetMAC: "52:54:00:00:01:01", OSRef: ubuntuImage.OSRef}); err != nil {
		t.Fatal(err)
	}
	if _, err := dc1.Report(ctx, "dc1", "52:54:00:00:01:01", json.RawMessage(oneDisk)); err != nil {
		t.Fatal(err)
	}
	if _, err := dc1.Report(ctx, "dc1", "52:54:00:00:01:02", json.RawMessage(oneDisk)); err != nil {
		t.Fatal(err)
	}
	if err := dc1.PutLease(ctx, "dc1", store.DHCPLease{MAC: "52:54:00:00:01:02", IP: "10.1.0.5"}); err != nil {
		t.Fatal(err)
	}

	controlOnly := []string{"/os/", "/os/install/task/", "/os/region/", "/os/unmatched_reports/", "/os/index/",
		"/os/index/task/", "/os/auth/", "/os/audit/", "/os/audit/_control/", "/os/dhcp/leases/"}
	refused := map[string][]string{
		store.RegionUser("dc2"): slices.Concat(store.RegionPrefixes("dc1"), store.RegionPrefixes("dc10"), controlOnly),
		store.RegionUser("dc1"): slices.Concat(store.RegionPrefixes("dc10"), store.RegionPrefixes("dc2"), controlOnly),
	}
	for user, prefixes := range refused {
		t.Run(user, func(t *testing.T) {
			t.Parallel()
			c := client(t, e, user)
			// At once: etcd refuses a write only when applying it, so each refusal is a
			// raft entry, and concurrent ones share an fsync.
			var wg sync.WaitGroup
			for _, p := range prefixes {
				wg.Go(func() { assertRefused(t, ctx, c, user, p) })
			}
			wg.Wait()
		})
	}
	// The same users reach their own keys (so the refusals above are about the prefix).
	for _, r := range []string{"dc1", "dc2"} {
		c := client(t, e, store.RegionUser(r))
		for _, p := range store.RegionPrefixes(r) {
			if _, err := c.Get(ctx, p, clientv3.WithPrefix()); err != nil {
				t.Errorf("%s reading its own %s: %v", store.RegionUser(r), p, err)
			}
			if _, err := c.Put(ctx, p+"rbac-probe", "x"); err != nil {
				t.Errorf("%s writing its own %s: %v", store.RegionUser(r), p, err)
			}
			if _, err := c.Delete(ctx, p+"rbac-probe"); err != nil {
				t.Errorf("%s deleting in its own %s: %v", store.RegionUser(r), p, err)
			}
		}
	}
	// Without a user nothing answers.
	anon, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints, DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	if _, err := anon.Get(ctx, store.RegionPrefixes("dc2")[0], clientv3.WithPrefix()); err == nil {
		t.Error("a client without a user read dc2's tasks")
	}
}

// assertRefused: reading (range and one key), writing, deleting, a transaction and a
// watch under prefix are each refused to c with etcd's permission denied.
func assertRefused(t *testing.T, ctx context.Context, c *clientv3.Client, user, prefix string) {
	t.Helper()
	key := prefix + "rbac-probe"
	for what, do := range map[string]func() error{
		"range": func() error { _, err := c.Get(ctx, prefix, clientv3.WithPrefix()); return err },
		"get":   func() error { _, err := c.Get(ctx, key); return err },
		"count": func() error {
			_, err := c.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
			return err
		},
		"put":    func() error { _, err := c.Put(ctx, key, "x"); return err },
		"delete": func() error { _, err := c.Delete(ctx, prefix, clientv3.WithPrefix()); return err },
		"txn":    func() error { _, err := c.Txn(ctx).Then(clientv3.OpPut(key, "x")).Commit(); return err },
		"watch":  func() error { return watchErr(ctx, c, prefix) },
	} {
		if err := do(); !store.PermissionDenied(err) {
			t.Errorf("%s %s %s: want permission denied, got %v", user, what, prefix, err)
		}
	}
}

// watchErr is the error a watch on prefix ends with (etcd cancels a refused watch).
func watchErr(ctx context.Context, c *clientv3.Client, prefix string) error {
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for wr := range c.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify()) {
		if err := wr.Err(); err != nil {
			return err
		}
		if wr.Created {
			return nil
		}
	}
	return wctx.Err()
}

// dc2's appliance side of the store, dialed as region-dc2, does the whole flow:
// heartbeat with its catalog, task watch, reports (matched with an agent token,
// unmatched), approval long-poll, progress to completed and a repeated completed,
// audit, DHCP leases, housekeeping, region counts, health; the control plane, as
// lpmos-control, creates, approves and reads everything.
func TestRegionFlowWithItsOwnRole(t *testing.T) {
	e := authEtcd(t)
	ctx := ctxT(t)
	ctl := openAs(t, e, store.ControlUser)
	dc2 := openAs(t, e, store.RegionUser("dc2"))
	const mac, stranger = "52:54:00:00:02:01", "52:54:00:00:02:02"

	hb, err := dc2.StartHeartbeat(ctx, func() store.Heartbeat {
		return store.Heartbeat{Region: "dc2", Images: []contract.ImageRef{ubuntuImage}}
	}, 3*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan store.TaskEvent, 64)
	ready := make(chan struct{})
	wctx, stopWatch := context.WithCancel(ctx)
	watchDone := make(chan error, 1)
	go func() {
		watchDone <- dc2.WatchTasks(wctx, "dc2", func() { close(ready) }, func(ev store.TaskEvent) {
			select {
			case events <- ev:
			default:
			}
		})
	}()
	select {
	case <-ready:
	case err := <-watchDone:
		t.Fatalf("watch dc2's tasks: %v", err)
	case <-ctx.Done():
		t.Fatal("watch not ready")
	}

	task, err := ctl.CreateTask(ctx, store.NewTask{RegionID: "dc2", TargetMAC: mac, OSRef: ubuntuImage.OSRef})
	if err != nil {
		t.Fatal(err)
	}
	waitEvent(t, ctx, events, func(ev store.TaskEvent) bool { return ev.TaskID == task.TaskID && ev.Created })

	mint := func(id string, gen int64) string { return fmt.Sprintf("token-%s-%d", id, gen) }
	res, err := dc2.ReportIssuing(ctx, "dc2", mac, json.RawMessage(oneDisk), mint)
	if err != nil || !res.Matched || res.AgentToken == "" || res.Task.Plan == nil || !res.Task.Plan.Approvable() {
		t.Fatalf("report: %+v %v", res, err)
	}
	if um, err := dc2.Report(ctx, "dc2", stranger, json.RawMessage(oneDisk)); err != nil || um.Unmatched == nil {
		t.Fatalf("unmatched report: %+v %v", um, err)
	}
	if n, err := dc2.Replan(ctx, "dc2"); err != nil || n != 0 {
		t.Fatalf("replan: %d %v", n, err)
	}

	approved := make(chan error, 1)
	go func() { approved <- dc2.WaitStatus(ctx, "dc2", task.TaskID, store.StatusPendingApproval) }()
	if _, err := ctl.ApproveTask(as(ctx, "alice"), task.TaskID, res.Task.Plan.Digest); err != nil {
		t.Fatal(err)
	}
	if err := <-approved; err != nil {
		t.Fatalf("approval long-poll: %v", err)
	}
	open, err := dc2.OpenTaskForMAC(ctx, "dc2", mac)
	if err != nil || open.Status != store.StatusApproved || !open.AgentToken.Matches(res.AgentToken) {
		t.Fatalf("open task: %+v %v", open, err)
	}
	for _, p := range []contract.Progress{
		{Stage: contract.StageDownloading, Percentage: 40},
		{Stage: contract.StageCompleted, Percentage: 100},
		{Stage: contract.StageCompleted, Percentage: 100}, // the answer was lost: acknowledged again
	} {
		got, err := dc2.RecordProgress(ctx, store.ProgressUpdate{Region: "dc2", MAC: mac, TaskID: task.TaskID, Progress: p})
		if err != nil {
			t.Fatalf("progress %s: %v", p.Stage, err)
		}
		if p.Stage == contract.StageCompleted && got.Status != store.StatusCompleted {
			t.Fatalf("progress %s: status %s", p.Stage, got.Status)
		}
	}
	if last, err := dc2.LatestTaskForMAC(ctx, "dc2", mac); err != nil || last.Status != store.StatusCompleted {
		t.Fatalf("latest task: %+v %v", last, err)
	}
	if err := dc2.Audit(ctx, store.AuditAgentTokenReject, "dc2", mac, map[string]string{"reason": "test"}); err != nil {
		t.Fatal(err)
	}
	lease := store.DHCPLease{MAC: stranger, IP: "10.2.0.9", Expiry: time.Now().Add(time.Hour).UTC()}
	if err := dc2.ApplyLeases(ctx, "dc2", []store.DHCPLease{lease}, []string{"10.2.0.8"}); err != nil {
		t.Fatal(err)
	}
	if ls, err := dc2.ListLeases(ctx, "dc2"); err != nil || len(ls) != 1 {
		t.Fatalf("leases: %+v %v", ls, err)
	}
	if err := dc2.DeleteLease(ctx, "dc2", lease.IP); err != nil {
		t.Fatal(err)
	}
	if _, err := dc2.ExpireUnmatched(ctx, "dc2"); err != nil {
		t.Fatal(err)
	}
	if _, err := dc2.FailOverdue(ctx, "dc2", time.Hour); err != nil {
		t.Fatal(err)
	}
	reg, err := dc2.GetRegion(ctx, "dc2")
	if err != nil || !reg.Online || reg.Counts[store.StatusCompleted] != 1 || reg.Unmatched != 1 {
		t.Fatalf("region: %+v %v", reg, err)
	}
	if err := dc2.Ping(ctx); err != nil {
		t.Fatalf("ping: %v", err)
	}
	if _, err := dc2.Alarms(ctx); err != nil {
		t.Fatalf("alarms: %v", err)
	}
	// The task index is the control plane's: the region is refused it.
	if _, err := dc2.GetTask(ctx, task.TaskID); !store.PermissionDenied(err) {
		t.Fatalf("dc2 reading the task index: want permission denied, got %v", err)
	}
	if err := hb.Beat(ctx); err != nil {
		t.Fatalf("heartbeat: %v", err)
	}
	stopWatch()
	if err := <-watchDone; err != nil && ctx.Err() == nil && wctx.Err() == nil {
		t.Fatalf("watch: %v", err)
	}
	if err := hb.Stop(ctx); err != nil {
		t.Fatalf("heartbeat stop (revoke): %v", err)
	}

	// The control plane reads it all.
	got, err := ctl.GetTask(ctx, task.TaskID)
	if err != nil || got.Status != store.StatusCompleted {
		t.Fatalf("control reads the task: %+v %v", got, err)
	}
	trail, err := ctl.ListAudit(ctx, store.AuditFilter{Region: "dc2"})
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, a := range trail {
		actions = append(actions, a.Action)
	}
	for _, a := range []string{store.AuditTaskCreate, store.AuditTaskApprove, store.AuditTaskComplete, store.AuditAgentTokenReject} {
		if !slices.Contains(actions, a) {
			t.Errorf("audit of dc2 lacks %s: %v", a, actions)
		}
	}
	regions, err := ctl.ListRegions(ctx)
	if err != nil || len(regions) == 0 {
		t.Fatalf("regions: %+v %v", regions, err)
	}
	if _, err := ctl.Alarms(ctx); err != nil {
		t.Fatal(err)
	}
	// Every key of dc2 lies under its prefixes (the task index holds dc2 as a value).
	all, err := client(t, e, "root").Get(ctx, store.ControlPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range all.Kvs {
		k := string(kv.Key)
		if strings.Contains(k, "/dc2/") && !slices.ContainsFunc(store.RegionPrefixes("dc2"), func(p string) bool { return strings.HasPrefix(k, p) }) {
			t.Errorf("%s is dc2's but under none of its prefixes", k)
		}
	}
}

func waitEvent(t *testing.T, ctx context.Context, events <-chan store.TaskEvent, ok func(store.TaskEvent) bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev := <-events:
			if ok(ev) {
				return
			}
		case <-deadline:
			t.Fatal("no matching task event within 10 s")
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
	}
}
