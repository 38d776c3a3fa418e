package control_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/control"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

var ubuntuImage = contract.ImageRef{OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}, SHA256: strings.Repeat("ab", 32), Size: 2 << 30, Format: "raw"}

// The pages without a browser: everything reads and every action works as plain HTML
// forms (no JavaScript), and actions keep the API's rules.
func TestPagesWithoutJavaScript(t *testing.T) {
	ctx, cp, etcd := startControl(t, store.Heartbeat{Region: "dc1", APIURL: "http://dc1.example:8081", Images: []contract.ImageRef{ubuntuImage}})
	base := cp.URL()
	st := etcd.Store

	// Add task: server-side validation next to the fields, then a redirect to the task.
	code, body, _ := form(t, base+"/tasks/create", url.Values{"region": {"dc1"}, "mac": {"nope"}, "os_type": {""}, "os_version": {"1"}}, nil)
	if code != http.StatusBadRequest || !strings.Contains(body, `id="mac-error"`) || !strings.Contains(body, `id="os_type-error"`) ||
		!strings.Contains(body, `value="nope"`) {
		t.Fatalf("invalid create: %d\n%s", code, body)
	}
	code, _, loc := form(t, base+"/tasks/create", url.Values{"region": {"dc1"}, "mac": {"00-1A-2B-3C-4D-5E"}, "image": {"os_type=ubuntu&os_version=22.04"}}, nil)
	if code != http.StatusSeeOther || !strings.HasPrefix(loc, "/tasks/") {
		t.Fatalf("create: %d %q", code, loc)
	}
	id := strings.TrimPrefix(strings.Split(loc, "?")[0], "/tasks/")
	task, err := st.GetTask(ctx, id)
	if err != nil || task.TargetMAC != "00:1a:2b:3c:4d:5e" || task.OSType != "ubuntu" || task.OSVersion != "22.04" {
		t.Fatalf("created task = %+v, %v", task, err)
	}
	code, _, _ = form(t, base+"/tasks/create", url.Values{"region": {"dc1"}, "mac": {"00:1a:2b:3c:4d:5e"}, "os_type": {"x"}, "os_version": {"1"}}, nil)
	if code != http.StatusConflict {
		t.Fatalf("second open task for a MAC: %d, want 409", code)
	}

	// Approval is refused before the hardware report, through the page as through the API.
	code, body, _ = form(t, base+"/tasks/"+id+"/approve", url.Values{"confirm": {"yes"}}, nil)
	if code != http.StatusConflict || !strings.Contains(body, "cannot become approved") {
		t.Fatalf("approve a pending task: %d", code)
	}
	if _, err := st.Report(ctx, "dc1", "00:1a:2b:3c:4d:5e", json.RawMessage(testHardware)); err != nil {
		t.Fatal(err)
	}
	// Another site cannot submit the form in an operator's browser.
	code, _, _ = form(t, base+"/tasks/"+id+"/approve", url.Values{"confirm": {"yes"}}, map[string]string{"Sec-Fetch-Site": "cross-site"})
	if code != http.StatusForbidden || statusOf(t, st, id) != store.StatusPendingApproval {
		t.Fatalf("cross-site approve: %d, status %s", code, statusOf(t, st, id))
	}
	// Without the dialog, the first submit is a confirmation page naming disk and image
	// as the stored plan says, with the plan's digest in the form.
	planned, _ := st.GetTask(ctx, id)
	code, body, _ = form(t, base+"/tasks/"+id+"/approve", nil, nil)
	if code != http.StatusOK || !strings.Contains(body, "Disk to be wiped: <strong>/dev/nvme0n1, 480 GB") ||
		!strings.Contains(body, "ubuntu 22.04") || !strings.Contains(body, `name="plan_digest" value="`+planned.Plan.Digest+`"`) ||
		statusOf(t, st, id) != store.StatusPendingApproval {
		t.Fatalf("confirmation page: %d, status %s\n%s", code, statusOf(t, st, id), body)
	}
	// A confirmation without the digest, or with another, approves nothing.
	for _, digest := range []string{"", strings.Repeat("0", 64)} {
		if code, _, _ = form(t, base+"/tasks/"+id+"/approve", url.Values{"confirm": {"yes"}, "plan_digest": {digest}}, nil); code < 400 || statusOf(t, st, id) != store.StatusPendingApproval {
			t.Fatalf("approve with digest %q: %d, status %s", digest, code, statusOf(t, st, id))
		}
	}
	code, _, loc = form(t, base+"/tasks/"+id+"/approve", url.Values{"confirm": {"yes"}, "plan_digest": {planned.Plan.Digest}}, nil)
	if code != http.StatusSeeOther || statusOf(t, st, id) != store.StatusApproved {
		t.Fatalf("approve: %d %q, status %s", code, loc, statusOf(t, st, id))
	}
	code, body, _ = form(t, base+"/tasks/"+id+"/approve", url.Values{"confirm": {"yes"}, "plan_digest": {planned.Plan.Digest}}, nil)
	if code != http.StatusConflict || !strings.Contains(body, `id="action-error"`) {
		t.Fatalf("approve twice: %d", code)
	}

	// Reading: every page renders from etcd without JavaScript.
	for path, wants := range map[string][]string{
		"/":                          {"dc1", "online", "00:1a:2b:3c:4d:5e", "approved"},
		"/?status=completed":         {"No tasks match."},
		"/?region=Bad!&status=nope":  {"unknown region", "unknown status", "00:1a:2b:3c:4d:5e"},
		"/tasks/create?region=dc1":   {`<option value="dc1" selected>`, `<option value="os_type=ubuntu&amp;os_version=22.04">`},
		"/tasks/" + id:               {"Intel Xeon Silver 4310", "/dev/nvme0n1", "Approved by admin", "MT27800", "Created by admin"},
		"/audit?task=" + id:          {"task.create", "task.report", "task.approve", "plan_digest"},
		"/audit?action=task.cancel":  {"No entries match."},
		"/regions/dc1":               {"http://dc1.example:8081", "ubuntu 22.04", "first seen online"},
		"/unmatched":                 {"No unmatched reports"},
		"/static/ui.js":              {"new WebSocket"},
		"/static/style.css":          {".badge"},
		"/static/":                   {"404 page not found"},
		"/regions/dc9":               {"Not Found"},
		"/tasks/not-a-task":          {"Not Found"},
		"/tasks/" + id + "?flash=zz": {"Task <code>" + id},
	} {
		code, body := get(t, base+path)
		wantCode := http.StatusOK
		if w := strings.Join(wants, ""); strings.Contains(w, "Not Found") || strings.Contains(w, "404") {
			wantCode = http.StatusNotFound
		}
		if code != wantCode {
			t.Errorf("GET %s: %d, want %d", path, code, wantCode)
		}
		for _, w := range wants {
			if !strings.Contains(body, w) {
				t.Errorf("GET %s lacks %q", path, w)
			}
		}
	}

	// Unmatched report: listed with its hardware, matched by creating a task (from the
	// region's catalog), after which the page is empty again.
	const stray = "fe:b7:02:c0:95:e0"
	res, err := st.Report(ctx, "dc1", stray, json.RawMessage(testHardware))
	if err != nil || res.Unmatched == nil {
		t.Fatalf("stray report: %+v %v", res, err)
	}
	code, body = get(t, base+"/unmatched")
	if code != 200 || !strings.Contains(body, stray) || !strings.Contains(body, "SAMSUNG MZ7LH480") {
		t.Fatalf("unmatched page: %d", code)
	}
	matchURL := base + "/unmatched/dc1/" + res.Unmatched.ID + "/match"
	code, body, _ = form(t, matchURL, url.Values{"os_type": {""}}, nil)
	if code != http.StatusBadRequest || !strings.Contains(body, "is required") {
		t.Fatalf("match without an OS: %d", code)
	}
	code, _, loc = form(t, matchURL, url.Values{"image": {"os_type=ubuntu&os_version=22.04"}}, nil)
	if code != http.StatusSeeOther {
		t.Fatalf("match: %d", code)
	}
	matched, err := st.GetTask(ctx, strings.TrimPrefix(strings.Split(loc, "?")[0], "/tasks/"))
	if err != nil || matched.Status != store.StatusPendingApproval || matched.TargetMAC != stray || len(matched.Hardware) == 0 {
		t.Fatalf("matched task = %+v, %v", matched, err)
	}

	// Linking: a report beside a pending task of its MAC (written by hand here: the
	// store never leaves one, but an operator restoring keys can) is linked to it.
	const other = "02:00:00:00:00:07"
	pending, err := st.CreateTask(ctx, store.NewTask{RegionID: "dc1", TargetMAC: other, OSRef: contract.OSRef{OSType: "debian", OSVersion: "12"}})
	if err != nil {
		t.Fatal(err)
	}
	// Add task suggests what the regions' catalogs offer, not what tasks once named.
	if code, body := get(t, base+"/tasks/create"); code != 200 || !strings.Contains(body, `<option value="ubuntu">`) || strings.Contains(body, `<option value="debian">`) {
		t.Errorf("add task suggestions: %d, want the catalog's ubuntu and not a task's debian", code)
	}
	reportID := "20260130100009-" + other
	report, _ := json.Marshal(store.UnmatchedReport{ID: reportID, MACAddress: other, Region: "dc1", Hardware: json.RawMessage(testHardware), ReceivedAt: time.Now().UTC()})
	if _, err := etcd.Client.Put(ctx, "/os/unmatched_reports/dc1/"+reportID, string(report)); err != nil {
		t.Fatal(err)
	}
	code, body = get(t, base+"/unmatched?region=dc1")
	if code != 200 || !strings.Contains(body, `<option value="`+pending.TaskID+`">`) {
		t.Fatalf("unmatched page does not offer the pending task: %d", code)
	}
	code, _, loc = form(t, base+"/unmatched/dc1/"+reportID+"/match", url.Values{"task_id": {pending.TaskID}}, nil)
	if linked, _ := st.GetTask(ctx, pending.TaskID); code != http.StatusSeeOther || linked.Status != store.StatusPendingApproval || len(linked.Hardware) == 0 ||
		!strings.HasPrefix(loc, "/tasks/"+pending.TaskID) {
		t.Fatalf("link: %d %q, task %s", code, loc, linked.Status)
	}
	code, body, _ = form(t, base+"/unmatched/dc1/"+reportID+"/match", url.Values{"task_id": {pending.TaskID}}, nil)
	if code != http.StatusNotFound || !strings.Contains(body, `id="match-error"`) || !strings.Contains(body, "not found") {
		t.Fatalf("link a consumed report: %d", code)
	}

	// Cancel with a reason, from the page.
	code, _, _ = form(t, base+"/tasks/"+matched.TaskID+"/cancel", url.Values{"action": {"reject"}, "reason": {"wrong rack"}}, nil)
	if c, _ := st.GetTask(ctx, matched.TaskID); code != http.StatusSeeOther || c.Status != store.StatusCancelled || !strings.Contains(c.Error, "wrong rack") {
		t.Fatalf("reject: %d, %s %q", code, c.Status, c.Error)
	}
}

