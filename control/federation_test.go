package control_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/control"
	"lpmos.dev/lpmos/federation/fedtest"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/etcdserver"
	"lpmos.dev/lpmos/store/storetest"
)

// apiDo sends a JSON request to the control plane and decodes the JSON answer.
func apiDo(t *testing.T, method, u, body string) (int, map[string]any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, method, u, strings.NewReader(body))
	if method != "GET" {
		req.Header.Set("Content-Type", "application/json")
	}
	authorize(req)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s %s: %d %q is not JSON", method, u, resp.StatusCode, b)
	}
	return resp.StatusCode, m
}

// poll checks cond until it holds or fails the test after d; it returns how long it took.
func poll(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(25 * time.Millisecond)
	}
	return time.Since(start)
}

type fedRegion struct {
	name string
	st   *store.Store    // the region's cluster, as its appliance reaches it
	etcd *storetest.Etcd // the same, for direct assertions
}

func regionOf(t *testing.T, base, name string) map[string]any {
	t.Helper()
	code, m := apiDo(t, "GET", base+"/api/v1/regions", "")
	if code != 200 {
		t.Fatalf("GET /api/v1/regions: %d %v", code, m)
	}
	for _, r := range m["regions"].([]any) {
		if r := r.(map[string]any); r["region"] == name {
			return r
		}
	}
	return nil
}

// startMixed starts the mixed layout of the federation tests: dc1 (and the control
// plane's users) on home, dc2 on its own etcd reached through a link the test cuts,
// and a control plane on both.
func startMixed(t *testing.T, ctx context.Context) (home, dc2 *storetest.Etcd, link *fedtest.Link, cp *control.Server) {
	t.Helper()
	home, dc2 = storetest.Start(t), storetest.Start(t)
	link = fedtest.NewLink(t, strings.TrimPrefix(dc2.Endpoints[0], "http://"))
	cp, err := control.Start(ctx, control.Config{Host: "127.0.0.1", EtcdEndpoints: home.Endpoints, UnmatchedAlert: 5,
		RegionClusters: []store.RegionCluster{{Region: "dc2", Endpoints: []string{link.Endpoint()}}}},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cp.Stop() })
	return home, dc2, link, cp
}

