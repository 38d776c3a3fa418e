package control_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

// do sends one request exactly as given (no helper adds credentials).
func do(t *testing.T, method, u, body string, h http.Header) (int, map[string]any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, method, u, strings.NewReader(body))
	for k, v := range h {
		req.Header[k] = v
	}
	if host := h.Get("Host"); host != "" {
		req.Host = host
	}
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	json.Unmarshal(b, &m)
	return resp.StatusCode, m
}

// state is etcd's content but the heartbeat (which its loop rewrites): what a refused
// request must leave unchanged.
func state(t *testing.T, e *storetest.Etcd) map[string]string {
	t.Helper()
	m := e.Dump(t, "/os/")
	for k := range m {
		if strings.HasPrefix(k, "/os/region/") {
			delete(m, k)
		}
	}
	return m
}

// Every /api/v1 endpoint against every kind of caller: no token, each role, a revoked
// and an expired token, a malformed header, and a browser session (which the API never
// takes). A refusal is 401 or 403 with a JSON error and changes nothing in etcd.
func TestAPIAuthorization(t *testing.T) {
	ctx, cp, etcd := startControl(t, store.Heartbeat{Region: "dc1", Images: []contract.ImageRef{ubuntuImage}})
	base := cp.URL()
	st := etcd.Store
	_, viewer := makeUser(t, st, "vera", store.RoleViewer)
	operatorPW, operator := makeUser(t, st, "olga", store.RoleOperator)
	_, admin := makeUser(t, st, "adam", store.RoleAdmin)
	revokedTok, revoked, _ := st.CreateToken(ctx, "olga", time.Hour)
	if _, err := st.RevokeToken(ctx, revokedTok.ID); err != nil {
		t.Fatal(err)
	}
	st.SetClock(func() time.Time { return time.Now().UTC().Add(-2 * time.Hour) })
	_, expired, err := st.CreateToken(ctx, "adam", time.Hour) // expired an hour ago
	st.SetClock(nil)
	if err != nil {
		t.Fatal(err)
	}
	_, cookie, _, err := st.Login(ctx, "olga", operatorPW, store.SessionLimits{Idle: time.Hour, Max: time.Hour})
	if err != nil {
		t.Fatal(err)
	}

	pa, err := st.CreateTask(ctx, store.NewTask{RegionID: "dc1", TargetMAC: "52:54:00:00:00:01", OSRef: ubuntuImage.OSRef})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Report(ctx, "dc1", pa.TargetMAC, json.RawMessage(testHardware)); err != nil {
		t.Fatal(err)
	}
	const unknownTask = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"

	type caller struct {
		name  string
		h     http.Header
		role  store.Role // "" : not authenticated
		fresh bool
	}
	bearer := func(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }
	callers := []caller{
		{"no token", http.Header{}, "", false},
		{"viewer", bearer(viewer), store.RoleViewer, false},
		{"operator", bearer(operator), store.RoleOperator, false},
		{"admin", bearer(admin), store.RoleAdmin, false},
		{"revoked token", bearer(revoked), "", false},
		{"expired token", bearer(expired), "", false},
		{"not a bearer", http.Header{"Authorization": {"Basic b2xnYTpwdw=="}}, "", false},
		{"session cookie", http.Header{"Cookie": {"lpmos_session=" + cookie}}, "", false},
	}
	endpoints := []struct {
		method, path string
		body         func(i int) string
		min          store.Role
		ok           int // the answer once authorized; 0: anything but 401/403
	}{
		{"GET", "/api/v1/tasks", nil, store.RoleViewer, 200},
		{"GET", "/api/v1/tasks/" + pa.TaskID, nil, store.RoleViewer, 200},
		{"GET", "/api/v1/regions", nil, store.RoleViewer, 200},
		{"GET", "/api/v1/unmatched?region=dc1", nil, store.RoleViewer, 200},
		{"GET", "/api/v1/audit", nil, store.RoleOperator, 200},
		{"POST", "/api/v1/tasks", func(i int) string {
			return fmt.Sprintf(`{"region_id":"dc1","target_mac":"52:54:00:00:01:%02x","os_type":"ubuntu","os_version":"22.04"}`, i)
		}, store.RoleOperator, 201},
		{"POST", "/api/v1/tasks/" + pa.TaskID + "/approve", func(int) string { return `{"plan_digest":"` + strings.Repeat("0", 64) + `"}` }, store.RoleOperator, 409},
		{"POST", "/api/v1/tasks/" + unknownTask + "/cancel", func(int) string { return `{}` }, store.RoleOperator, 404},
		{"POST", "/api/v1/unmatched/dc1/20260101000000-52:54:00:00:00:07/match", func(int) string { return `{}` }, store.RoleOperator, 404},
		{"POST", "/api/v1/tasks/" + unknownTask + "/reset-agent-token", func(int) string { return `{}` }, store.RoleOperator, 0},
		{"POST", "/api/v1/frobnicate", func(int) string { return `{}` }, store.RoleAdmin, 404}, // unknown: admin only
		{"DELETE", "/api/v1/tasks/" + pa.TaskID, nil, store.RoleAdmin, 404},
		{"GET", "/api/v1/nope", nil, store.RoleViewer, 404},
	}
	for i, ep := range endpoints {
		for j, c := range callers {
			body := ""
			if ep.body != nil {
				body = ep.body(i*len(callers) + j)
			}
			h := c.h.Clone()
			if ep.method != "GET" {
				h.Set("Content-Type", "application/json")
			}
			before := state(t, etcd)
			code, resp := do(t, ep.method, base+ep.path, body, h)
			what := fmt.Sprintf("%s %s as %s", ep.method, ep.path, c.name)
			want := ep.ok
			switch {
			case c.role == "":
				want = http.StatusUnauthorized
			case !c.role.AtLeast(ep.min):
				want = http.StatusForbidden
			}
			if (want != 0 && code != want) || (want == 0 && (code == 401 || code == 403)) {
				t.Errorf("%s: HTTP %d, want %d (%v)", what, code, want, resp)
				continue
			}
			if code == 401 || code == 403 {
				if resp["status"] != "error" || resp["message"] == "" {
					t.Errorf("%s: refusal body %v", what, resp)
				}
				storetest.AssertSame(t, before, state(t, etcd))
			}
		}
	}
}

