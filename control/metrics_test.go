package control_test

import (
	"net/http"
	"net/url"
	"testing"
	"time"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/internal/metrics/metricstest"
	"lpmos.dev/lpmos/store"
)

// The control plane's /metrics: a viewer's bearer token reads it, nobody else; it
// counts requests by route and code, logins by result, and tasks by region and status.
func TestControlMetrics(t *testing.T) {
	ctx, cp, etcd := startBareControl(t, time.Minute)
	base := cp.URL()
	adminPW, _ := withAdmin(t, etcd.Store, base)
	_, viewer := makeUser(t, etcd.Store, "prometheus", store.RoleViewer)

	// No credentials: no metrics.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		t.Fatalf("GET /metrics without credentials: %d", resp.StatusCode)
	}

	for _, mac := range []string{"52:54:00:00:50:01", "52:54:00:00:50:02"} {
		if _, err := etcd.Store.CreateTask(ctx, store.NewTask{RegionID: "dc1", TargetMAC: mac, OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}}); err != nil {
			t.Fatal(err)
		}
	}
	if code, body := get(t, base+"/api/v1/tasks?region=dc1"); code != http.StatusOK {
		t.Fatalf("list tasks: %d %s", code, body)
	}
	if code, _ := get(t, base+"/api/v1/tasks/no-such-task"); code != http.StatusNotFound {
		t.Fatalf("get a task that does not exist: %d", code)
	}
	if code, _, _ := form(t, base+"/login", url.Values{"name": {"admin"}, "password": {"wrong"}}, map[string]string{"Authorization": ""}); code != http.StatusUnauthorized {
		t.Fatalf("login with a wrong password: %d", code)
	}
	if code, _, _ := form(t, base+"/login", url.Values{"name": {"admin"}, "password": {adminPW}}, map[string]string{"Authorization": ""}); code != http.StatusSeeOther {
		t.Fatalf("login: %d", code)
	}

	m := metricstest.Scrape(t, base+"/metrics", viewer)
	for _, c := range []struct {
		what      string
		got, want float64
	}{
		{"dc1 pending", m.Value("lpmos_control_tasks", "region", "dc1", "status", "pending"), 2},
		{"dc1 completed", m.Value("lpmos_control_tasks", "region", "dc1", "status", "completed"), 0},
		{"dc1 unmatched", m.Value("lpmos_control_unmatched_reports", "region", "dc1"), 0},
		{"dc1 online", m.Value("lpmos_control_region_online", "region", "dc1"), 0},
		{"list tasks 200", m.Value("lpmos_control_http_requests_total", "route", "GET /api/v1/tasks", "code", "200"), 1},
		{"get task 404", m.Value("lpmos_control_http_requests_total", "route", "GET /api/v1/tasks/{id}", "code", "404"), 1},
		{"metrics refused", m.Value("lpmos_control_http_requests_total", "route", "GET /metrics", "code", "200"), 0},
		{"logins ok", m.Value("lpmos_control_logins_total", "result", "success"), 1},
		{"logins refused", m.Value("lpmos_control_logins_total", "result", "failure"), 1},
		{"store unavailable", m.Value("lpmos_control_store_unavailable_total"), 0},
		{"scrape error", m.Value("lpmos_control_regions_scrape_error"), 0},
	} {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", c.what, c.got, c.want)
		}
	}
	if !m.Has("lpmos_control_store_unavailable_total") || !m.Has("go_goroutines") {
		t.Errorf("missing metrics in the scrape")
	}
	// The refused scrape was counted under its route.
	if got := m.Value("lpmos_control_http_requests_total", "route", "GET /metrics"); got != 1 {
		t.Errorf("GET /metrics before this scrape: %v requests, want 1 (the refused one)", got)
	}

	// Guessing passwords runs into the login limit: the refusals and the 429 are counted apart.
	refused := 1
	for i := 0; ; i++ {
		code, _, _ := form(t, base+"/login", url.Values{"name": {"admin"}, "password": {"guess"}}, map[string]string{"Authorization": ""})
		if code == http.StatusTooManyRequests {
			break
		}
		if code != http.StatusUnauthorized || i == 50 {
			t.Fatalf("login guess %d: %d", i, code)
		}
		refused++
	}
	m = metricstest.Scrape(t, base+"/metrics", viewer)
	if f, l := m.Value("lpmos_control_logins_total", "result", "failure"), m.Value("lpmos_control_logins_total", "result", "rate_limited"); f != float64(refused) || l != 1 {
		t.Errorf("logins: failure %v, rate_limited %v; want %d and 1", f, l, refused)
	}
}
