package appliance_test

import (
	"bytes"
	"context"
	"encoding/json"
	"html"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/appliance"
	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

// tasksCLI runs `lpmos-appliance tasks args...` against etcd at endpoints, with no
// environment, and returns its output.
func tasksCLI(t *testing.T, endpoints []string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out, errOut bytes.Buffer
	args = append(args, "--etcd-endpoints="+strings.Join(endpoints, ","))
	err := appliance.Tasks(ctx, args, func(string) string { return "" }, &out, &errOut)
	return out.String(), err
}

// taskKeys is everything of the tasks in etcd: records, indexes, audit trail (not the
// heartbeat, which the appliance refreshes meanwhile).
func taskKeys(t *testing.T, e *storetest.Etcd) map[string]string {
	t.Helper()
	all := e.Dump(t, "/os/install/")
	for _, p := range []string{"/os/index/", "/os/audit/"} {
		for k, v := range e.Dump(t, p) {
			all[k] = v
		}
	}
	return all
}

// auditOf is the task's newest entry of action.
func auditOf(t *testing.T, st *store.Store, region, id, action string) store.AuditEntry {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	trail, err := st.ListAudit(ctx, store.AuditFilter{Region: region, TaskID: id, Action: action})
	if err != nil || len(trail) == 0 {
		t.Fatalf("audit %s of %s: %v, %d entries", action, id, err, len(trail))
	}
	return trail[0]
}

// controlPage GETs a page of a test control plane as its admin.
func controlPage(t *testing.T, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	controlTokens.Range(func(base, tok any) bool {
		if strings.HasPrefix(url, base.(string)+"/") {
			req.Header.Set("Authorization", "Bearer "+tok.(string))
		}
		return true
	})
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d", url, resp.StatusCode)
	}
	return html.UnescapeString(string(b))
}

