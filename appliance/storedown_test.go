package appliance_test

import (
	"net/http"
	"testing"
	"time"
)

// With etcd gone, the regional API answers agents with 503 and retry_after within its
// request deadline instead of holding them while etcd's client retries.
func TestStoreDownAnswers503(t *testing.T) {
	sys := startSystem(t, "dc1")
	base := sys.regions["dc1"].URL()
	sys.etcd.Server.Close()
	for _, c := range []struct{ method, path, body string }{
		{"POST", "/api/report", `{"mac_address":"52:54:00:00:50:01","hardware":{}}`},
		{"GET", "/api/approval/52:54:00:00:50:01", ""},
		{"POST", "/api/progress", `{"mac_address":"52:54:00:00:50:01","task_id":"9b2f6a3e-2f4c-4a51-9d8e-0c1f2e3d4a5b","stage":"writing","percentage":5}`},
	} {
		start := time.Now()
		code, body := call(t, c.method, base+c.path, c.body)
		took := time.Since(start)
		if code != http.StatusServiceUnavailable || body["retry_after"] != 5.0 || took > 4*time.Second {
			t.Fatalf("%s %s with etcd down: %d %v after %s", c.method, c.path, code, body, took)
		}
		t.Logf("%s %s with etcd down: 503 after %s", c.method, c.path, took.Round(10*time.Millisecond))
	}
	code, body := call(t, "GET", base+"/api/health", "")
	if code != http.StatusServiceUnavailable || body["status"] != "degraded" {
		t.Fatalf("health with etcd down: %d %v", code, body)
	}
}