// Mixed layouts through one control plane: dc1 on the control plane's etcd, dc2 on its
// own behind a link the test cuts. The seed's flows pass in both; dc2's tasks live in
// dc2's cluster only; with the link cut, dc2 shows unreachable with its last known
// tasks marked stale (never a 500), its writes are refused with the 503 of
// docs/federation.md within 2 s while dc1 keeps working; restored, every change made
// in dc2 during the cut shows within 10 s.
func TestMixedLayouts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	home, dc2, link, cp := startMixed(t, ctx)
	base := cp.URL()
	_, token := withAdmin(t, home.Store, base)
	live := followLive(t, ctx, base, token)
	ubuntu := contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}
	regions := []fedRegion{{"dc1", home.Store, home}, {"dc2", dc2.Store, dc2}}
	for _, r := range regions {
		hb, err := r.st.StartHeartbeat(ctx, func() store.Heartbeat {
			return store.Heartbeat{Region: r.name, Images: []contract.ImageRef{{OSRef: ubuntu, SHA256: strings.Repeat("a", 64), Size: 1 << 30}}}
		}, 10*time.Second, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { hb.Stop(context.Background()) })
	}
	poll(t, 10*time.Second, "both regions listed, reachable", func() bool {
		r1, r2 := regionOf(t, base, "dc1"), regionOf(t, base, "dc2")
		return r1 != nil && r2 != nil && r1["cluster"] == "shared" && r2["cluster"] == "own" &&
			r1["reachable"] == true && r2["reachable"] == true && r2["online"] == true
	})

	create := func(region, mac string) (int, map[string]any) {
		return apiDo(t, "POST", base+"/api/v1/tasks", fmt.Sprintf(`{"region_id":%q,"target_mac":%q,"os_type":"ubuntu","os_version":"22.04"}`, region, mac))
	}
	task := func(id string) map[string]any {
		t.Helper()
		code, m := apiDo(t, "GET", base+"/api/v1/tasks/"+id, "")
		if code != 200 {
			t.Fatalf("GET task %s: %d %v", id, code, m)
		}
		return m
	}
	digest := func(m map[string]any) string {
		p, _ := m["plan"].(map[string]any)
		d, _ := p["digest"].(string)
		return d
	}
	// seedFlow: create through the API, report and progress as the region's appliance
	// does (its own store), approve through the API.
	seedFlow := func(r fedRegion, mac string, finish bool) string {
		t.Helper()
		code, m := create(r.name, mac)
		if code != http.StatusCreated || m["warning"] != nil {
			t.Fatalf("%s: create: %d %v", r.name, code, m)
		}
		id := m["task_id"].(string)
		if _, ok := r.etcd.Get(t, "/os/index/task/"+id); !ok {
			t.Fatalf("%s: task %s is not in its region's cluster", r.name, id)
		}
		if res, err := r.st.Report(ctx, r.name, mac, []byte(testHardware)); err != nil || !res.Matched {
			t.Fatalf("%s: report: %+v %v", r.name, res, err)
		}
		m = task(id)
		if m["status"] != "pending_approval" || digest(m) == "" {
			t.Fatalf("%s: after the report: %v", r.name, m)
		}
		if code, m := apiDo(t, "POST", base+"/api/v1/tasks/"+id+"/approve", fmt.Sprintf(`{"plan_digest":%q}`, digest(m))); code != 200 {
			t.Fatalf("%s: approve: %d %v", r.name, code, m)
		}
		if !finish {
			return id
		}
		for _, p := range []contract.Progress{{Stage: contract.StageWriting, Percentage: 40}, {Stage: contract.StageCompleted, Percentage: 100}} {
			if _, err := r.st.RecordProgress(ctx, store.ProgressUpdate{Region: r.name, MAC: mac, TaskID: id, Progress: p}); err != nil {
				t.Fatalf("%s: progress %v: %v", r.name, p.Stage, err)
			}
		}
		poll(t, 5*time.Second, r.name+": completed through the API", func() bool { return task(id)["status"] == "completed" })
		return id
	}
	done1 := seedFlow(regions[0], "02:00:00:00:01:01", true)
	done2 := seedFlow(regions[1], "02:00:00:00:02:01", true)
	// dc2's progress reached the open pages through its mirror (home's watch never
	// sees dc2).
	live.wait(t, "dc2's completion pushed", func(m fedLive) bool {
		return m.Type == "task" && m.Task.ID == done2 && m.Task.Status == "completed" && !m.Task.Stale
	})
	if _, ok := home.Get(t, "/os/index/task/"+done2); ok {
		t.Fatal("dc2's task is in the control plane's etcd too")
	}
	if len(home.Dump(t, "/os/install/task/dc2/")) != 0 {
		t.Fatal("dc2's task keys are in the control plane's etcd")
	}
	code, list := apiDo(t, "GET", base+"/api/v1/tasks", "")
	if code != 200 || list["count"] != 2.0 || list["stale_regions"] != nil {
		t.Fatalf("merged list: %d %v", code, list)
	}
	// A dc2 task waiting for approval, for the refusals during the cut.
	code, m := create("dc2", "02:00:00:00:02:02")
	if code != http.StatusCreated {
		t.Fatalf("create: %d %v", code, m)
	}
	waiting := m["task_id"].(string)
	// Hostile and mistaken input across clusters: clear 4xx, nothing written.
	homeBefore, dc2Before := home.Dump(t, "/os/install/"), dc2.Dump(t, "/os/")
	_, dc2Page := apiDo(t, "GET", base+"/api/v1/tasks?region=dc2&limit=1", "")
	_, allPage := apiDo(t, "GET", base+"/api/v1/tasks?limit=1", "")
	for _, c := range []struct {
		method, path, body string
		code               int
		says               string
	}{
		{"GET", "/api/v1/tasks/01a2310c-aefa-7202-bd91-e9aba22ff207", "", 404, "not found"},
		{"GET", "/api/v1/tasks/..%2F..%2Fos", "", 404, "not found"},
		{"POST", "/api/v1/tasks/01a2310c-aefa-7202-bd91-e9aba22ff207/approve", `{"plan_digest":"x"}`, 404, "not found"},
		{"GET", "/api/v1/tasks?after=garbage", "", 400, "not a cursor"},
		{"GET", "/api/v1/tasks?after=" + dc2Page["next"].(string), "", 400, "another list"},
		{"GET", "/api/v1/tasks?region=dc2&after=" + allPage["next"].(string), "", 400, "another list"},
		{"GET", "/api/v1/tasks?region=DC2", "", 400, "region"},
		{"POST", "/api/v1/tasks", `{"region_id":"dc2","target_mac":"nope","os_type":"ubuntu","os_version":"22.04"}`, 400, "MAC"},
		{"POST", "/api/v1/tasks", `{"region_id":"dc2","target_mac":"02:00:00:00:02:02","os_type":"ubuntu","os_version":"22.04"}`, 409, "open task"},
	} {
		code, m := apiDo(t, c.method, base+c.path, c.body)
		if msg, _ := m["message"].(string); code != c.code || !strings.Contains(strings.ToLower(msg), strings.ToLower(c.says)) {
			t.Fatalf("%s %s: %d %v, want %d saying %q", c.method, c.path, code, m, c.code, c.says)
		}
	}
	storetest.AssertSame(t, homeBefore, home.Dump(t, "/os/install/"))
	storetest.AssertSame(t, dc2Before, dc2.Dump(t, "/os/"))

	// The mirror is what the cut shows: wait until it holds dc2's present.
	rev, err := dc2.Store.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	poll(t, 5*time.Second, "dc2's mirror at dc2's revision", func() bool {
		r, ok := cp.Fleet().MirrorRevision("dc2")
		return ok && r >= rev
	})

	// ---- the cut
	link.Cut()
	cutAt := time.Now()
	var r2 map[string]any
	took := poll(t, 2*time.Second, "dc2 unreachable", func() bool {
		r2 = regionOf(t, base, "dc2")
		return r2["reachable"] == false
	})
	t.Logf("dc2 shown unreachable %s after the cut", took.Round(time.Millisecond))
	if r2["unreachable_since"] == nil || r2["stale"] != true || r2["cluster"] != "own" {
		t.Fatalf("dc2 while cut: %v", r2)
	}
	live.wait(t, "dc2 pushed unreachable, its tasks stale", func(m fedLive) bool {
		return m.Type == "task" && m.Task.ID == done2 && m.Task.Stale
	})
	live.wait(t, "dc2 pushed unreachable", func(m fedLive) bool {
		for _, r := range m.Regions {
			if r.Name == "dc2" && !r.Reachable && r.Health == "unreachable" && strings.HasPrefix(r.HealthText, "unreachable since ") && r.Stale {
				return true
			}
		}
		return false
	})
	if r1 := regionOf(t, base, "dc1"); r1["reachable"] != true || r1["stale"] != nil {
		t.Fatalf("dc1 while dc2 is cut: %v", r1)
	}
	for _, path := range []string{"/api/v1/tasks", "/api/v1/tasks?region=dc2"} {
		code, l := apiDo(t, "GET", base+path, "")
		if code != 200 || fmt.Sprint(l["stale_regions"]) != "[dc2]" {
			t.Fatalf("GET %s while cut: %d %v", path, code, l)
		}
		for _, tk := range l["tasks"].([]any) {
			tk := tk.(map[string]any)
			if (tk["region_id"] == "dc2") != (tk["stale"] == true) {
				t.Fatalf("GET %s: task %v: stale only for dc2's", path, tk)
			}
		}
	}
	if m := task(done2); m["stale"] != true || m["status"] != "completed" {
		t.Fatalf("dc2's task while cut: %v", m)
	}
	if m := task(done1); m["stale"] != nil {
		t.Fatalf("dc1's task while dc2 is cut: %v", m)
	}
	// What each page must show while dc2 is cut (a visible row mark is the stale span
	// without hidden).
	staleRow := `as last seen">stale</span>`
	for path, marks := range map[string][]string{
		"/":                 {"unreachable since ", `data-field="region-stale">stale<`, staleRow},
		"/regions/dc2":      {"unreachable since ", `id="region-unreachable"`, staleRow},
		"/tasks":            {`id="stale-regions"`, staleRow},
		"/tasks?region=dc2": {`id="stale-regions"`, staleRow},
		"/tasks/" + done2:   {`id="task-stale"`, "unreachable since "},
		"/tasks/" + waiting: {`id="task-stale"`},
		"/unmatched":        nil,
		"/audit":            {`id="audit-unreachable"`},
		"/tasks/create":     nil,
	} {
		code, body := get(t, base+path)
		if code != 200 {
			t.Fatalf("GET %s while cut: %d\n%.400s", path, code, body)
		}
		for _, m := range marks {
			if !strings.Contains(body, m) {
				t.Fatalf("GET %s while cut does not show %q", path, m)
			}
		}
	}
	before := dc2.Dump(t, "/os/")
	for _, w := range []struct{ method, path, body string }{
		{"POST", "/api/v1/tasks", `{"region_id":"dc2","target_mac":"02:00:00:00:02:03","os_type":"ubuntu","os_version":"22.04"}`},
		{"POST", "/api/v1/tasks/" + waiting + "/approve", `{"plan_digest":"x"}`},
		{"POST", "/api/v1/tasks/" + waiting + "/cancel", `{"reason":"no"}`},
		{"POST", "/api/v1/tasks/" + waiting + "/reset-agent-token", ``},
		{"PUT", "/api/v1/regions/dc2/cloud-init", `{"ssh_authorized_keys":[]}`},
		{"POST", "/api/v1/unmatched/dc2/20261201100000-02:00:00:00:02:09/match", `{"os_type":"ubuntu","os_version":"22.04"}`},
	} {
		start := time.Now()
		code, m := apiDo(t, w.method, base+w.path, w.body)
		msg, _ := m["message"].(string)
		if code != http.StatusServiceUnavailable || !strings.HasPrefix(msg, "region dc2 is unreachable since ") ||
			!strings.Contains(msg, "lpmos-appliance tasks approve") || m["retry_after"] != 5.0 || time.Since(start) > 2*time.Second {
			t.Fatalf("%s %s while cut: %d %v after %s", w.method, w.path, code, m, time.Since(start))
		}
	}
	storetest.AssertSame(t, before, dc2.Dump(t, "/os/"))
	// The web form says the same.
	code, body, _ := form(t, base+"/tasks/create", map[string][]string{"region": {"dc2"}, "mac": {"02:00:00:00:02:04"}, "os_type": {"ubuntu"}, "os_version": {"22.04"}}, nil)
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "region dc2 is unreachable since") {
		t.Fatalf("web create in dc2 while cut: %d\n%.400s", code, body)
	}
	code, body, _ = form(t, base+"/tasks/"+waiting+"/cancel", map[string][]string{"action": {"cancel"}}, nil)
	if code != http.StatusServiceUnavailable || !strings.Contains(body, `id="action-error"`) || !strings.Contains(body, "region dc2 is unreachable since") {
		t.Fatalf("web cancel in dc2 while cut: %d\n%.400s", code, body)
	}
	storetest.AssertSame(t, before, dc2.Dump(t, "/os/"))
	// dc1 is unaffected.
	live1 := seedFlow(regions[0], "02:00:00:00:01:02", false)

	// Meanwhile in dc2, cut off from the control plane: the waiting machine reports, a
	// task is created on the appliance host, an unknown machine boots.
	if res, err := dc2.Store.Report(ctx, "dc2", "02:00:00:00:02:02", []byte(testHardware)); err != nil || !res.Matched {
		t.Fatalf("report during the cut: %+v %v", res, err)
	}
	local, err := dc2.Store.CreateTask(ctx, store.NewTask{RegionID: "dc2", TargetMAC: "02:00:00:00:02:05", OSRef: ubuntu})
	if err != nil {
		t.Fatal(err)
	}
	unknown, err := dc2.Store.Report(ctx, "dc2", "02:00:00:00:02:06", []byte(testHardware))
	if err != nil || unknown.Unmatched == nil {
		t.Fatalf("unknown machine: %+v %v", unknown, err)
	}
	if m := task(waiting); m["status"] != "pending" || m["stale"] != true {
		t.Fatalf("the control plane saw a change during the cut: %v", m)
	}
	t.Logf("cut for %s", time.Since(cutAt).Round(time.Millisecond))

	// ---- the link is back
	link.Restore(t)
	took = poll(t, 10*time.Second, "dc2 reachable, every change of the cut shown", func() bool {
		if r := regionOf(t, base, "dc2"); r["reachable"] != true || r["stale"] != nil || r["unreachable_since"] != nil {
			return false
		}
		_, l := apiDo(t, "GET", base+"/api/v1/tasks?region=dc2", "")
		_, u := apiDo(t, "GET", base+"/api/v1/unmatched?region=dc2", "")
		m := task(waiting)
		return l["count"] == 3.0 && l["stale_regions"] == nil && u["count"] == 1.0 && m["status"] == "pending_approval" && m["stale"] == nil
	})
	t.Logf("dc2 caught up %s after the link came back", took.Round(time.Millisecond))
	live.wait(t, "the report made during the cut pushed", func(m fedLive) bool {
		return m.Type == "task" && m.Task.ID == waiting && m.Task.Status == "pending_approval" && !m.Task.Stale
	})
	if m := task(local.TaskID); m["region_id"] != "dc2" || m["stale"] != nil {
		t.Fatalf("the task created during the cut: %v", m)
	}
	for _, path := range []string{"/", "/regions/dc2", "/tasks?region=dc2", "/tasks/" + done2} {
		code, body := get(t, base+path)
		for _, m := range []string{"unreachable since", `id="stale-regions"`, staleRow, `data-field="region-stale">stale<`, `id="task-stale"`} {
			if code != 200 || strings.Contains(body, m) {
				t.Fatalf("GET %s after the link came back: %d, still shows %q", path, code, m)
			}
		}
	}
	// The region's history keeps the outage.
	if _, body := get(t, base+"/regions/dc2"); !strings.Contains(body, `<span class="health health-unreachable">went unreachable</span>`) ||
		!strings.Contains(body, "went online") {
		t.Fatalf("dc2's health history does not show the outage:\n%s", body[strings.Index(body, "health-history"):])
	}
	// dc2 takes writes again: approve the machine that reported during the cut.
	if code, m := apiDo(t, "POST", base+"/api/v1/tasks/"+waiting+"/approve", fmt.Sprintf(`{"plan_digest":%q}`, digest(task(waiting)))); code != 200 {
		t.Fatalf("approve after the cut: %d %v", code, m)
	}
	if v, _ := dc2.Get(t, "/os/install/task/dc2/"+waiting+"/status"); v != "approved" {
		t.Fatalf("dc2's etcd says %q", v)
	}
	if task(live1)["status"] != "approved" {
		t.Fatal("dc1's approval during the cut is lost")
	}
	// The audit trail of every region: dc1's from home, dc2's from its cluster.
	code, a := apiDo(t, "GET", base+"/api/v1/audit?action=task.create&limit=500", "")
	created := map[string]bool{}
	for _, e := range a["entries"].([]any) {
		created[e.(map[string]any)["task_id"].(string)] = true
	}
	if code != 200 || !created[done1] || !created[done2] || !created[waiting] || !created[local.TaskID] || a["unreachable_regions"] != nil {
		t.Fatalf("audit of every region: %d %v", code, a)
	}
	poll(t, 5*time.Second, "metrics", func() bool {
		_, body := get(t, base+"/metrics")
		return strings.Contains(body, `lpmos_control_region_reachable{region="dc2"} 1`) &&
			strings.Contains(body, `lpmos_control_region_reachable{region="dc1"} 1`) &&
			strings.Contains(body, `lpmos_control_mirror_bytes{region="dc2"}`) &&
			strings.Contains(body, `lpmos_control_region_catchup_seconds_count{region="dc2"} 1`)
	})
}

