package appliance_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/internal/syncbuf"

	clientv3 "go.etcd.io/etcd/client/v3"

	"lpmos.dev/lpmos/appliance"
	"lpmos.dev/lpmos/store/etcdserver"
)

// etcd over its quota raises NOSPACE and refuses every write. The appliance says so in
// its health (503, etcd_alarms) and answers writes with 503 "store full" instead of
// 500s, and keeps serving reads.
func TestNoSpaceAlarmIsSurfaced(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv, err := etcdserver.Start(ctx, etcdserver.Config{DataDir: t.TempDir(), ListenClientURLs: "http://127.0.0.1:0",
		ListenPeerURLs: "http://127.0.0.1:0", Quiet: true, QuotaBackendBytes: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	cli, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	a, err := appliance.Start(ctx, appliance.Config{Label: "dc1", APIHost: "127.0.0.1", EtcdEndpoints: srv.Endpoints(),
		HeartbeatTTL: 5 * time.Second, RetryAfter: 2, ImagesDir: t.TempDir()}, &syncbuf.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Stop() })
	// Fill etcd (as a flood once did) until it raises the alarm: bounded, 64 x 512 KiB.
	filler, full := strings.Repeat("x", 512<<10), false
	for i := 0; i < 64 && !full; i++ {
		_, err := cli.Put(ctx, "/filler/"+string(rune('a'+i%26))+strings.Repeat("y", i), filler)
		full = err != nil && strings.Contains(err.Error(), "database space exceeded")
	}
	if !full {
		t.Fatal("etcd never raised NOSPACE")
	}
	code, body := call(t, "GET", a.URL()+"/api/health", nil)
	alarms, _ := body["etcd_alarms"].([]any)
	if code != http.StatusServiceUnavailable || body["status"] != "degraded" || len(alarms) != 1 || alarms[0] != "NOSPACE" {
		t.Fatalf("health with NOSPACE: %d %v", code, body)
	}
	code, body = call(t, "POST", a.URL()+"/api/report", map[string]any{"mac_address": "52:54:00:00:70:01", "hardware": map[string]any{}})
	if msg, _ := body["message"].(string); code != http.StatusServiceUnavailable || !strings.Contains(msg, "store full") || body["retry_after"] == nil {
		t.Fatalf("a report with NOSPACE: %d %v", code, body)
	}
}
