package control_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

const oneDiskReport = `{"disks":[{"name":"vda","path":"/dev/vda","size_bytes":1073741824,"serial":"VDA1"}]}`

// regions add NAME --etcd registers a cluster that answered (and nothing when it does
// not, or the flags are wrong), list/show say where each region lives, remove refuses
// while the region has open tasks there.
func TestRegionsAddRemoveCluster(t *testing.T) {
	home, dc7 := storetest.Start(t), storetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ep := strings.Join(dc7.Endpoints, ",")
	if _, err := home.Store.CreateTask(ctx, store.NewTask{RegionID: "dc1", TargetMAC: "52:54:00:00:01:01", OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}}); err != nil {
		t.Fatal(err)
	}
	homeBefore, dc7Before := home.Dump(t, "/"), dc7.Dump(t, "/")
	refused := func(want string, args ...string) {
		t.Helper()
		start := time.Now()
		_, _, err := runCLI(t, home, "", args...)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("%v: want an error saying %q, got %v", args, want, err)
		}
		storetest.AssertSame(t, homeBefore, home.Dump(t, "/"))
		storetest.AssertSame(t, dc7Before, dc7.Dump(t, "/"))
		t.Logf("%v refused in %s: %v", args, time.Since(start).Round(time.Millisecond), err)
	}
	refused("does not answer", "regions", "add", "dc7", "--etcd", "http://127.0.0.1:1", "--dial-timeout", "2s")
	refused("not an http:// or https:// etcd endpoint", "regions", "add", "dc7", "--etcd", "ftp://x:1")
	refused("at least one etcd endpoint", "regions", "add", "dc7", "--etcd", ",")
	refused("password_file", "regions", "add", "dc7", "--etcd", ep, "--region-etcd-user", "bob:secret")
	refused("--etcd-user bob needs --etcd-password", "regions", "add", "dc7", "--etcd", ep, "--region-etcd-user", "bob")
	refused("does not apply", "regions", "add", "dc7", "--region-etcd-cacert", "/x")
	refused("does not apply", "regions", "add", "dc7", "--etcd", ep, "--password-file", "/x")
	refused("does not apply", "regions", "remove", "dc7", "--etcd", ep)
	refused("region_id", "regions", "add", "DC7", "--etcd", ep)
	refused("no etcd of its own registered", "regions", "remove", "dc7")
	// dc1's tasks are in the control plane's etcd: another cluster would hide them.
	refused("regions migrate copy dc1", "regions", "add", "dc1", "--etcd", ep)

	out, _, err := runCLI(t, home, "", "regions", "add", "dc7", "--etcd", ep, "--role")
	if err != nil || !strings.Contains(out, "registered its own etcd "+ep) || !strings.Contains(out, "region-dc7") {
		t.Fatalf("regions add dc7 --etcd: %q %v", out, err)
	}
	cs, _, _, err := home.Store.RegionClusters(ctx)
	if err != nil || len(cs) != 1 || cs[0].Region != "dc7" || strings.Join(cs[0].Endpoints, ",") != ep {
		t.Fatalf("registration: %+v %v", cs, err)
	}
	if perms, err := dc7.Store.RolePermissions(ctx, "region-dc7"); err != nil || len(perms) == 0 {
		t.Fatalf("role region-dc7 in dc7's etcd: %v %v", perms, err)
	}
	if entries, err := home.Store.ListAudit(ctx, store.AuditFilter{Action: store.AuditRegionCluster}); err != nil || len(entries) != 1 || entries[0].Target != "dc7" || entries[0].Actor != "system:cli" {
		t.Fatalf("audit: %+v %v", entries, err)
	}
	out, _, err = runCLI(t, home, "", "regions", "list")
	if err != nil || !strings.Contains(out, "dc1          shared") || !strings.Contains(out, "dc7          own     "+ep) {
		t.Fatalf("regions list:\n%s %v", out, err)
	}
	out, _, err = runCLI(t, home, "", "regions", "show", "dc7")
	if err != nil || !strings.Contains(out, "region dc7: own") {
		t.Fatalf("regions show dc7:\n%s %v", out, err)
	}

	// An open task in dc7's cluster: remove refuses; once it is cancelled, removes.
	task, err := dc7.Store.CreateTask(ctx, store.NewTask{RegionID: "dc7", TargetMAC: "52:54:00:00:07:01", OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}})
	if err != nil {
		t.Fatal(err)
	}
	homeBefore, dc7Before = home.Dump(t, "/"), dc7.Dump(t, "/")
	refused("1 open task(s)", "regions", "remove", "dc7")
	if _, err := dc7.Store.CancelTask(ctx, task.TaskID, ""); err != nil {
		t.Fatal(err)
	}
	out, _, err = runCLI(t, home, "", "regions", "remove", "dc7")
	if err != nil || !strings.Contains(out, "registration of its etcd "+ep+" removed") {
		t.Fatalf("regions remove dc7: %q %v", out, err)
	}
	if cs, _, _, err := home.Store.RegionClusters(ctx); err != nil || len(cs) != 0 {
		t.Fatalf("after remove: %+v %v", cs, err)
	}
	// --force removes a registration whose cluster does not answer.
	if err := home.Store.PutRegionCluster(ctx, store.RegionCluster{Region: "dc8", Endpoints: []string{"http://127.0.0.1:1"}}); err != nil {
		t.Fatal(err)
	}
	homeBefore, dc7Before = home.Dump(t, "/"), dc7.Dump(t, "/")
	refused("cannot count its open tasks", "regions", "remove", "dc8", "--dial-timeout", "2s")
	if _, _, err := runCLI(t, home, "", "regions", "remove", "dc8", "--force"); err != nil {
		t.Fatalf("remove --force: %v", err)
	}
}

