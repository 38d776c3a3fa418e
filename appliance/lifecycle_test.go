package appliance_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"lpmos.dev/lpmos/internal/syncbuf"

	"lpmos.dev/lpmos/agent-initramfs/agent"
	"lpmos.dev/lpmos/appliance"
	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/control"
	"lpmos.dev/lpmos/images"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

type system struct {
	token     string // an admin's API token for the control plane
	etcd      *storetest.Etcd
	control   *control.Server
	regions   map[string]*appliance.Appliance
	logs      map[string]*syncbuf.Buffer
	imagesDir string
}

// startSystem runs a control plane and one appliance per region on one embedded etcd.
func startSystem(t *testing.T, regions ...string) *system {
	return startSystemWith(t, nil, regions...)
}

// startSystemWith lets a test adjust each appliance's config before it starts.
func startSystemWith(t *testing.T, adjust func(*appliance.Config), regions ...string) *system {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	sys := &system{etcd: storetest.Start(t), regions: map[string]*appliance.Appliance{}, logs: map[string]*syncbuf.Buffer{}, imagesDir: t.TempDir()}
	c, err := control.Start(ctx, control.Config{Host: "127.0.0.1", EtcdEndpoints: sys.etcd.Endpoints}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop() })
	sys.control = c
	if _, err := sys.etcd.Store.AddUser(ctx, "admin", store.RoleAdmin, "correct horse battery"); err != nil {
		t.Fatal(err)
	}
	_, tok, err := sys.etcd.Store.CreateToken(ctx, "admin", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	sys.token = tok
	controlTokens.Store(c.URL(), tok)
	for _, r := range regions {
		logs := &syncbuf.Buffer{}
		cfg := appliance.Config{
			Label: r, APIHost: "127.0.0.1", EtcdEndpoints: sys.etcd.Endpoints,
			HeartbeatTTL: 5 * time.Second, RetryAfter: 2, ImagesDir: sys.imagesDir, LogLevel: "info",
		}
		if adjust != nil {
			adjust(&cfg)
		}
		a, err := appliance.Start(ctx, cfg, logs)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Stop() })
		sys.regions[r], sys.logs[r] = a, logs
	}
	return sys
}

// call does one JSON request and decodes the reply.
func call(t *testing.T, method, url string, body any) (int, map[string]any) {
	t.Helper()
	return callAuth(t, method, url, "", body)
}

// callAuth is call with an agent token (Authorization: Bearer), when not "".
func callAuth(t *testing.T, method, url, token string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, method, url, rd)
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	} else {
		// Calls to a control plane of a test system carry its admin's token.
		controlTokens.Range(func(base, tok any) bool {
			if strings.HasPrefix(url, base.(string)+"/") {
				req.Header.Set("Authorization", "Bearer "+tok.(string))
			}
			return true
		})
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	var out map[string]any
	data, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatalf("%s %s: HTTP %d, body is not JSON: %q", method, url, resp.StatusCode, data)
	}
	return resp.StatusCode, out
}

func getJSON(t *testing.T, s string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("not JSON: %q", s)
	}
	return m
}

