package control_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"lpmos.dev/lpmos/appliance"
	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/control"
	"lpmos.dev/lpmos/images"
	"lpmos.dev/lpmos/store/storetest"
)

const chromiumPath = "/usr/bin/chromium"

// A report as the agent sends it: a removable USB stick, a small NVMe SSD and a large
// HDD, so the disk the approval wipes is a real choice (the NVMe).
const testHardware = `{
  "hostname": "node-17", "firmware": "uefi",
  "cpu": {"model": "Intel Xeon Silver 4310", "sockets": 2, "cores": 24, "threads": 48},
  "memory": {"total_bytes": 137438953472, "usable_bytes": 135000000000},
  "disks": [
    {"name": "sda", "path": "/dev/sda", "size_bytes": 15500000000, "vendor": "SanDisk", "model": "Ultra Fit", "serial": "4C530001", "removable": true, "rotational": false, "controller": "usb"},
    {"name": "nvme0n1", "path": "/dev/nvme0n1", "size_bytes": 480103981056, "model": "SAMSUNG MZ7LH480", "serial": "S45NNE0M123456", "removable": false, "rotational": false, "storage_type": "ssd", "controller": "nvme"},
    {"name": "sdb", "path": "/dev/sdb", "size_bytes": 4000787030016, "model": "HGST HUS726T4TAL", "serial": "V6H12345", "removable": false, "rotational": true, "storage_type": "hdd", "controller": "scsi",
     "partition_table": "gpt", "partitions": [{"name": "sdb1", "size_bytes": 4000000000000, "filesystem": "xfs"}]}
  ],
  "nics": [
    {"name": "eno1", "mac": "52:54:00:12:34:56", "driver": "ixgbe", "link": true, "speed_mbps": 10000, "pci_address": "0000:18:00.0"},
    {"name": "eno2", "mac": "52:54:00:12:34:57", "driver": "ixgbe", "link": false}
  ],
  "system": {"vendor": "Supermicro", "product": "SYS-1029P-WTR", "serial": "S123456X", "bios_version": "3.4"},
  "missing_drivers": [{"address": "0000:5e:00.0", "vendor_id": "15b3", "device_id": "1017", "class": "Ethernet controller", "name": "MT27800 Family [ConnectX-5]"}],
  "agent_version": "0.1.0"
}`