// freeAddr is a loopback port nobody listens on at the moment.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// A region's etcd stopped and started again (same data, same address): the control
// plane shows it unreachable within 2 s, serves its tasks stale and refuses its
// writes meanwhile, and finds it again by itself.
func TestRegionEtcdRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	home := storetest.Start(t)
	dir, client, peer := t.TempDir(), "http://"+freeAddr(t), "http://"+freeAddr(t)
	startDC2 := func() *etcdserver.Server {
		t.Helper()
		srv, err := etcdserver.Start(ctx, etcdserver.Config{DataDir: dir, ListenClientURLs: client, ListenPeerURLs: peer, Quiet: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(srv.Close)
		return srv
	}
	srv := startDC2()
	cp, err := control.Start(ctx, control.Config{Host: "127.0.0.1", EtcdEndpoints: home.Endpoints,
		RegionClusters: []store.RegionCluster{{Region: "dc2", Endpoints: []string{client}}}},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cp.Stop() })
	base := cp.URL()
	withAdmin(t, home.Store, base)
	newDC2 := `{"region_id":"dc2","target_mac":"02:00:00:00:02:%02d","os_type":"ubuntu","os_version":"22.04"}`
	code, m := apiDo(t, "POST", base+"/api/v1/tasks", fmt.Sprintf(newDC2, 1))
	if code != http.StatusCreated {
		t.Fatalf("create in dc2: %d %v", code, m)
	}
	id := m["task_id"].(string)
	direct, err := store.Open(ctx, store.DialConfig{Endpoints: []string{client}})
	if err != nil {
		t.Fatal(err)
	}
	rev, err := direct.Revision(ctx)
	direct.Close()
	if err != nil {
		t.Fatal(err)
	}
	poll(t, 5*time.Second, "dc2's mirror has the task", func() bool {
		r, ok := cp.Fleet().MirrorRevision("dc2")
		return ok && r >= rev
	})

	srv.Close()
	took := poll(t, 2*time.Second, "dc2 unreachable", func() bool { return regionOf(t, base, "dc2")["reachable"] == false })
	t.Logf("dc2 shown unreachable %s after its etcd stopped", took.Round(time.Millisecond))
	code, l := apiDo(t, "GET", base+"/api/v1/tasks", "")
	if code != 200 || l["count"] != 1.0 || fmt.Sprint(l["stale_regions"]) != "[dc2]" {
		t.Fatalf("tasks with dc2's etcd stopped: %d %v", code, l)
	}
	for _, path := range []string{"/", "/tasks", "/regions/dc2", "/tasks/" + id} {
		if code, body := get(t, base+path); code != 200 {
			t.Fatalf("GET %s with dc2's etcd stopped: %d\n%.300s", path, code, body)
		}
	}
	start := time.Now()
	code, m = apiDo(t, "POST", base+"/api/v1/tasks", fmt.Sprintf(newDC2, 2))
	if code != http.StatusServiceUnavailable || !strings.HasPrefix(m["message"].(string), "region dc2 is unreachable since ") || time.Since(start) > 2*time.Second {
		t.Fatalf("create in dc2 with its etcd stopped: %d %v", code, m)
	}

	startDC2()
	took = poll(t, 10*time.Second, "dc2 reachable again", func() bool { return regionOf(t, base, "dc2")["reachable"] == true })
	t.Logf("dc2 reachable %s after its etcd started again", took.Round(time.Millisecond))
	if code, m := apiDo(t, "POST", base+"/api/v1/tasks", fmt.Sprintf(newDC2, 3)); code != http.StatusCreated {
		t.Fatalf("create in dc2 after the restart: %d %v", code, m)
	}
}

