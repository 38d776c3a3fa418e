package appliance_test

import (
	"net/http"
	"strings"
	"testing"
)

// Every bad request gets a clear 4xx JSON error, etcd is left exactly as it was, and
// the servers go on serving.
func TestBadInput(t *testing.T) {
	sys := startSystem(t, "dc1")
	ctl, dc1 := sys.control.URL(), sys.regions["dc1"].URL()
	// One task waiting for approval, one pending, so the state-dependent cases have targets.
	_, pa := call(t, "POST", ctl+"/api/v1/tasks", map[string]string{"region_id": "dc1", "target_mac": "52:54:00:00:00:01", "os_type": "ubuntu", "os_version": "22.04"})
	_, rep := call(t, "POST", dc1+"/api/report", map[string]any{"mac_address": "52:54:00:00:00:01", "hardware": map[string]any{}})
	paToken := rep["agent_token"].(string)
	_, pend := call(t, "POST", ctl+"/api/v1/tasks", map[string]string{"region_id": "dc1", "target_mac": "52:54:00:00:00:02", "os_type": "ubuntu", "os_version": "22.04"})
	paID, pendID := pa["task_id"].(string), pend["task_id"].(string)
	huge := `{"region_id":"dc1","target_mac":"52:54:00:00:00:09","os_type":"` + strings.Repeat("a", 1<<20) + `","os_version":"1"}`
	hugeReport := `{"mac_address":"52:54:00:00:00:09","hardware":{"x":"` + strings.Repeat("a", 1<<20) + `"}}`

	cases := []struct {
		name, method, url string
		body              any
		code              int
		msg               string // substring of the message
	}{
		{"invalid MAC", "POST", ctl + "/api/v1/tasks", `{"region_id":"dc1","target_mac":"00:1a:2b","os_type":"u","os_version":"1"}`, 400, "not a MAC"},
		{"missing field", "POST", ctl + "/api/v1/tasks", `{"region_id":"dc1","target_mac":"52:54:00:00:00:09","os_type":"u"}`, 400, "os_version"},
		{"unknown field", "POST", ctl + "/api/v1/tasks", `{"region_id":"dc1","target_mac":"52:54:00:00:00:09","os_type":"u","os_version":"1","colour":"red"}`, 400, "colour"},
		{"region with illegal characters", "POST", ctl + "/api/v1/tasks", `{"region_id":"DC 1/x","target_mac":"52:54:00:00:00:09","os_type":"u","os_version":"1"}`, 400, "[a-z0-9-]+"},
		{"not JSON", "POST", ctl + "/api/v1/tasks", `region=dc1`, 400, "not valid JSON"},
		{"empty body", "POST", ctl + "/api/v1/tasks", ``, 400, "empty"},
		{"trailing data", "POST", ctl + "/api/v1/tasks", `{"region_id":"dc1","target_mac":"52:54:00:00:00:09","os_type":"u","os_version":"1"} {}`, 400, "after the JSON"},
		{"wrong type", "POST", ctl + "/api/v1/tasks", `{"region_id":1}`, 400, "region_id"},
		{"body over 1 MiB", "POST", ctl + "/api/v1/tasks", huge, 413, "larger than"},
		{"second open task for a MAC", "POST", ctl + "/api/v1/tasks", `{"region_id":"dc1","target_mac":"52:54:00:00:00:02","os_type":"u","os_version":"1"}`, 409, "already has open task " + pendID},
		{"approve a pending task", "POST", ctl + "/api/v1/tasks/" + pendID + "/approve", nil, 409, "is pending: cannot become approved"},
		{"approve an unknown task", "POST", ctl + "/api/v1/tasks/6ba7b810-9dad-11d1-80b4-00c04fd430c8/approve", nil, 404, "not found"},
		{"approve a non-uuid", "POST", ctl + "/api/v1/tasks/..%2F..%2Fx/approve", nil, 404, "not found"},
		{"list with a bad status", "GET", ctl + "/api/v1/tasks?status=done", nil, 400, "unknown status"},
		{"unknown API path", "GET", ctl + "/api/v1/nope", nil, 404, "no such endpoint"},
		{"match an unknown report", "POST", ctl + "/api/v1/unmatched/dc1/20260101000000-52:54:00:00:00:07/match", `{}`, 404, "not found"},
		{"report: invalid MAC", "POST", dc1 + "/api/report", `{"mac_address":"xx","hardware":{}}`, 400, "not a MAC"},
		{"report: missing MAC", "POST", dc1 + "/api/report", `{"hardware":{}}`, 400, "mac_address"},
		{"report: missing hardware", "POST", dc1 + "/api/report", `{"mac_address":"52:54:00:00:00:09"}`, 400, "hardware"},
		{"report: hardware not an object", "POST", dc1 + "/api/report", `{"mac_address":"52:54:00:00:00:09","hardware":"big"}`, 400, "hardware"},
		{"report: unknown field", "POST", dc1 + "/api/report", `{"mac_address":"52:54:00:00:00:09","hardware":{},"x":1}`, 400, `"x"`},
		{"report: not JSON", "POST", dc1 + "/api/report", `<xml/>`, 400, "not valid JSON"},
		{"report: over 1 MiB", "POST", dc1 + "/api/report", hugeReport, 413, "larger than"},
		{"progress: another MAC's task", "POST", dc1 + "/api/progress", `{"mac_address":"52:54:00:00:00:02","task_id":"` + paID + `","stage":"downloading","percentage":5}`, 409, "belongs to MAC 52:54:00:00:00:01"},
		{"progress: percentage over 100", "POST", dc1 + "/api/progress", `{"mac_address":"52:54:00:00:00:01","task_id":"` + paID + `","stage":"downloading","percentage":101}`, 400, "outside 0-100"},
		{"progress: percentage below 0", "POST", dc1 + "/api/progress", `{"mac_address":"52:54:00:00:00:01","task_id":"` + paID + `","stage":"downloading","percentage":-1}`, 400, "outside 0-100"},
		{"progress: before approval", "POST", dc1 + "/api/progress", `{"mac_address":"52:54:00:00:00:01","task_id":"` + paID + `","stage":"downloading","percentage":5}`, 409, "only while approved or installing"},
		{"progress: unknown stage", "POST", dc1 + "/api/progress", `{"mac_address":"52:54:00:00:00:01","task_id":"` + paID + `","stage":"dancing","percentage":5}`, 400, "stage"},
		{"progress: missing task id", "POST", dc1 + "/api/progress", `{"mac_address":"52:54:00:00:00:01","stage":"downloading","percentage":5}`, 400, "task_id"},
		{"progress: task of another region", "POST", dc1 + "/api/progress", `{"mac_address":"52:54:00:00:00:01","task_id":"6ba7b810-9dad-11d1-80b4-00c04fd430c8","stage":"downloading","percentage":5}`, 404, "not found"},
		{"approval: invalid MAC", "GET", dc1 + "/api/approval/zz", nil, 400, "not a MAC"},
		{"approval: no task", "GET", dc1 + "/api/approval/52:54:00:00:00:08", nil, 404, "No open task"},
		{"approval: bad wait", "GET", dc1 + "/api/approval/52:54:00:00:00:01?wait=soon", nil, 400, "whole seconds"},
		{"approval: wait too long", "GET", dc1 + "/api/approval/52:54:00:00:00:01?wait=61", nil, 400, "from 0 to 60"},
	}
	before := sys.etcd.Dump(t, "/os/")
	delete(before, "/os/region/dc1/heartbeat") // refreshed by the appliance meanwhile
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tok := ""
			if strings.HasSuffix(c.url, "/api/progress") {
				tok = paToken // the task's agent: its input is what is wrong
			}
			code, body := callAuth(t, c.method, c.url, tok, c.body)
			msg, _ := body["message"].(string)
			if code != c.code || body["status"] != "error" || !strings.Contains(msg, c.msg) {
				t.Fatalf("got %d %v, want %d with message containing %q", code, body, c.code, c.msg)
			}
		})
	}
	after := sys.etcd.Dump(t, "/os/")
	delete(after, "/os/region/dc1/heartbeat")
	if len(before) != len(after) {
		t.Fatalf("etcd changed: %d keys before, %d after", len(before), len(after))
	}
	for k, v := range before {
		if after[k] != v {
			t.Errorf("etcd changed at %s:\n before %s\n after  %s", k, v, after[k])
		}
	}
	// Still serving.
	if code, body := call(t, "GET", dc1+"/api/health", nil); code != http.StatusOK || body["region_label"] != "dc1" {
		t.Fatalf("appliance after bad input: %d %v", code, body)
	}
	if code, _ := call(t, "GET", ctl+"/api/v1/tasks", nil); code != http.StatusOK {
		t.Fatalf("control after bad input: %d", code)
	}
}