// Cross-site requests: the classic CSRF (text/plain from another origin) is refused
// with or without a token, a JSON write from a foreign origin too; a form from another
// site is refused; a foreign Host header (DNS rebinding) is refused before anything.
func TestCrossSiteRefused(t *testing.T) {
	_, cp, etcd := startControl(t, store.Heartbeat{Region: "dc1", Images: []contract.ImageRef{ubuntuImage}})
	base := cp.URL()
	_, admin := makeUser(t, etcd.Store, "adam", store.RoleAdmin)
	task := `{"region_id":"dc1","target_mac":"52:54:00:00:00:09","os_type":"ubuntu","os_version":"22.04"}`
	for _, c := range []struct {
		name, path, body string
		h                http.Header
		want             int
	}{
		{"text/plain from another site, no token", "/api/v1/tasks", task, http.Header{"Content-Type": {"text/plain"}, "Origin": {"http://evil.example"}}, 401},
		{"text/plain from another site, with a token", "/api/v1/tasks", task, http.Header{"Content-Type": {"text/plain"}, "Origin": {"http://evil.example"}, "Authorization": {"Bearer " + admin}}, 403},
		{"text/plain, with a token", "/api/v1/tasks", task, http.Header{"Content-Type": {"text/plain"}, "Authorization": {"Bearer " + admin}}, 415},
		{"no content type, with a token", "/api/v1/tasks/6ba7b810-9dad-11d1-80b4-00c04fd430c8/cancel", "", http.Header{"Authorization": {"Bearer " + admin}}, 415},
		{"JSON from another site, with a token", "/api/v1/tasks", task, http.Header{"Content-Type": {"application/json"}, "Sec-Fetch-Site": {"cross-site"}, "Authorization": {"Bearer " + admin}}, 403},
		{"a form from another site", "/tasks/create", "region=dc1&mac=52:54:00:00:00:09&os_type=u&os_version=1", http.Header{"Content-Type": {"application/x-www-form-urlencoded"}, "Origin": {"http://evil.example"}, "Authorization": {"Bearer " + admin}}, 403},
		{"a rebound DNS name", "/api/v1/tasks", task, http.Header{"Content-Type": {"application/json"}, "Host": {"evil.example"}, "Authorization": {"Bearer " + admin}}, 421},
	} {
		before := state(t, etcd)
		if code, resp := do(t, "POST", base+c.path, c.body, c.h); code != c.want {
			t.Errorf("%s: HTTP %d, want %d (%v)", c.name, code, c.want, resp)
		}
		storetest.AssertSame(t, before, state(t, etcd))
	}
	for host, want := range map[string]int{"evil.example": 421, "evil.example:80": 421, "localhost": 200, "[::1]:8080": 200} {
		if code, _ := do(t, "GET", base+"/api/v1/regions", "", http.Header{"Host": {host}, "Authorization": {"Bearer " + admin}}); code != want {
			t.Errorf("GET with Host %s: HTTP %d, want %d", host, code, want)
		}
	}
	if code, _ := do(t, "GET", base+"/login", "", http.Header{"Host": {"evil.example"}}); code != 421 {
		t.Errorf("login page for a foreign Host: HTTP %d, want 421", code)
	}
	// A page without a session leads to the login page.
	code, _ := do(t, "GET", base+"/tasks/create?region=dc1", "", nil)
	if code != http.StatusSeeOther {
		t.Errorf("a page logged out: HTTP %d, want 303 to /login", code)
	}
	// Pages take a bearer token too (monitoring), and never set a cookie for it.
	req, _ := http.NewRequest("GET", base+"/", nil)
	req.Header.Set("Authorization", "Bearer "+admin)
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || len(resp.Cookies()) != 0 || !strings.Contains(string(b), `id="who-name">adam<`) {
		t.Errorf("dashboard with a bearer token: HTTP %d, cookies %v", resp.StatusCode, resp.Cookies())
	}
}