// TestWebUI drives the real pages in headless Chromium against a real control plane
// and two appliances on embedded etcd: create (and refuse) a task, live status and
// progress, approval through the confirmation dialog, an unmatched report matched by
// hand, a region going offline, and the push surviving a control plane restart.
func TestWebUI(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		fmt.Fprintf(os.Stderr, "\n*** SKIPPING TestWebUI: %s not found (apt-get install chromium): the web UI is NOT tested ***\n\n", chromiumPath)
		t.Skipf("SKIP LOUDLY: %s not found (apt-get install chromium): the web UI is not tested", chromiumPath)
	}
	start := time.Now()
	testCtx, cancelTest := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancelTest()

	etcd := storetest.Start(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := control.Config{Host: "127.0.0.1", EtcdEndpoints: etcd.Endpoints, UnmatchedAlert: 0}
	cp, err := control.Start(testCtx, cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cp.Stop() })
	base := cp.URL()
	apps := map[string]*appliance.Appliance{}
	for _, r := range []string{"dc1", "dc2"} {
		imagesDir := t.TempDir()
		if r == "dc1" {
			addImage(t, imagesDir, "ubuntu", "22.04") // dc1 advertises it; debian 12 is nowhere
		}
		a, err := appliance.Start(testCtx, appliance.Config{
			Label: r, APIHost: "127.0.0.1", EtcdEndpoints: etcd.Endpoints,
			HeartbeatTTL: 5 * time.Second, RetryAfter: 2, ImagesDir: imagesDir, LogLevel: "error",
		}, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Stop() })
		apps[r] = a
	}

	b := newBrowser(t, testCtx)
	password, _ := withAdmin(t, etcd.Store, base)
	b.login(base, "admin", password)
	const mac = "52:54:00:12:34:56"

	// --- Add task: a bad MAC is refused by the browser, then (pattern removed) by the
	// server next to the field; a good one leads to the new task's page.
	b.do("open the add-task page", chromedp.Navigate(base+"/tasks/create"), chromedp.WaitVisible(chromedp.ID("create-form")))
	b.shot("create")
	b.do("type a bad MAC", chromedp.SetValue(chromedp.ID("region"), "dc1"), chromedp.SetValue(chromedp.ID("mac"), "52:54:00:zz:34"),
		chromedp.SetValue(chromedp.ID("os_type"), "ubuntu"), chromedp.SetValue(chromedp.ID("os_version"), "22.04"),
		chromedp.Click(chromedp.CSS("#create-form button[type=submit]")))
	if !b.eval(`document.getElementById("mac").validity.patternMismatch && location.pathname === "/tasks/create" && !document.getElementById("mac-error")`) {
		t.Fatal("the browser did not refuse a bad MAC in place")
	}
	b.submit("submit a bad MAC past the browser", http.StatusBadRequest,
		chromedp.Evaluate[chromedp.Void](`document.getElementById("mac").removeAttribute("pattern")`),
		chromedp.Click(chromedp.CSS("#create-form button[type=submit]")))
	if msg := b.text("#mac-error"); !strings.Contains(msg, "is not a MAC address") {
		t.Fatalf("server error next to the MAC field = %q", msg)
	}
	if !b.eval(`document.getElementById("mac").getAttribute("aria-invalid") === "true" && document.getElementById("os_type").value === "ubuntu"`) {
		t.Fatal("the refused form lost its values or does not mark the field invalid")
	}
	b.shot("create-error")
	b.submit("create a task", http.StatusOK, chromedp.SetValue(chromedp.ID("mac"), strings.ToUpper(mac)),
		chromedp.Evaluate[chromedp.Void](`document.getElementById("os_type").value = document.getElementById("os_version").value = ""`),
		chromedp.SetValue(chromedp.ID("image"), "os_type=ubuntu&os_version=22.04"), // from dc1's catalog
		chromedp.Click(chromedp.CSS("#create-form button[type=submit]")))
	id := b.attr("body", "data-task")
	if id == "" || !strings.Contains(b.text(".flash"), "Task created") || b.text("h1 .badge") != "pending" {
		t.Fatalf("after create: task %q, flash %q, badge %q", id, b.text(".flash"), b.text("h1 .badge"))
	}
	if b.eval(`!!document.getElementById("image-warning")`) || !strings.Contains(b.text("#main"), "ubuntu 22.04") {
		t.Fatalf("task for a catalog image: OS %q, warning %q", b.text("#main dl"), b.text("#image-warning"))
	}
	b.shot("task-pending")

	// --- Dashboard: the task is listed; the agent's report turns it pending approval live.
	b.do("open the dashboard", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.ID("task-"+id)))
	b.poll("the push connects", `document.getElementById("live-status").textContent === "live"`)
	b.mark()
	if code := post(t, apps["dc1"].URL()+"/api/report", `{"mac_address": "`+mac+`", "hardware": `+testHardware+`}`); code != 200 {
		t.Fatalf("agent report: HTTP %d", code)
	}
	b.poll("the status changes without reload", `document.querySelector("#task-`+id+` [data-field=status_label]").textContent === "pending approval"`)
	b.checkMark()

	// --- Task page: hardware for a human; approval asks, naming the disk and the image.
	b.do("open the task", chromedp.Navigate(base+"/tasks/"+id), chromedp.WaitVisible(chromedp.ID("approve-button")))
	for _, want := range []string{"Intel Xeon Silver 4310", "128 GiB total", "/dev/nvme0n1", "S45NNE0M123456", "480 GB", "V6H12345", "10 Gb/s", "target MAC", "MT27800 Family [ConnectX-5]", "uefi"} {
		if !strings.Contains(b.text("#main"), want) {
			t.Errorf("task page lacks %q", want)
		}
	}
	if got := b.text("tr.target td"); got != "/dev/nvme0n1" {
		t.Errorf("disk marked for wiping = %q, want /dev/nvme0n1 (smallest non-removable)", got)
	}
	b.shot("task-hardware")
	b.do("ask to approve", chromedp.Click(chromedp.ID("approve-button")), chromedp.WaitVisible(chromedp.ID("approve-dialog")))
	wipe := b.text("#wipe-disk")
	if !strings.Contains(wipe, "Disk to be wiped: /dev/nvme0n1") || !strings.Contains(b.text("#approve-dialog"), "ubuntu 22.04") ||
		!strings.Contains(b.text("#approve-dialog"), etcdPlanDigest(t, etcd, id)) {
		t.Fatalf("confirmation = %q", b.text("#approve-dialog"))
	}
	if st := etcdStatus(t, etcd, id); st != "pending_approval" {
		t.Fatalf("opening the dialog changed the status to %s", st)
	}
	b.shotViewport("task-approve-dialog") // what the operator sees: the modal over the page
	b.submit("confirm the approval", http.StatusOK, chromedp.Click(chromedp.ID("confirm-approve")))
	if b.text("h1 .badge") != "approved" || etcdStatus(t, etcd, id) != "approved" {
		t.Fatalf("after approval: badge %q, etcd %q", b.text("h1 .badge"), etcdStatus(t, etcd, id))
	}
	if b.eval(`!!document.getElementById("approve-button")`) {
		t.Fatal("an approved task still offers approval")
	}

	// --- The open task page follows the install: status, progress, and a note that
	// the page's actions are out of date.
	b.poll("the push connects", `document.getElementById("live-status").textContent === "live"`)
	b.mark()
	const total = 2_000_000_000
	progress(t, apps["dc1"].URL(), mac, id, 42, 840_000_000, total)
	b.poll("progress 42 arrives on the task page", `document.getElementById("progress-`+id+`").value === 42 &&
		document.querySelector("h1 .badge").textContent === "installing" && !document.getElementById("status-changed").hidden`)
	b.checkMark()
	b.shot("task-installing")

	// --- Live progress on the dashboard, from the real regional API, without reload.
	b.do("open the dashboard", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.ID("task-"+id)))
	b.poll("the push connects", `document.getElementById("live-status").textContent === "live"`)
	b.mark()
	if got := b.eval(`document.getElementById("progress-` + id + `").value === 42`); !got {
		t.Fatal("the dashboard does not render the stored progress")
	}
	progress(t, apps["dc1"].URL(), mac, id, 73, 1_460_000_000, total)
	b.poll("progress 73 arrives with rate and ETA", `document.getElementById("progress-`+id+`").value === 73 &&
		document.querySelector("#task-`+id+` [data-field=rate]").textContent.endsWith("/s") &&
		document.querySelector("#task-`+id+` [data-field=eta]").textContent !== "—"`)
	if got := b.text("#task-" + id + " [data-field=status_label]"); got != "installing" {
		t.Errorf("status on the dashboard = %q, want installing", got)
	}
	b.checkMark()
	b.shot("dashboard-progress")

	// --- An unmatched report shows up in the widget (and the alert), then is matched.
	const stray = "fe:b7:02:c0:95:e0"
	if code := post(t, apps["dc1"].URL()+"/api/report", `{"mac_address": "`+stray+`", "hardware": `+testHardware+`}`); code != 404 {
		t.Fatalf("stray report: HTTP %d, want 404", code)
	}
	b.poll("the unmatched report appears", `document.getElementById("unmatched-items").textContent.includes("`+stray+`") &&
		!document.getElementById("unmatched-alert").hidden`)
	b.checkMark()
	b.shot("dashboard-unmatched")
	b.do("follow the report", chromedp.Click(chromedp.CSS(`#unmatched-items a[href^="/unmatched#"]`)), chromedp.WaitVisible(chromedp.CSS("form.match-create")))
	b.shot("unmatched")
	b.submit("create a task from the report", http.StatusOK,
		chromedp.SetValue(chromedp.CSS("form.match-create input[name=os_type]"), "debian"),
		chromedp.SetValue(chromedp.CSS("form.match-create input[name=os_version]"), "12"),
		chromedp.Click(chromedp.CSS("form.match-create button[type=submit]")))
	matched := b.attr("body", "data-task")
	if matched == "" || matched == id || b.text("h1 .badge") != "pending approval" || !strings.Contains(b.text("#main"), "SAMSUNG MZ7LH480") {
		t.Fatalf("matched task %q: badge %q", matched, b.text("h1 .badge"))
	}
	if w := b.text("#image-warning"); !strings.Contains(w, "has no image for debian 12") {
		t.Errorf("no warning for an image dc1 lacks: %q", w)
	}
	if left := etcd.Dump(t, "/os/unmatched_reports/"); len(left) != 0 {
		t.Fatalf("report not consumed by the match: %v", left)
	}

	// --- Region page.
	b.do("open the region", chromedp.Navigate(base+"/regions/dc1"), chromedp.WaitVisible(chromedp.ID("health-history")))
	if !strings.Contains(b.text("#region-health"), "online") || !strings.Contains(b.text("#health-history"), "first seen online") {
		t.Errorf("region page: health %q, history %q", b.text("#region-health"), b.text("#health-history"))
	}
	b.shot("region")

	// --- A region goes offline: the open dashboard shows it.
	b.do("open the dashboard", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.ID("region-dc2")))
	b.poll("the push connects", `document.getElementById("live-status").textContent === "live"`)
	b.mark()
	if got := b.text("#region-dc2 [data-field=health]"); got != "online" {
		t.Fatalf("dc2 health before stopping = %q", got)
	}
	if err := apps["dc2"].Stop(); err != nil {
		t.Fatalf("stop dc2: %v", err)
	}
	b.poll("dc2 shows offline", `document.querySelector("#region-dc2 [data-field=health]").textContent === "offline" &&
		document.querySelector("#region-dc1 [data-field=health]").textContent === "online"`)
	b.checkMark()
	b.shot("dashboard-offline")
	b.do("open the offline region", chromedp.Navigate(base+"/regions/dc2"), chromedp.WaitVisible(chromedp.ID("health-history")))
	if h := b.text("#health-history"); !strings.Contains(h, "went offline") || !strings.Contains(h, "first seen online") {
		t.Errorf("dc2 health history = %q", h)
	}
	b.shot("region-offline")
	b.do("back to the dashboard", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.ID("region-dc2")))
	b.poll("the push connects", `document.getElementById("live-status").textContent === "live"`)
	b.mark()

	// --- The control plane restarts: the page reconnects by itself and keeps updating.
	port := mustPort(t, base)
	if err := cp.Stop(); err != nil {
		t.Fatalf("stop control plane: %v", err)
	}
	b.poll("the page notices", `document.getElementById("live-status").textContent === "reconnecting…"`)
	cfg.Port = port
	cp2, err := control.Start(testCtx, cfg, quiet)
	if err != nil {
		t.Fatalf("restart control plane on port %d: %v", port, err)
	}
	t.Cleanup(func() { cp2.Stop() })
	b.poll("the page reconnects", `document.getElementById("live-status").textContent === "live"`)
	progress(t, apps["dc1"].URL(), mac, id, 91, 1_820_000_000, total)
	b.poll("progress after the restart arrives", `document.getElementById("progress-`+id+`").value === 91`)
	b.checkMark()
	t.Logf("web UI test took %s", time.Since(start).Round(time.Millisecond))
}