// Break-glass on the appliance host: list, show, approve and cancel the region's tasks
// in its etcd. Approval takes the plan's digest, a name and a reason; every refusal
// writes nothing; an approval and a cancel are audited as local, and the control
// plane's task page names them so.
func TestBreakGlassTasks(t *testing.T) {
	sys := startSystemWith(t, func(c *appliance.Config) { addImage(t, c.ImagesDir, "ubuntu", "22.04") }, "dc1")
	ctl, dc1, st, eps := sys.control.URL(), sys.regions["dc1"].URL(), sys.etcd.Store, sys.etcd.Endpoints
	const macA, macB = "52:54:00:00:71:01", "52:54:00:00:71:02"
	idA, idB := createTask(t, ctl, macA), createTask(t, ctl, macB)
	reportHW(t, dc1, macA) // A: pending_approval, with a plan
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	taskA, err := st.GetTask(ctx, idA)
	if err != nil || taskA.Status != store.StatusPendingApproval || !taskA.Plan.Approvable() {
		t.Fatalf("task A: %+v, %v", taskA, err)
	}
	digest := taskA.Plan.Digest
	// A task of another region, which dc1's commands must not reach.
	other, err := st.CreateTask(ctx, store.NewTask{RegionID: "dc2", TargetMAC: "52:54:00:00:71:03", OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}})
	if err != nil {
		t.Fatal(err)
	}

	out, err := tasksCLI(t, eps, "list", "--label=dc1")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{idA, idB, "pending_approval", macA, macB, "ubuntu 22.04", "2 of 2 tasks in dc1"} {
		if !strings.Contains(out, want) {
			t.Errorf("list lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, other.TaskID) {
		t.Errorf("dc1's list shows dc2's task:\n%s", out)
	}
	if out, err = tasksCLI(t, eps, "list", "--label=dc1", "--status=pending"); err != nil || strings.Contains(out, idA) || !strings.Contains(out, idB) {
		t.Errorf("list --status=pending: %v\n%s", err, out)
	}
	if out, err = tasksCLI(t, eps, "list", "--label=dc1", "--limit=1"); err != nil || strings.Contains(out, idA) || !strings.Contains(out, "1 of 2 tasks") {
		t.Errorf("list --limit=1 (the newest, B): %v\n%s", err, out)
	}

	// show prints the stored plan whole: what approve approves.
	out, err = tasksCLI(t, eps, "show", idA, "--label=dc1")
	if err != nil {
		t.Fatal(err)
	}
	plan, _ := json.MarshalIndent(taskA.Plan, "", "  ")
	for _, want := range []string{string(plan), "/dev/vda", "S-" + macA, "tasks approve " + idA + " --label dc1 --digest " + digest, "task.report"} {
		if !strings.Contains(out, want) {
			t.Errorf("show lacks %q:\n%s", want, out)
		}
	}

	// Refusals: a missing --as, --reason or --digest, a wrong digest, another region's
	// task. Each names what is wrong, and etcd is unchanged.
	before := taskKeys(t, sys.etcd)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"approve", idA, "--digest", digest, "--reason", "WAN down"}, "--as"},
		{[]string{"approve", idA, "--digest", digest, "--as", "alice"}, "--reason"},
		{[]string{"approve", idA, "--digest", digest, "--as", " ", "--reason", "WAN down"}, "--as"},
		{[]string{"approve", idA, "--as", "alice", "--reason", "WAN down"}, "--digest"},
		{[]string{"approve", idA, "--digest", strings.Repeat("0", 64), "--as", "alice", "--reason", "WAN down"}, "the hardware changed, review again"},
		{[]string{"approve", idB, "--digest", digest, "--as", "alice", "--reason", "WAN down"}, "cannot become approved"},
		{[]string{"approve", other.TaskID, "--digest", digest, "--as", "alice", "--reason", "WAN down"}, "not found"},
		{[]string{"cancel", idB, "--reason", "pulled"}, "--as"},
		{[]string{"cancel", idB, "--as", "bob"}, "--reason"},
		{[]string{"cancel", idB, "--as", "bob", "--reason", "two\nlines"}, "--reason"},
		{[]string{"cancel", other.TaskID, "--as", "bob", "--reason", "pulled"}, "not found"},
		{[]string{"show", other.TaskID}, "not found"},
		{[]string{"list", "--limit=0"}, "--limit"},
		{[]string{"list", "--status=done"}, "--status"},
	} {
		out, err := tasksCLI(t, eps, append(c.args, "--label=dc1")...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v (want an error naming %q)\n%s", c.args, err, c.want, out)
		}
	}
	storetest.AssertSame(t, before, taskKeys(t, sys.etcd))

	// Approve: the plan by its digest, as alice, audited as local with the reason.
	const why = "WAN to hq down since 09:12, rack 4 rebuild cannot wait"
	out, err = tasksCLI(t, eps, "approve", idA, "--digest", digest, "--as", "alice", "--reason", why, "--label=dc1")
	if err != nil || !strings.Contains(out, "approved by local:alice (local, break-glass)") {
		t.Fatalf("approve: %v\n%s", err, out)
	}
	approved, _ := st.GetTask(ctx, idA)
	if approved.Status != store.StatusApproved || approved.Approval.ApprovedBy != "local:alice" || approved.Approval.PlanDigest != digest {
		t.Fatalf("after approve: %s %+v", approved.Status, approved.Approval)
	}
	e := auditOf(t, st, "dc1", idA, store.AuditTaskApprove)
	if e.Kind != store.ActorLocal || e.Actor != "local:alice" || !strings.HasPrefix(e.Source, "appliance-cli ") ||
		e.Detail["reason"] != why || e.Detail["plan_digest"] != digest {
		t.Fatalf("approval's audit entry: %+v", e)
	}
	// The control plane's timeline names it a local approval, with the reason.
	if page := controlPage(t, ctl+"/tasks/"+idA); !strings.Contains(page, "Approved by local:alice — local (break-glass) on the appliance host: "+why) {
		t.Fatalf("task page does not show the local approval:\n%s", page)
	}
	if _, err := tasksCLI(t, eps, "approve", idA, "--digest", digest, "--as", "alice", "--reason", why, "--label=dc1"); err == nil {
		t.Fatal("a second approval was accepted")
	}

	// Cancel: likewise audited as local, and shown so.
	out, err = tasksCLI(t, eps, "cancel", idB, "--as", "bob", "--reason", "machine pulled from the rack", "--label=dc1")
	if err != nil || !strings.Contains(out, "cancelled by local:bob") {
		t.Fatalf("cancel: %v\n%s", err, out)
	}
	if got := statusOf(t, st, idB); got != store.StatusCancelled {
		t.Fatalf("after cancel: %s", got)
	}
	if e := auditOf(t, st, "dc1", idB, store.AuditTaskCancel); e.Kind != store.ActorLocal || e.Actor != "local:bob" || e.Detail["reason"] != "machine pulled from the rack" {
		t.Fatalf("cancel's audit entry: %+v", e)
	}
	if page := controlPage(t, ctl+"/tasks/"+idB); !strings.Contains(page, "Cancelled by local:bob — local (break-glass) on the appliance host: machine pulled from the rack") {
		t.Fatalf("task page does not show the local cancel:\n%s", page)
	}
	// What a control plane user did keeps its plain name: no marker.
	if page := controlPage(t, ctl+"/tasks/"+idB); !strings.Contains(page, "Created by admin<") {
		t.Fatalf("task page: the creation by admin lost its plain name:\n%s", page)
	}
}

