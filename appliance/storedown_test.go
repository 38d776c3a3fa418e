package appliance_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"lpmos.dev/lpmos/internal/syncbuf"

	"lpmos.dev/lpmos/appliance"
	"lpmos.dev/lpmos/control"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/etcdserver"
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

// etcd stopped under a running appliance and control plane: both APIs answer 503
// within 2 s; etcd started again on its data: both serve again, no restart of ours.
func TestServiceResumesAfterEtcdRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dir := t.TempDir()
	cfg := etcdserver.Config{DataDir: dir, Quiet: true,
		ListenClientURLs: fmt.Sprintf("http://127.0.0.1:%d", freePort(t)), ListenPeerURLs: fmt.Sprintf("http://127.0.0.1:%d", freePort(t))}
	srv, err := etcdserver.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	eps := srv.Endpoints()
	t.Cleanup(func() { srv.Close() })
	a, err := appliance.Start(ctx, appliance.Config{Label: "dc1", APIHost: "127.0.0.1", EtcdEndpoints: eps,
		HeartbeatTTL: 5 * time.Second, RetryAfter: 2, ImagesDir: t.TempDir()}, &syncbuf.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Stop() })
	cp, err := control.Start(ctx, control.Config{Host: "127.0.0.1", EtcdEndpoints: eps}, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cp.Stop() })
	st, err := store.Open(ctx, store.DialConfig{Endpoints: eps})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.AddUser(ctx, "admin", store.RoleAdmin, "correct horse battery"); err != nil {
		t.Fatal(err)
	}
	_, tok, err := st.CreateToken(ctx, "admin", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	controlTokens.Store(cp.URL(), tok)
	report := func() int {
		code, _ := call(t, "POST", a.URL()+"/api/report", map[string]any{"mac_address": "52:54:00:00:80:01", "hardware": map[string]any{}})
		return code
	}
	if code := report(); code != http.StatusNotFound { // no task: the normal answer
		t.Fatalf("report before: %d", code)
	}
	srv.Close()
	start := time.Now()
	if code := report(); code != http.StatusServiceUnavailable || time.Since(start) > 4*time.Second {
		t.Fatalf("report with etcd stopped: %d after %s", code, time.Since(start))
	}
	if code, _ := call(t, "GET", cp.URL()+"/api/v1/regions", nil); code != http.StatusServiceUnavailable {
		t.Fatalf("control API with etcd stopped: %d", code)
	}
	if srv, err = etcdserver.Start(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	restarted := time.Now()
	// The clients reconnect by themselves; poll the API (bounded) until it answers.
	for code := report(); code != http.StatusNotFound; code = report() {
		if time.Since(restarted) > 30*time.Second {
			t.Fatalf("report after etcd came back: still %d", code)
		}
	}
	// The control plane's client reconnects on its own schedule too: poll, bounded.
	for code, _ := call(t, "GET", cp.URL()+"/api/v1/regions", nil); code != http.StatusOK; code, _ = call(t, "GET", cp.URL()+"/api/v1/regions", nil) {
		if time.Since(restarted) > 30*time.Second {
			t.Fatalf("control API after etcd came back: still %d", code)
		}
	}
	t.Logf("etcd back: the appliance answered again %s later", time.Since(restarted).Round(10*time.Millisecond))
}