// Who acts is the request's identity: the task's creator and approver in the audit
// trail and approved_by, and logins (success and failure) audited from the caller's
// address.
func TestAuditActorsFromIdentity(t *testing.T) {
	ctx, cp, etcd := startControl(t, store.Heartbeat{Region: "dc1", Images: []contract.ImageRef{ubuntuImage}})
	base := cp.URL()
	st := etcd.Store
	pw, op := makeUser(t, st, "olga", store.RoleOperator)
	h := http.Header{"Authorization": {"Bearer " + op}, "Content-Type": {"application/json"}}
	code, task := do(t, "POST", base+"/api/v1/tasks", `{"region_id":"dc1","target_mac":"52:54:00:00:00:0a","os_type":"ubuntu","os_version":"22.04"}`, h)
	if code != 201 {
		t.Fatalf("create: %d %v", code, task)
	}
	id := task["task_id"].(string)
	if _, err := st.Report(ctx, "dc1", "52:54:00:00:00:0a", json.RawMessage(testHardware)); err != nil {
		t.Fatal(err)
	}
	planned, _ := st.GetTask(ctx, id)
	if code, resp := do(t, "POST", base+"/api/v1/tasks/"+id+"/approve", `{"plan_digest":"`+planned.Plan.Digest+`"}`, h); code != 200 {
		t.Fatalf("approve: %d %v", code, resp)
	}
	if approved, _ := st.GetTask(ctx, id); approved.Approval == nil || approved.Approval.ApprovedBy != "olga" {
		t.Fatalf("approval = %+v", approved.Approval)
	}
	// Logins through the page.
	for _, p := range []string{"wrong password!!", pw} {
		form := url.Values{"name": {"olga"}, "password": {p}}
		code, _ := do(t, "POST", base+"/login", form.Encode(), http.Header{"Content-Type": {"application/x-www-form-urlencoded"}})
		if want := map[bool]int{true: 303, false: 401}[p == pw]; code != want {
			t.Fatalf("login with %q: HTTP %d, want %d", p, code, want)
		}
	}
	code, resp := do(t, "GET", base+"/api/v1/audit?user=olga", "", h)
	if code != 200 {
		t.Fatalf("audit: %d %v", code, resp)
	}
	got := map[string]bool{}
	for _, e := range resp["entries"].([]any) {
		m := e.(map[string]any)
		if !strings.HasPrefix(m["source"].(string), "127.0.0.1:") {
			t.Errorf("%v: source %v", m["action"], m["source"])
		}
		got[m["action"].(string)] = true
	}
	for _, a := range []string{"task.create", "task.approve", "login.success"} {
		if !got[a] {
			t.Errorf("no %s by olga in the audit trail: %v", a, got)
		}
	}
	fails, _ := st.ListAudit(ctx, store.AuditFilter{Action: "login.failure"})
	if len(fails) != 1 || fails[0].Actor != "anonymous" || fails[0].Target != "olga" || fails[0].Detail["reason"] != "wrong password" {
		t.Fatalf("login failures = %+v", fails)
	}
}