// browser is one headless Chromium tab with per-step deadlines.
type browser struct {
	t   *testing.T
	ctx context.Context
	dir string
}

func newBrowser(t *testing.T, parent context.Context) *browser {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.WindowSize(1366, 900), // a laptop screen
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(parent, opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(cancel)
	// The first Do starts the browser and ties it to ctx (not to a step's deadline).
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	dir := os.Getenv("LPMOS_UI_SCREENSHOTS")
	if dir == "" {
		dir = filepath.Join("..", "build", "ui-screenshots")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(dir)
	t.Logf("screenshots in %s", abs)
	return &browser{t: t, ctx: ctx, dir: dir}
}

const stepTimeout = 15 * time.Second

func (b *browser) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
}

// submit runs steps that submit a form and waits for the resulting page.
func (b *browser) submit(what string, wantCode int64, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	resp, err := chromedp.RunResponse(ctx, steps...)
	if err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
	if resp.Status != wantCode {
		b.t.Fatalf("%s: HTTP %d %s, want %d", what, resp.Status, resp.URL, wantCode)
	}
}

func (b *browser) poll(what, expr string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingInterval(50*time.Millisecond),
		chromedp.WithPollingTimeout(stepTimeout))); err != nil {
		b.t.Fatalf("%s: %v (waited for %s)", what, err, expr)
	}
}