// fedLive is a live push message, the fields the federation tests read.
type fedLive struct {
	Type    string       `json:"type"`
	Task    *fedLiveTask `json:"task"`
	Regions []struct {
		Name       string `json:"name"`
		Health     string `json:"health"`
		HealthText string `json:"health_text"`
		Reachable  bool   `json:"reachable"`
		Stale      bool   `json:"stale"`
	} `json:"regions"`
	Tasks []fedLiveTask `json:"tasks"` // a "tasks" batch
}

type fedLiveTask struct {
	ID     string `json:"id"`
	Status string `json:"status"`
	Stale  bool   `json:"stale"`
}

// liveFeed is every message a /live connection received.
type liveFeed struct {
	mu   sync.Mutex
	msgs []fedLive
}

func followLive(t *testing.T, ctx context.Context, base, token string) *liveFeed {
	t.Helper()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(base, "http")+"/live",
		&websocket.DialOptions{HTTPHeader: http.Header{"Origin": {base}, "Authorization": {"Bearer " + token}}})
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadLimit(64 << 20)
	t.Cleanup(func() { c.CloseNow() })
	f := &liveFeed{}
	go func() {
		for {
			_, b, err := c.Read(ctx)
			if err != nil {
				return
			}
			var m fedLive
			if json.Unmarshal(b, &m) == nil {
				f.mu.Lock()
				if m.Type == "tasks" { // a batch: one "task" each
					for i := range m.Tasks {
						f.msgs = append(f.msgs, fedLive{Type: "task", Task: &m.Tasks[i]})
					}
				} else {
					f.msgs = append(f.msgs, m)
				}
				f.mu.Unlock()
			}
		}
	}()
	return f
}

// wait polls until a message received satisfies ok (10 s at most).
func (f *liveFeed) wait(t *testing.T, what string, ok func(fedLive) bool) {
	t.Helper()
	poll(t, 10*time.Second, what, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, m := range f.msgs {
			if (m.Type != "task" || m.Task != nil) && ok(m) {
				return true
			}
		}
		return false
	})
}
