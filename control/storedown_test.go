package control_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

// With etcd gone, the control plane's API and pages answer 503 "store unavailable"
// within the request deadline (2 s) instead of hanging while etcd's client retries.
func TestStoreDownAnswers503(t *testing.T) {
	_, cp, etcd := startBareControl(t, time.Minute)
	withAdmin(t, etcd.Store, cp.URL())
	etcd.Server.Close()
	for _, path := range []string{"/api/v1/tasks", "/api/v1/regions", "/", "/tasks/create"} {
		start := time.Now()
		code, body := get(t, cp.URL()+path)
		took := time.Since(start)
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "store unavailable") || took > 4*time.Second {
			t.Fatalf("GET %s with etcd down: %d after %s\n%.300s", path, code, took, body)
		}
		if strings.HasPrefix(path, "/api/") {
			var e struct {
				RetryAfter int `json:"retry_after"`
			}
			if json.Unmarshal([]byte(body), &e); e.RetryAfter != 5 {
				t.Fatalf("GET %s: no retry_after: %s", path, body)
			}
		}
		t.Logf("GET %s with etcd down: 503 after %s", path, took.Round(10*time.Millisecond))
	}
}