func (b *browser) eval(expr string) bool {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

func (b *browser) text(css string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[string](`(document.querySelector(`+strconv.Quote(css)+`) || {}).innerText || ""`))
	if err != nil {
		b.t.Fatalf("text of %s: %v", css, err)
	}
	return strings.TrimSpace(v)
}

func (b *browser) attr(css, name string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.AttributeValue(chromedp.CSS(css), name))
	if err != nil {
		b.t.Fatalf("attribute %s of %s: %v", name, css, err)
	}
	return v.Value
}

// mark and checkMark prove that an update arrived without a reload: a reload would
// drop the marker.
func (b *browser) mark() {
	b.t.Helper()
	b.eval(`(window.__noReload = true)`)
}

func (b *browser) checkMark() {
	b.t.Helper()
	if !b.eval(`window.__noReload === true`) {
		b.t.Fatal("the page reloaded")
	}
}

func (b *browser) shot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(b.dir, name+".png"), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

// addImage puts a tiny raw image into a region's catalog.
func addImage(t *testing.T, dir, osType, osVersion string) {
	t.Helper()
	path := filepath.Join(dir, osType+"-"+osVersion+".img")
	if err := os.WriteFile(path, bytes.Repeat([]byte("LPMOS"), 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	cat, err := images.OpenCatalog(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cat.Add(context.Background(), contract.OSRef{OSType: osType, OSVersion: osVersion}, path, images.FormatRaw); err != nil {
		t.Fatal(err)
	}
}

func (b *browser) shotViewport(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(b.dir, name+".png"), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

// agentTokens keeps the agent token each task's first report was given (task id ->
// token): progress posts carry it, as the agent does.
var agentTokens = map[string]string{}

func post(t *testing.T, u, body string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	authorize(req)
	var reply struct {
		TaskID     string `json:"task_id"`
		AgentToken string `json:"agent_token"`
	}
	if err := json.Unmarshal([]byte(body), &reply); err == nil && agentTokens[reply.TaskID] != "" {
		req.Header.Set("Authorization", "Bearer "+agentTokens[reply.TaskID])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", u, err)
	}
	defer resp.Body.Close()
	if json.NewDecoder(resp.Body).Decode(&reply) == nil && reply.AgentToken != "" {
		agentTokens[reply.TaskID] = reply.AgentToken
	}
	return resp.StatusCode
}

// progress reports as the agent does, through the regional API.
func progress(t *testing.T, regional, mac, id string, pct float64, done, total int64) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"mac_address": mac, "task_id": id, "stage": "writing",
		"percentage": pct, "message": "writing image", "bytes_done": done, "bytes_total": total})
	if code := post(t, regional+"/api/progress", string(body)); code != 200 {
		t.Fatalf("progress %v%%: HTTP %d", pct, code)
	}
}

func etcdStatus(t *testing.T, e *storetest.Etcd, id string) string {
	t.Helper()
	for k, v := range e.Dump(t, "/os/install/task/") {
		if strings.HasSuffix(k, "/"+id+"/status") {
			return v
		}
	}
	return ""
}

func mustPort(t *testing.T, base string) int {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	p, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// etcdPlanDigest is the plan digest stored for task id: what the dialog must show.
func etcdPlanDigest(t *testing.T, e *storetest.Etcd, id string) string {
	t.Helper()
	for k, v := range e.Dump(t, "/os/install/task/") {
		if strings.HasSuffix(k, "/"+id+"/plan") {
			var p contract.Plan
			if err := json.Unmarshal([]byte(v), &p); err != nil || p.Digest == "" {
				t.Fatalf("plan of %s: %q %v", id, v, err)
			}
			return p.Digest
		}
	}
	t.Fatalf("task %s has no plan", id)
	return ""
}