var noRedirect = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// form posts an HTML form and returns status, body and Location.
func form(t *testing.T, u string, v url.Values, header map[string]string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(v.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	authorize(req)
	for k, val := range header {
		req.Header.Set(k, val)
	}
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header.Get("Location")
}

func get(t *testing.T, u string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	authorize(req)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
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

// An OS named with a space travels as two fields end to end: catalog -> heartbeat ->
// the add-task page's choice -> the task, and the API's catalog check finds it. (The
// heartbeat once carried "os_type os_version" strings split at the first space, which
// turned "Rocky Linux 9.4" into type "Rocky", version "Linux 9.4".)
func TestOSNameWithSpace(t *testing.T) {
	rocky := contract.OSRef{OSType: "Rocky Linux", OSVersion: "9.4"}
	ctx, cp, etcd := startControl(t, store.Heartbeat{Region: "dc1", Images: []contract.ImageRef{{OSRef: rocky, SHA256: strings.Repeat("e", 64), Size: 1 << 30}}})
	_, body, _ := form(t, cp.URL()+"/tasks/create?region=dc1", nil, nil)
	if !strings.Contains(body, `<option value="os_type=Rocky&#43;Linux&amp;os_version=9.4">Rocky Linux 9.4</option>`) {
		t.Fatalf("the catalog choice does not carry both names:\n%s", body)
	}
	code, _, loc := form(t, cp.URL()+"/tasks/create", url.Values{"region": {"dc1"}, "mac": {"00:1a:2b:3c:4d:01"}, "image": {"os_type=Rocky+Linux&os_version=9.4"}}, nil)
	if code != http.StatusSeeOther {
		t.Fatalf("create from the catalog: %d", code)
	}
	task, err := etcd.Store.GetTask(ctx, strings.TrimPrefix(strings.Split(loc, "?")[0], "/tasks/"))
	if err != nil || task.OSRef != rocky {
		t.Fatalf("task OS = %+v, %v; want %+v", task.OSRef, err, rocky)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, cp.URL()+"/api/v1/tasks",
		strings.NewReader(`{"region_id":"dc1","target_mac":"00:1a:2b:3c:4d:02","os_type":"rocky linux","os_version":"9.4"}`))
	req.Header.Set("Content-Type", "application/json")
	authorize(req)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var created struct {
		Warning string `json:"warning"`
	}
	json.NewDecoder(resp.Body).Decode(&created)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || created.Warning != "" {
		t.Fatalf("API create: %d, warning %q (the region's catalog has Rocky Linux 9.4)", resp.StatusCode, created.Warning)
	}
}

// startControl runs a control plane on a fresh etcd with an admin (the request
// helpers use its token) and one region advertising hb.
func startControl(t *testing.T, hb store.Heartbeat) (context.Context, *control.Server, *storetest.Etcd) {
	t.Helper()
	ctx, cp, etcd := startBareControl(t, time.Minute)
	withAdmin(t, etcd.Store, cp.URL())
	beat, err := etcd.Store.StartHeartbeat(ctx, func() store.Heartbeat { return hb }, 10*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { beat.Stop(context.Background()) })
	return ctx, cp, etcd
}

// startBareControl runs a control plane on a fresh etcd with nobody in it; ctx ends
// after timeout.
func startBareControl(t testing.TB, timeout time.Duration) (context.Context, *control.Server, *storetest.Etcd) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	etcd := storetest.Start(t)
	cp, err := control.Start(ctx, control.Config{Host: "127.0.0.1", EtcdEndpoints: etcd.Endpoints, UnmatchedAlert: 5},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cp.Stop() })
	return ctx, cp, etcd
}