// controlTokens maps a test control plane's URL to its admin token, for call.
var controlTokens sync.Map

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// The seed's Test 1: create task -> agent reports (MAC in other letter case) ->
// pending_approval -> approve -> image downloaded -> progress -> completed.
func TestNormalFlow(t *testing.T) {
	var image []byte
	// The image is in the catalog before the appliance starts, so its first
	// heartbeat advertises it (later additions show within a third of the TTL).
	sys := startSystemWith(t, func(c *appliance.Config) { image = addImage(t, c.ImagesDir, "ubuntu", "22.04") }, "dc1")
	code, task := call(t, "POST", sys.control.URL()+"/api/v1/tasks", map[string]string{
		"region_id": "dc1", "target_mac": "00:1a:2b:3c:4d:5e", "os_type": "ubuntu", "os_version": "22.04"})
	if code != http.StatusCreated || task["status"] != "pending" || task["warning"] != nil {
		t.Fatalf("create: %d %v", code, task)
	}
	id := task["task_id"].(string)
	prefix := "/os/install/task/dc1/" + id + "/"
	meta := getJSON(t, must(sys.etcd.Get(t, prefix+"metadata")))
	for k, want := range map[string]string{"task_id": id, "region_id": "dc1", "target_mac": "00:1a:2b:3c:4d:5e", "os_type": "ubuntu", "os_version": "22.04"} {
		if meta[k] != want {
			t.Errorf("metadata %s = %v, want %s", k, meta[k], want)
		}
	}
	sys.etcd.WaitValue(t, prefix+"status", "pending", time.Second)

	// Host mode: the machine's one disk is found by its identities, and --target
	// redirects the bytes into a file of the developer's.
	target := filepath.Join(t.TempDir(), "disk.img")
	m := newFileDisks(t, "00:1A:2B:3C:4D:5E", contract.Disk{Name: "vda", SizeBytes: 1 << 30, Serial: "V1"})
	cfg := m.agentConfig(sys.regions["dc1"].URL())
	cfg.Target = target
	agentErr := runAgent(cfg)
	sys.etcd.WaitValue(t, prefix+"status", "pending_approval", 30*time.Second)
	hw := getJSON(t, must(sys.etcd.Get(t, prefix+"hardware")))
	if _, ok := hw["cpu"]; !ok {
		t.Fatalf("hardware report lacks cpu: %v", hw)
	}
	if code, body := call(t, "POST", sys.control.URL()+"/api/v1/tasks/"+id+"/approve", nil); code != http.StatusBadRequest || body["field"] != "plan_digest" {
		t.Fatalf("approve without the plan's digest: %d %v", code, body)
	}
	plan := approve(t, sys.control.URL(), id)
	select {
	case err := <-agentErr:
		if err != nil {
			t.Fatalf("agent: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("agent did not finish")
	}
	if v, _ := sys.etcd.Get(t, prefix+"status"); v != "completed" {
		t.Fatalf("status = %q", v)
	}
	prog := getJSON(t, must(sys.etcd.Get(t, prefix+"progress")))
	if prog["stage"] != "completed" || prog["percentage"] != 100.0 {
		t.Fatalf("progress = %v", prog)
	}
	appr := getJSON(t, must(sys.etcd.Get(t, prefix+"approval")))
	if appr["status"] != "approved" || appr["plan_digest"] != plan.Digest || appr["disk_serial"] != "V1" || appr["image_sha256"] != plan.Image.SHA256 {
		t.Fatalf("approval = %v", appr)
	}
	if w := m.written(t); len(w) != 0 {
		t.Fatalf("host mode wrote the real disk too: %v", w)
	}
	meta = getJSON(t, must(sys.etcd.Get(t, prefix+"metadata")))
	for _, k := range []string{"created_at", "reported_at", "approved_at", "started_at", "finished_at"} {
		if meta[k] == nil {
			t.Errorf("metadata lacks %s: %v", k, meta)
		}
	}
	got, _ := os.ReadFile(target)
	if !bytes.Equal(got, image) {
		t.Fatalf("target holds %d bytes, want the %d-byte image", len(got), len(image))
	}
	// The audit trail: every state change, in order, with its actor.
	code, audit := call(t, "GET", sys.control.URL()+"/api/v1/audit?task="+id, nil)
	entries, _ := audit["entries"].([]any)
	var trail []string
	for i := len(entries) - 1; i >= 0; i-- { // the API lists newest first
		e := entries[i].(map[string]any)
		trail = append(trail, fmt.Sprint(e["action"], " by ", e["actor"]))
		if e["action"] == "task.approve" {
			if d := e["detail"].(map[string]any); d["plan_digest"] != plan.Digest || d["disk_serial"] != "V1" || d["image_sha256"] != plan.Image.SHA256 {
				t.Errorf("approval audit detail = %v", d)
			}
		}
	}
	want := []string{"task.create by admin", "task.report by agent:00:1a:2b:3c:4d:5e", "task.approve by admin",
		"task.start by agent:" + id, "task.complete by agent:" + id}
	if code != 200 || strings.Join(trail, "; ") != strings.Join(want, "; ") {
		t.Errorf("audit trail:\n got  %v\n want %v", trail, want)
	}
	logs := sys.logs["dc1"].String()
	for _, line := range []string{
		"[dc1] New task assigned: " + id,
		"[dc1] Task " + id + " ready for PXE boot (target MAC: 00:1a:2b:3c:4d:5e)",
		"[dc1] Received hardware report from agent: 00:1a:2b:3c:4d:5e",
		"[dc1] Found matching task " + id + " for MAC 00:1a:2b:3c:4d:5e",
		"[dc1] Hardware report stored for task " + id,
	} {
		if !strings.Contains(logs, line) {
			t.Errorf("log lacks %q", line)
		}
	}
	for _, l := range strings.Split(strings.TrimSpace(logs), "\n") {
		if !strings.Contains(l, " [dc1] ") {
			t.Errorf("log line without label: %q", l)
		}
	}
}

// A task for an OS the region lacks is accepted with a warning; its plan says the image
// is missing and approval is refused with that reason, nothing written. Once the image
// is uploaded the appliance replans and the new plan can be approved and installed.
func TestMissingImageWaitsForUpload(t *testing.T) {
	var imagesDir string
	sys := startSystemWith(t, func(c *appliance.Config) { imagesDir = c.ImagesDir; addImage(t, c.ImagesDir, "debian", "12") }, "dc1")
	code, task := call(t, "POST", sys.control.URL()+"/api/v1/tasks", map[string]string{
		"region_id": "dc1", "target_mac": "52:54:00:00:00:42", "os_type": "ubuntu", "os_version": "24.04"})
	if w, _ := task["warning"].(string); code != 201 || !strings.Contains(w, "no image for ubuntu 24.04") || !strings.Contains(w, "debian 12") {
		t.Fatalf("create: %d %v", code, task)
	}
	id := task["task_id"].(string)
	m := newFileDisks(t, "52:54:00:00:00:42", contract.Disk{Name: "vda", SizeBytes: 1 << 30, Serial: "V1"})
	agentErr := runAgent(m.agentConfig(sys.regions["dc1"].URL()))
	sys.etcd.WaitValue(t, "/os/install/task/dc1/"+id+"/status", "pending_approval", 30*time.Second)
	p := taskPlan(t, sys.control.URL(), id)
	before := sys.etcd.Dump(t, "/os/")
	code, body := call(t, "POST", sys.control.URL()+"/api/v1/tasks/"+id+"/approve", map[string]string{"plan_digest": p.Digest})
	if msg, _ := body["message"].(string); code != http.StatusConflict || !strings.Contains(msg, "no image for ubuntu 24.04") {
		t.Fatalf("approve without the image: %d %v", code, body)
	}
	storetest.AssertSame(t, before, sys.etcd.Dump(t, "/os/"))
	image := addImage(t, imagesDir, "ubuntu", "24.04")
	sys.etcd.WaitMatch(t, "/os/install/task/dc1/"+id+"/plan", 30*time.Second, func(v string, _ bool) bool {
		return !strings.Contains(v, "refused")
	})
	approve(t, sys.control.URL(), id)
	if err := waitAgent(t, agentErr, 60*time.Second); err != nil {
		t.Fatalf("agent: %v", err)
	}
	assertPrefix(t, m.disks[0].Path, image)
}

// An image that does not match its catalog entry fails the task with the reason, and
// the agent stops there (in the initramfs: no reboot into a broken disk).
func TestCorruptImageFailsTask(t *testing.T) {
	var imagesDir string
	sys := startSystemWith(t, func(c *appliance.Config) {
		imagesDir = c.ImagesDir
		addImage(t, c.ImagesDir, "ubuntu", "22.04")
	}, "dc1")
	// Same size, other bytes: only the sha256 can tell.
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(bytes.Repeat([]byte("LPMOS-IMAGF-"), 300_000))
	zw.Close()
	if err := os.WriteFile(filepath.Join(imagesDir, "ubuntu-22.04.img.gz"), gz.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	id := createTask(t, sys.control.URL(), "52:54:00:00:00:43")
	m := newFileDisks(t, "52:54:00:00:00:43", contract.Disk{Name: "vda", SizeBytes: 1 << 30, Serial: "V1"})
	agentErr := runAgent(m.agentConfig(sys.regions["dc1"].URL()))
	sys.etcd.WaitValue(t, "/os/install/task/dc1/"+id+"/status", "pending_approval", 30*time.Second)
	approve(t, sys.control.URL(), id)
	if err := <-agentErr; err == nil || !strings.Contains(err.Error(), "checksum_mismatch") {
		t.Fatalf("agent: %v", err)
	}
	if v, _ := sys.etcd.Get(t, "/os/install/task/dc1/"+id+"/status"); v != "failed" {
		t.Fatalf("status = %q", v)
	}
	meta := getJSON(t, must(sys.etcd.Get(t, "/os/install/task/dc1/"+id+"/metadata")))
	prog := getJSON(t, must(sys.etcd.Get(t, "/os/install/task/dc1/"+id+"/progress")))
	if e, _ := meta["error"].(string); !strings.HasPrefix(e, "checksum_mismatch: ") || prog["stage"] != "failed" {
		t.Fatalf("metadata error = %q, progress = %v", meta["error"], prog)
	}
}

// A held approval poll answers the moment the task is approved, not at the end of
// its wait.
func TestApprovalLongPoll(t *testing.T) {
	sys := startSystemWith(t, func(c *appliance.Config) { addImage(t, c.ImagesDir, "ubuntu", "22.04") }, "dc1")
	id := createTask(t, sys.control.URL(), "52:54:00:00:00:44")
	_, rep := call(t, "POST", sys.regions["dc1"].URL()+"/api/report", map[string]any{"mac_address": "52:54:00:00:00:44",
		"hardware": map[string]any{"disks": []map[string]any{{"name": "vda", "path": "/dev/vda", "size_bytes": 1 << 30}}}})
	tok, _ := rep["agent_token"].(string)
	// Nothing changes: the poll is held for its whole wait.
	start := time.Now()
	if code, body := callAuth(t, "GET", sys.regions["dc1"].URL()+"/api/approval/52:54:00:00:00:44?wait=1", tok, nil); code != 200 || body["approved"] != false || time.Since(start) < 900*time.Millisecond {
		t.Fatalf("held poll: %d %v after %s", code, body, time.Since(start))
	}
	type result struct {
		code int
		body map[string]any
		took time.Duration
	}
	res := make(chan result, 1)
	go func() {
		start := time.Now()
		code, body := callAuth(t, "GET", sys.regions["dc1"].URL()+"/api/approval/52:54:00:00:00:44?wait=30", tok, nil)
		res <- result{code, body, time.Since(start)}
	}()
	// Approve once the poll is being held: its watch is registered when the
	// appliance has read the status, which the test cannot see, so approve and
	// accept either order; a poll that missed the approval would run its full 30 s.
	approve(t, sys.control.URL(), id)
	select {
	case r := <-res:
		if r.code != 200 || r.body["approved"] != true || r.took > 10*time.Second {
			t.Fatalf("long poll: %d %v after %s", r.code, r.body, r.took)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the held poll did not answer the approval")
	}
}

// The seed's Test 2: no task -> 10 reports honouring retry_after -> unmatched report
// at the exact key -> agent gives up with a clear error. Then auto-matching.
func TestUnmatchedThenAutoMatch(t *testing.T) {
	sys := startSystem(t, "dc1")
	const mac = "fe:b7:02:c0:95:e0"
	unit := 10 * time.Millisecond
	start := time.Now()
	err := agent.Run(context.Background(), agent.Config{
		RegionalURL: sys.regions["dc1"].URL(), MAC: mac, Target: filepath.Join(t.TempDir(), "x"),
		RetryUnit: unit, Log: quietLog(),
	})
	elapsed := time.Since(start)
	if !errors.Is(err, agent.ErrNoTask) || !strings.Contains(err.Error(), "10 attempts") {
		t.Fatalf("agent error = %v", err)
	}
	// retry_after is 2 (the appliance's --retry-after): 9 waits of 2 units at least.
	if min := 9 * 2 * unit; elapsed < min {
		t.Fatalf("agent retried too fast: %s < %s", elapsed, min)
	}
	logs := sys.logs["dc1"].String()
	if n := strings.Count(logs, "[dc1] Received hardware report from agent: "+mac); n != 10 {
		t.Fatalf("%d reports received, want 10", n)
	}
	if !strings.Contains(logs, "[dc1] Failed to find task for MAC "+mac+": no task found") {
		t.Fatalf("log lacks the failure line:\n%s", logs)
	}
	reports := sys.etcd.Dump(t, "/os/unmatched_reports/dc1/")
	if len(reports) != 1 {
		t.Fatalf("want one unmatched report, got %v", reports)
	}
	for key, v := range reports {
		id := strings.TrimPrefix(key, "/os/unmatched_reports/dc1/")
		if len(id) != len("20260130100009-")+len(mac) || !strings.HasSuffix(id, "-"+mac) {
			t.Fatalf("key %s is not {timestamp}-{mac}", key)
		}
		r := getJSON(t, v)
		if r["mac_address"] != mac || r["region"] != "dc1" || r["hardware"] == nil || r["received_at"] == nil ||
			r["error"] != "No task found for this MAC in region dc1" {
			t.Fatalf("report = %v", r)
		}
	}
	code, body := call(t, "GET", sys.control.URL()+"/api/v1/unmatched?region=dc1", nil)
	if code != 200 || body["count"] != 1.0 {
		t.Fatalf("unmatched API: %d %v", code, body)
	}
	// Auto-match: the task goes straight to pending_approval with the report's hardware.
	code, task := call(t, "POST", sys.control.URL()+"/api/v1/tasks", map[string]string{
		"region_id": "dc1", "target_mac": strings.ToUpper(mac), "os_type": "ubuntu", "os_version": "22.04"})
	if code != http.StatusCreated || task["status"] != "pending_approval" || task["hardware"] == nil {
		t.Fatalf("auto-match: %d %v", code, task)
	}
	if left := sys.etcd.Dump(t, "/os/unmatched_reports/"); len(left) != 0 {
		t.Fatalf("report not consumed: %v", left)
	}
	id := task["task_id"].(string)
	if v, _ := sys.etcd.Get(t, "/os/install/task/dc1/"+id+"/status"); v != "pending_approval" {
		t.Fatalf("status key = %q", v)
	}
}

// Two regions on one etcd: each appliance sees and matches only its own region's tasks.
func TestTwoRegions(t *testing.T) {
	sys := startSystem(t, "dc1", "dc2")
	const mac = "00:2b:00:00:00:01"
	code, task := call(t, "POST", sys.control.URL()+"/api/v1/tasks", map[string]string{
		"region_id": "dc2", "target_mac": mac, "os_type": "ubuntu", "os_version": "22.04"})
	if code != 201 {
		t.Fatalf("create: %d %v", code, task)
	}
	id := task["task_id"].(string)
	hw := map[string]any{"mac_address": mac, "hardware": map[string]any{"cpu": map[string]any{"cores": 2}}}
	code, body := call(t, "POST", sys.regions["dc1"].URL()+"/api/report", hw)
	if code != 404 || body["status"] != "error" || body["message"] != "No task found for MAC "+mac+" in region dc1" || body["retry_after"] != 2.0 {
		t.Fatalf("dc1 report: %d %v", code, body)
	}
	if n := len(sys.etcd.Dump(t, "/os/unmatched_reports/dc1/")); n != 1 {
		t.Fatalf("dc1 unmatched reports: %d", n)
	}
	code, body = call(t, "POST", sys.regions["dc2"].URL()+"/api/report", hw)
	if code != 200 || body["status"] != "ok" || body["task_id"] != id {
		t.Fatalf("dc2 report: %d %v", code, body)
	}
	if strings.Contains(sys.logs["dc1"].String(), id) {
		t.Fatal("dc1's appliance saw a dc2 task")
	}
	if !strings.Contains(sys.logs["dc2"].String(), "[dc2] New task assigned: "+id) {
		t.Fatal("dc2's appliance did not log its task")
	}
	code, body = call(t, "GET", sys.regions["dc2"].URL()+"/api/health", nil)
	if code != 200 || body["region_label"] != "dc2" || body["etcd_reachable"] != true {
		t.Fatalf("health: %d %v", code, body)
	}
	code, body = call(t, "GET", sys.control.URL()+"/api/v1/regions", nil)
	regions := body["regions"].([]any)
	if code != 200 || len(regions) != 2 {
		t.Fatalf("regions: %d %v", code, body)
	}
	for _, r := range regions {
		r := r.(map[string]any)
		if r["online"] != true {
			t.Errorf("region %v offline", r["region"])
		}
		if r["region"] == "dc1" && r["unmatched"] != 1.0 {
			t.Errorf("dc1 unmatched = %v", r["unmatched"])
		}
		if r["region"] == "dc2" && r["counts"].(map[string]any)["pending_approval"] != 1.0 {
			t.Errorf("dc2 counts = %v", r["counts"])
		}
	}
}

// addImage puts a gzip image into the region's catalog (as `lpmos-image add` does)
// and returns its decompressed bytes.
func addImage(t *testing.T, dir, osType, osVersion string) []byte {
	t.Helper()
	image := bytes.Repeat([]byte("LPMOS-IMAGE-"), 300_000) // 3.6 MB: several progress updates
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(image)
	zw.Close()
	path := filepath.Join(dir, osType+"-"+osVersion+".img.gz")
	if err := os.WriteFile(path, gz.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	catalogAdd(t, dir, osType, osVersion, path, images.FormatGzip)
	return image
}

func must(v string, ok bool) string {
	if !ok {
		panic(fmt.Sprintf("key missing (value %q)", v))
	}
	return v
}

// catalogAdd registers the image file at path in dir's catalog, as lpmos-image add does.
func catalogAdd(t *testing.T, dir, osType, osVersion, path string, format images.Format) {
	t.Helper()
	cat, err := images.OpenCatalog(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cat.Add(context.Background(), contract.OSRef{OSType: osType, OSVersion: osVersion}, path, format); err != nil {
		t.Fatal(err)
	}
}
