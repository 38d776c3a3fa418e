package control_test

import (
	"context"
	"encoding/json"
	"fmt"
	"html"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/store"
)

// seedSmall makes n tasks in dc1 and m unmatched reports in dc1 (with hardware), and
// returns the task ids, oldest first.
func seedSmall(t *testing.T, st *store.Store, n, m int) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var ids []string
	for i := range n {
		task, err := st.CreateTask(ctx, store.NewTask{RegionID: "dc1", TargetMAC: fmt.Sprintf("02:00:00:00:%02x:%02x", i>>8, i&0xff),
			OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, task.TaskID)
	}
	for i := range m {
		if _, err := st.Report(ctx, "dc1", fmt.Sprintf("06:00:00:00:%02x:%02x", i>>8, i&0xff), json.RawMessage(`{"cpu":{"cores":4}}`)); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

func getJSON(t *testing.T, u string) (int, map[string]any) {
	t.Helper()
	code, body := get(t, u)
	var m map[string]any
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatalf("GET %s: %d %q is not JSON", u, code, body)
	}
	return code, m
}

// The REST API's lists page: ?limit= (default 100, at most 500) and ?after= with the
// next cursor of the answer, each task once newest first; the unmatched list is
// summaries, a report's hardware one call away; a bad limit or cursor is a 400 that
// says what is wrong.
func TestAPIPages(t *testing.T) {
	_, cp, etcd := startControl(t, store.Heartbeat{Region: "dc1"})
	ids := seedSmall(t, etcd.Store, 230, 120)
	api := cp.URL() + "/api/v1"

	var seen []string
	next, taskNext := "", ""
	for page := 1; ; page++ {
		u := api + "/tasks?region=dc1"
		if next != "" {
			u += "&after=" + url.QueryEscape(next)
		}
		code, body := getJSON(t, u)
		tasks, _ := body["tasks"].([]any)
		if code != 200 || body["count"] != float64(len(tasks)) {
			t.Fatalf("page %d: %d %v", page, code, body)
		}
		for _, x := range tasks {
			task := x.(map[string]any)
			if _, ok := task["hardware"]; ok {
				t.Fatalf("a list row carries hardware: %v", task)
			}
			seen = append(seen, task["task_id"].(string))
		}
		next, _ = body["next"].(string)
		if next == "" {
			break
		}
		if taskNext == "" {
			taskNext = next
		}
		if len(tasks) != 100 || page > 3 {
			t.Fatalf("page %d: %d tasks with next %q", page, len(tasks), next)
		}
	}
	if len(seen) != len(ids) {
		t.Fatalf("walked %d tasks, want %d", len(seen), len(ids))
	}
	for i, id := range seen {
		if id != ids[len(ids)-1-i] {
			t.Fatalf("row %d: %s, want %s (newest first, each once)", i, id, ids[len(ids)-1-i])
		}
	}

	// Unmatched: summaries, 100 a page by default, the whole report at its url.
	code, body := getJSON(t, api+"/unmatched?region=dc1")
	reports, _ := body["reports"].([]any)
	if code != 200 || len(reports) != 100 || body["count"] != 100.0 || body["next"] == "" {
		t.Fatalf("unmatched first page: %d, %d reports, next %v", code, len(reports), body["next"])
	}
	first := reports[0].(map[string]any)
	if _, ok := first["hardware"]; ok || first["mac_address"] == nil || first["received_at"] == nil || first["region"] != "dc1" {
		t.Fatalf("unmatched summary: %v", first)
	}
	code, whole := getJSON(t, cp.URL()+first["url"].(string))
	if code != 200 || whole["mac_address"] != first["mac_address"] || whole["hardware"] == nil {
		t.Fatalf("GET %s: %d %v", first["url"], code, whole)
	}
	code, body = getJSON(t, api+"/unmatched?region=dc1&limit=100&after="+url.QueryEscape(body["next"].(string)))
	if reports, _ = body["reports"].([]any); code != 200 || len(reports) != 20 || body["next"] != "" {
		t.Fatalf("unmatched last page: %d, %d reports, next %v", code, len(reports), body["next"])
	}
	// The newest task reports: its hardware is in a page only when asked for.
	if _, err := etcd.Store.Report(context.Background(), "dc1", "02:00:00:00:00:e5", json.RawMessage(`{"cpu":{"cores":8}}`)); err != nil {
		t.Fatal(err)
	}
	for q, want := range map[string]bool{"?limit=2": false, "?limit=2&hardware=1": true} {
		code, body = getJSON(t, api+"/tasks"+q)
		tasks, _ := body["tasks"].([]any)
		if code != 200 || len(tasks) != 2 || tasks[0].(map[string]any)["task_id"] != ids[len(ids)-1] {
			t.Fatalf("GET /tasks%s: %d %v", q, code, body)
		}
		if _, has := tasks[0].(map[string]any)["hardware"]; has != want {
			t.Fatalf("GET /tasks%s: hardware in the newest task: %v, want %v", q, has, want)
		}
	}
	code, body = getJSON(t, api+"/unmatched?hardware=1&limit=3")
	if reports, _ = body["reports"].([]any); code != 200 || len(reports) != 3 || reports[0].(map[string]any)["hardware"] == nil {
		t.Fatalf("unmatched with hardware: %d %v", code, body)
	}
	unmatchedNext := body["next"].(string)
	code, body = getJSON(t, api+"/audit?region=dc1&limit=2")
	if entries, _ := body["entries"].([]any); code != 200 || len(entries) != 2 || body["next"] == "" {
		t.Fatalf("audit page: %d %v", code, body)
	}

	// Refused, with a message naming the parameter.
	for _, c := range []struct{ path, want string }{
		{"/tasks?limit=501", "limit"},
		{"/tasks?limit=0", "limit"},
		{"/tasks?limit=ten", "limit"},
		{"/unmatched?limit=501", "limit"},
		{"/audit?limit=1000", "limit"},
		{"/tasks?after=not-a-cursor", "not a cursor"},
		{"/tasks?after=" + url.QueryEscape(unmatchedNext), "another list"},
		{"/tasks?region=dc2&after=" + url.QueryEscape(taskNext), "another list"},
		{"/tasks?region=dc1&status=pending&after=" + url.QueryEscape(taskNext), "another list"},
		{"/unmatched?region=dc1&after=" + url.QueryEscape(unmatchedNext), "another list"}, // the all-regions list's
		{"/tasks?before=x", "before"},
		{"/tasks?hardware=yes", "hardware"},
	} {
		code, body := getJSON(t, api+c.path)
		if msg, _ := body["message"].(string); code != http.StatusBadRequest || !strings.Contains(msg, c.want) {
			t.Errorf("GET %s: %d %v, want 400 saying %q", c.path, code, body, c.want)
		}
	}
}

var pageLink = regexp.MustCompile(`<a href="([^"]+)"[^>]*data-page="(\w+)"`)

// links returns a page's pager links by name (first, newer, older).
func links(body string) map[string]string {
	out := map[string]string{}
	for _, m := range pageLink.FindAllStringSubmatch(body, -1) {
		out[m[2]] = html.UnescapeString(m[1])
	}
	return out
}

// The task list, the unmatched reports and the audit trail page with newer and older
// links that keep the filters; a bad cursor or limit is a 400 page with a message.
func TestPagesPaginate(t *testing.T) {
	_, cp, etcd := startControl(t, store.Heartbeat{Region: "dc1"})
	ids := seedSmall(t, etcd.Store, 120, 60)
	rows := regexp.MustCompile(`<tr id="task-[^"]+" data-task="([^"]+)"`)

	code, body := get(t, cp.URL()+"/tasks?region=dc1")
	if code != 200 || len(rows.FindAllString(body, -1)) != 50 || !strings.Contains(body, "120 tasks match") {
		t.Fatalf("/tasks: %d, %d rows", code, len(rows.FindAllString(body, -1)))
	}
	l := links(body)
	if l["older"] == "" || l["newer"] != "" || !strings.Contains(l["older"], "region=dc1") {
		t.Fatalf("first page's links: %v", l)
	}
	var seen []string
	u := cp.URL() + "/tasks?region=dc1"
	for page := 1; page <= 5; page++ {
		code, body = get(t, u)
		if code != 200 {
			t.Fatalf("GET %s: %d", u, code)
		}
		for _, m := range rows.FindAllStringSubmatch(body, -1) {
			seen = append(seen, m[1])
		}
		l = links(body)
		if page > 1 && (l["newer"] == "" || l["first"] == "") {
			t.Fatalf("page %d has no link back: %v", page, l)
		}
		if page > 1 && strings.Contains(body, `id="task-row-template"`) {
			t.Fatalf("page %d: the live push could add new tasks to an old page", page)
		}
		if l["older"] == "" {
			break
		}
		u = cp.URL() + l["older"]
	}
	if len(seen) != len(ids) || seen[0] != ids[len(ids)-1] || seen[len(seen)-1] != ids[0] {
		t.Fatalf("the pages show %d tasks, want %d newest first", len(seen), len(ids))
	}
	// Back from the last page: the middle one.
	code, body = get(t, cp.URL()+l["newer"])
	if got := rows.FindAllStringSubmatch(body, -1); code != 200 || len(got) != 50 || got[0][1] != ids[69] {
		t.Fatalf("newer than the last page: %d, %d rows", code, len(got))
	}

	code, body = get(t, cp.URL()+"/unmatched?region=dc1&limit=25")
	if code != 200 || strings.Count(body, `<article class="report"`) != 25 || links(body)["older"] == "" {
		t.Fatalf("/unmatched: %d, %d reports, links %v", code, strings.Count(body, `<article class="report"`), links(body))
	}
	code, body = get(t, cp.URL()+links(body)["older"])
	if code != 200 || strings.Count(body, `<article class="report"`) != 25 || links(body)["newer"] == "" {
		t.Fatalf("/unmatched page 2: %d", code)
	}
	code, body = get(t, cp.URL()+"/audit?limit=5")
	if code != 200 || strings.Count(body, "<code>task.") != 5 || links(body)["older"] == "" {
		t.Fatalf("/audit: %d, links %v", code, links(body))
	}
	older, _ := url.Parse(links(body)["older"])
	auditCursor := older.Query().Get("after")

	for _, c := range []struct{ path, want string }{
		{"/tasks?after=garbage", "not a cursor"},
		{"/tasks?limit=201", "limit"},
		{"/tasks?status=done", "unknown status"},
		{"/unmatched?before=garbage", "not a cursor"},
		{"/audit?after=garbage", "not a cursor"},
		{"/tasks?region=dc1&after=" + url.QueryEscape(auditCursor), "another list"},
	} {
		code, body := get(t, cp.URL()+c.path)
		if code != http.StatusBadRequest || !strings.Contains(html.UnescapeString(body), c.want) {
			t.Errorf("GET %s: %d, want 400 saying %q", c.path, code, c.want)
		}
	}
}