func statusOf(t *testing.T, st *store.Store, id string) store.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	task, err := st.GetTask(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	return task.Status
}

// With etcd's auth on, break-glass works with the region's own etcd identity
// (region-dc2, whose role reaches only dc2's keys: not the control plane's task
// index), and without credentials it is refused with a message naming the flags.
func TestBreakGlassWithRegionCredentials(t *testing.T) {
	e := storetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	img := contract.ImageRef{OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}, SHA256: strings.Repeat("ab", 32), Size: 1 << 30, Format: "raw"}
	beat, err := e.Store.StartHeartbeat(ctx, func() store.Heartbeat { return store.Heartbeat{Region: "dc2", Images: []contract.ImageRef{img}} }, time.Minute, nil)
	if err != nil {
		t.Fatal(err)
	}
	const mac = "52:54:00:00:72:01"
	task, err := e.Store.CreateTask(ctx, store.NewTask{RegionID: "dc2", TargetMAC: mac, OSRef: img.OSRef})
	if err != nil {
		t.Fatal(err)
	}
	hw := `{"disks":[{"name":"vda","path":"/dev/vda","size_bytes":8589934592,"serial":"V1"}]}`
	if _, err := e.Store.Report(ctx, "dc2", mac, json.RawMessage(hw)); err != nil {
		t.Fatal(err)
	}
	beat.Stop(ctx)
	planned, err := e.Store.GetTask(ctx, task.TaskID)
	if err != nil || !planned.Plan.Approvable() {
		t.Fatalf("planned task: %+v %v", planned.Plan, err)
	}
	if err := e.Store.EnsureRegionRole(ctx, "dc2", "dc2-secret"); err != nil {
		t.Fatal(err)
	}
	if err := e.Store.EnableAuth(ctx, "root-secret"); err != nil {
		t.Fatal(err)
	}
	// The region's identity cannot read the task index: a lookup through it is refused.
	regionStore, err := store.OpenUser(ctx, e.Endpoints, store.RegionUser("dc2"), "dc2-secret")
	if err != nil {
		t.Fatal(err)
	}
	defer regionStore.Close()
	if _, err := regionStore.GetTask(ctx, task.TaskID); !store.PermissionDenied(err) {
		t.Fatalf("region-dc2 read the task index: %v", err)
	}

	if _, err := tasksCLI(t, e.Endpoints, "list", "--label=dc2"); err == nil || !strings.Contains(err.Error(), "--etcd-user") {
		t.Fatalf("without credentials: %v", err)
	}
	as := []string{"--label=dc2", "--etcd-user=" + store.RegionUser("dc2"), "--etcd-password=dc2-secret"}
	if out, err := tasksCLI(t, e.Endpoints, append([]string{"list"}, as...)...); err != nil || !strings.Contains(out, task.TaskID) {
		t.Fatalf("list as region-dc2: %v\n%s", err, out)
	}
	if out, err := tasksCLI(t, e.Endpoints, append([]string{"show", task.TaskID}, as...)...); err != nil || !strings.Contains(out, planned.Plan.Digest) {
		t.Fatalf("show as region-dc2: %v\n%s", err, out)
	}
	out, err := tasksCLI(t, e.Endpoints, append([]string{"approve", task.TaskID, "--digest", planned.Plan.Digest, "--as", "carol", "--reason", "hq unreachable"}, as...)...)
	if err != nil {
		t.Fatalf("approve as region-dc2: %v\n%s", err, out)
	}
	got, err := regionStore.OpenTaskForMAC(ctx, "dc2", mac)
	if err != nil || got.Status != store.StatusApproved || got.Approval.ApprovedBy != "local:carol" {
		t.Fatalf("after approve: %+v %v", got.Approval, err)
	}
	if e := auditOf(t, regionStore, "dc2", task.TaskID, store.AuditTaskApprove); e.Kind != store.ActorLocal || e.Detail["reason"] != "hq unreachable" {
		t.Fatalf("audit entry: %+v", e)
	}
}
