package appliance_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/internal/syncbuf"

	clientv3 "go.etcd.io/etcd/client/v3"

	"lpmos.dev/lpmos/appliance"
	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/control"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

// The whole seed flow with etcd's auth on: the control plane dials as lpmos-control,
// the appliance of dc2 as region-dc2 (its role: exactly dc2's prefixes). The real
// agent in host mode reports, is approved, streams the image and completes; an
// unmatched report, health and metrics work; nothing either process does is refused
// (no "permission denied" in their logs); the appliance's clean stop writes dc2
// offline. That dc2 cannot reach dc1 is store/rbac_test.go's.
func TestSeedFlowWithRegionRoles(t *testing.T) {
	e := storetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pw := map[string]string{store.ControlUser: "control-secret", store.RegionUser("dc2"): "dc2-secret"}
	if err := e.Store.EnsureControlRole(ctx, pw[store.ControlUser]); err != nil {
		t.Fatal(err)
	}
	if err := e.Store.EnsureRegionRole(ctx, "dc2", pw[store.RegionUser("dc2")]); err != nil {
		t.Fatal(err)
	}
	creds := func(user string) []string {
		return []string{"--etcd-endpoints=" + strings.Join(e.Endpoints, ","), "--etcd-user=" + user, "--etcd-password=" + pw[user]}
	}
	noEnv := func(string) string { return "" }
	var parseErrs bytes.Buffer
	ccfg, err := control.ParseConfig(append(creds(store.ControlUser), "--port=0", "--host=127.0.0.1"), noEnv, &parseErrs)
	if err != nil {
		t.Fatal(err)
	}
	acfg, err := appliance.ParseConfig(append(creds(store.RegionUser("dc2")), "--label=dc2"), noEnv, &parseErrs)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Store.EnableAuth(ctx, "root-secret"); err != nil {
		t.Fatal(err)
	}
	// What the test reads, it reads as the control plane's user.
	ctlCli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints, DialTimeout: 10 * time.Second,
		Username: store.ControlUser, Password: pw[store.ControlUser]})
	if err != nil {
		t.Fatal(err)
	}
	defer ctlCli.Close()
	view := &storetest.Etcd{Client: ctlCli, Store: store.New(ctlCli), Endpoints: e.Endpoints}

	controlLog := &syncbuf.Buffer{}
	c, err := control.Start(ctx, ccfg, slog.New(slog.NewTextHandler(controlLog, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	if _, err := view.Store.AddUser(ctx, "admin", store.RoleAdmin, "correct horse battery"); err != nil {
		t.Fatal(err)
	}
	_, tok, err := view.Store.CreateToken(ctx, "admin", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	controlTokens.Store(c.URL(), tok)

	acfg.APIHost, acfg.APIPort, acfg.Boot = "127.0.0.1", 0, appliance.BootConfig{}
	acfg.ImagesDir, acfg.HeartbeatTTL, acfg.RetryAfter = t.TempDir(), 5*time.Second, 2
	image := addImage(t, acfg.ImagesDir, "ubuntu", "22.04")
	applianceLog := &syncbuf.Buffer{}
	a, err := appliance.Start(ctx, acfg, applianceLog)
	if err != nil {
		t.Fatalf("appliance dc2 as region-dc2: %v", err)
	}
	stopped := false
	defer func() {
		if !stopped {
			a.Stop()
		}
	}()

	code, task := call(t, "POST", c.URL()+"/api/v1/tasks", map[string]string{
		"region_id": "dc2", "target_mac": "00:1a:2b:3c:4d:02", "os_type": "ubuntu", "os_version": "22.04"})
	if code != http.StatusCreated {
		t.Fatalf("create: %d %v", code, task)
	}
	id := task["task_id"].(string)
	prefix := "/os/install/task/dc2/" + id + "/"
	target := filepath.Join(t.TempDir(), "disk.img")
	m := newFileDisks(t, "00:1a:2b:3c:4d:02", contract.Disk{Name: "vda", SizeBytes: 1 << 30, Serial: "V2"})
	cfg := m.agentConfig(a.URL())
	cfg.Target = target
	agentErr := runAgent(cfg)
	view.WaitValue(t, prefix+"status", "pending_approval", 30*time.Second)
	approve(t, c.URL(), id)
	if err := waitAgent(t, agentErr, 60*time.Second); err != nil {
		t.Fatalf("agent: %v", err)
	}
	view.WaitValue(t, prefix+"status", "completed", 10*time.Second)
	if got, _ := os.ReadFile(target); !bytes.Equal(got, image) {
		t.Fatalf("target holds %d bytes, want the %d-byte image", len(got), len(image))
	}

	if code, body := call(t, "POST", a.URL()+"/api/report", map[string]any{"mac_address": "00:1a:2b:3c:4d:99", "hardware": map[string]any{}}); code != http.StatusNotFound {
		t.Fatalf("unmatched report: %d %v", code, body)
	}
	if _, ok := view.Get(t, "/os/index/unmatched/dc2/00:1a:2b:3c:4d:99"); !ok {
		t.Fatal("the unmatched report was not stored")
	}
	if code, body := call(t, "GET", a.URL()+"/api/health", nil); code != http.StatusOK || body["status"] != "ok" {
		t.Fatalf("health: %d %v", code, body)
	}
	resp, err := http.Get(a.URL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("metrics: %d", resp.StatusCode)
	}
	if code, body := call(t, "GET", c.URL()+"/api/v1/regions", nil); code != http.StatusOK {
		t.Fatalf("regions: %d %v", code, body)
	}

	stopped = true
	if err := a.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	view.WaitValue(t, "/os/region/dc2/status", store.RegionOffline, 5*time.Second)
	view.WaitGone(t, "/os/region/dc2/heartbeat", 5*time.Second)
	for name, log := range map[string]*syncbuf.Buffer{"appliance": applianceLog, "control plane": controlLog} {
		if strings.Contains(log.String(), "permission denied") {
			t.Errorf("the %s was refused something:\n%s", name, log)
		}
	}
}