// The migration through the command: copy, verify, register, finish, each step saying
// what it did, and refusing out of order.
func TestRegionsMigrateCommand(t *testing.T) {
	home, own := storetest.Start(t), storetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var ids []string
	for _, mac := range []string{"52:54:00:00:01:01", "52:54:00:00:01:02"} {
		task, err := home.Store.CreateTask(ctx, store.NewTask{RegionID: "dc1", TargetMAC: mac, OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, task.TaskID)
	}
	if _, err := home.Store.Report(ctx, "dc1", "52:54:00:00:01:02", json.RawMessage(oneDiskReport)); err != nil {
		t.Fatal(err)
	}
	if _, err := home.Store.CreateTask(ctx, store.NewTask{RegionID: "dc2", TargetMAC: "52:54:00:00:02:01", OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}}); err != nil {
		t.Fatal(err)
	}
	ep := strings.Join(own.Endpoints, ",")
	run := func(want string, args ...string) string {
		t.Helper()
		out, _, err := runCLI(t, home, "", args...)
		if err != nil || !strings.Contains(out, want) {
			t.Fatalf("%v: want %q in\n%s\nerr %v", args, want, out, err)
		}
		return out
	}
	homeBefore := home.Dump(t, "/")
	refused := func(want string, args ...string) {
		t.Helper()
		_, _, err := runCLI(t, home, "", args...)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("%v: want an error saying %q, got %v", args, want, err)
		}
		storetest.AssertSame(t, homeBefore, home.Dump(t, "/"))
	}
	refused("does not answer", "regions", "migrate", "copy", "dc1", "--to", "http://127.0.0.1:1", "--dial-timeout", "2s")
	refused("--to URL", "regions", "migrate", "copy", "dc1")
	refused("which step", "regions", "migrate")
	refused("unknown subcommand", "regions", "migrate", "move", "dc1")
	refused("no migration of region dc1", "regions", "migrate", "verify", "dc1")
	refused("no migration of region dc1", "regions", "migrate", "finish", "dc1")
	if d := own.Dump(t, "/os/"); len(d) != 0 {
		t.Fatalf("refusals wrote the target: %v", d)
	}

	run("copied ", "regions", "migrate", "copy", "dc1", "--to", ep)
	run("aborted", "regions", "migrate", "abort", "dc1")
	homeBefore = home.Dump(t, "/")
	refused("holds", "regions", "migrate", "copy", "dc1", "--to", ep)
	refused("does not apply", "regions", "migrate", "verify", "dc1", "--static")
	out := run("copied ", "regions", "migrate", "copy", "dc1", "--to", ep, "--force")
	t.Logf("copy:\n%s", out)
	run("next: register", "regions", "list")
	run("verified", "regions", "migrate", "verify", "dc1")
	homeBefore = home.Dump(t, "/")
	refused("regions migrate register dc1 first", "regions", "migrate", "finish", "dc1")
	run("registered "+ep, "regions", "migrate", "register", "dc1")
	homeBefore = home.Dump(t, "/")
	refused("migration is in progress", "regions", "remove", "dc1")
	out = run("deleted ", "regions", "migrate", "finish", "dc1")
	t.Logf("finish:\n%s", out)
	for k := range home.Dump(t, "/os/") {
		if strings.Contains(k, "/dc1/") {
			t.Fatalf("left in the control plane's etcd: %s", k)
		}
	}
	for _, id := range ids {
		if v, ok := home.Get(t, "/os/index/task/"+id); ok {
			t.Fatalf("task index of %s left: %s", id, v)
		}
		if task, err := own.Store.GetTask(ctx, id); err != nil || task.RegionID != "dc1" {
			t.Fatalf("task %s on dc1's own etcd: %+v %v", id, task, err)
		}
	}
	out = run("dc1          own     "+ep, "regions", "list")
	if !strings.Contains(out, "dc2          shared") || strings.Contains(out, "migration") {
		t.Fatalf("regions list after the migration:\n%s", out)
	}
}
