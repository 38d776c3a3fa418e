package control_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/control"
	"lpmos.dev/lpmos/internal/pki"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/etcdserver"
	"lpmos.dev/lpmos/store/storetest"
)

// Region clusters face the WAN: in production they serve TLS and ask for a client
// certificate (docs/etcd.md). These tests run the federation over such clusters, with
// the PKI `lpmos-control certs init` and `certs add-region` write.

// tlsPKI writes a CA, etcd's server pair for 127.0.0.1, the control plane's pair
// (control.crt, CN root) and region-NAME's pair for each region, as an operator does.
func tlsPKI(t *testing.T, regions ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pki")
	if _, err := runCerts(t, "init", "--dir", dir, "--hosts", "127.0.0.1,localhost"); err != nil {
		t.Fatal(err)
	}
	for _, r := range regions {
		if _, err := runCerts(t, "add-region", r, "--dir", dir); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// pkiCreds dials with dir's CA and the pair name (.crt, .key).
func pkiCreds(dir, name string) store.Credentials {
	return store.Credentials{CACert: filepath.Join(dir, "ca.crt"), Cert: filepath.Join(dir, name+".crt"), Key: filepath.Join(dir, name+".key")}
}

// tlsCluster starts an etcd that serves clients over TLS only, with dir's server
// pair, and wants a client certificate of dir's CA (--client-cert-auth). Its Client
// and Store dial as the control plane does (control.crt: CN root).
func tlsCluster(t *testing.T, dir string) *storetest.Etcd {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := etcdserver.Start(ctx, etcdserver.Config{
		DataDir: t.TempDir(), ListenClientURLs: "https://127.0.0.1:0", ListenPeerURLs: "http://127.0.0.1:0", Quiet: true,
		TLS: etcdserver.TLS{CertFile: filepath.Join(dir, "etcd-server.crt"), KeyFile: filepath.Join(dir, "etcd-server.key"),
			TrustedCAFile: filepath.Join(dir, "ca.crt"), ClientCertAuth: true},
	})
	if err != nil {
		t.Fatalf("etcd with TLS: %v", err)
	}
	t.Cleanup(srv.Close)
	cfg, err := store.DialConfig{Endpoints: srv.Endpoints(), Credentials: pkiCreds(dir, "control")}.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return &storetest.Etcd{Server: srv, Client: cli, Store: store.New(cli), Endpoints: srv.Endpoints()}
}

// runCLIOn runs lpmos-control with e as its etcd, dialled with creds (ETCD_* env).
func runCLIOn(t *testing.T, e *storetest.Etcd, creds store.Credentials, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	env := map[string]string{"ETCD_ENDPOINTS": strings.Join(e.Endpoints, ","), "USER": "ops",
		"ETCD_CACERT": creds.CACert, "ETCD_CERT": creds.Cert, "ETCD_KEY": creds.Key}
	var out, errb bytes.Buffer
	err := control.Main(ctx, args, control.Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb, Getenv: func(k string) string { return env[k] }})
	return out.String(), err
}

// regionAuth gives region its etcd user and role in e (its appliance's certificate
// CN region-NAME), then turns etcd's auth on, as the region's administrator does with
// the control plane's certificate (CN root).
func regionAuth(t *testing.T, e *storetest.Etcd, dir, region string) {
	t.Helper()
	for _, args := range [][]string{{"regions", "add", region}, {"regions", "enable-auth"}} {
		if out, err := runCLIOn(t, e, pkiCreds(dir, "control"), args...); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
}

// openAs dials e as the holder of pair name in dir (an appliance: region-NAME).
func openAs(t *testing.T, ctx context.Context, e *storetest.Etcd, dir, name string) *store.Store {
	t.Helper()
	st, err := store.Open(ctx, store.DialConfig{Endpoints: e.Endpoints, Credentials: pkiCreds(dir, name)})
	if err != nil {
		t.Fatalf("open as %s: %v", name, err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// expiredPair issues a client pair of dir's CA that expired an hour ago.
func expiredPair(t *testing.T, dir, cn string) (cert, key string) {
	t.Helper()
	ca, err := pki.Load(dir, "ca")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	p, err := ca.Issue(pki.Request{CommonName: cn, Kind: pki.Client, NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Write(dir, cn+"-expired", false); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, cn+"-expired.crt"), filepath.Join(dir, cn+"-expired.key")
}

func heartbeatOn(t *testing.T, st *store.Store, region string) {
	t.Helper()
	hb, err := st.StartHeartbeat(context.Background(), func() store.Heartbeat {
		return store.Heartbeat{Region: region, Images: []contract.ImageRef{{OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}, SHA256: strings.Repeat("a", 64), Size: 1 << 30}}}
	}, 10*time.Second, nil)
	if err != nil {
		t.Fatalf("%s heartbeat: %v", region, err)
	}
	t.Cleanup(func() { hb.Stop(context.Background()) })
}

// startControlArgs parses args as lpmos-control's command line and starts it, its log in
// the returned buffer.
func startControlArgs(t *testing.T, ctx context.Context, args ...string) (*control.Server, *notifyingBuffer) {
	t.Helper()
	cfg, err := control.ParseConfig(append([]string{"--port=0"}, args...), func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	logs := &notifyingBuffer{}
	start := time.Now()
	cp, err := control.Start(ctx, cfg, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("control plane started in %s", time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() { cp.Stop() })
	return cp, logs
}

func writeRegionsFile(t *testing.T, body string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "regions.yaml")
	if err := os.WriteFile(f, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

func createVia(t *testing.T, base, region, mac string) (int, map[string]any) {
	t.Helper()
	return apiDo(t, "POST", base+"/api/v1/tasks", fmt.Sprintf(`{"region_id":%q,"target_mac":%q,"os_type":"ubuntu","os_version":"22.04"}`, region, mac))
}

func listIDs(t *testing.T, base, query string) (map[string]bool, map[string]any) {
	t.Helper()
	code, m := apiDo(t, "GET", base+"/api/v1/tasks"+query, "")
	if code != 200 {
		t.Fatalf("GET /api/v1/tasks%s: %d %v", query, code, m)
	}
	ids := map[string]bool{}
	for _, x := range m["tasks"].([]any) {
		ids[x.(map[string]any)["task_id"].(string)] = true
	}
	return ids, m
}

// The control plane dials region clusters over TLS with client certificates, named by
// the regions file (dc2: etcd's auth on, the control plane root by its certificate's
// CN, the appliance region-dc2 by its) and by --region with the control plane's own
// --etcd-* credentials (dc3), its own etcd TLS too: tasks created for dc2 land in dc2's
// cluster, the appliance's reports and progress and a change written straight to dc2
// reach the API through the mirror. Then a control plane whose regions file is wrong for
// a region in each TLS way (another CA, a foreign, expired or missing client
// certificate, plaintext) starts, shows each such region unreachable with a log line
// naming the TLS problem, refuses writes there with the 503, and serves every other
// region as before.
func TestRegionsFileTLS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := tlsPKI(t, "dc2", "dc3")
	home, dc2, dc3 := tlsCluster(t, dir), tlsCluster(t, dir), tlsCluster(t, dir)
	regionAuth(t, dc2, dir, "dc2")
	ctl := pkiCreds(dir, "control")
	homeFlags := []string{"--etcd-endpoints=" + home.Endpoints[0], "--etcd-cacert=" + ctl.CACert, "--etcd-cert=" + ctl.Cert, "--etcd-key=" + ctl.Key}
	file := writeRegionsFile(t, fmt.Sprintf(`regions:
  - name: dc2
    endpoints: [%s]
    cacert: %s
    cert: %s
    key: %s
`, dc2.Endpoints[0], ctl.CACert, ctl.Cert, ctl.Key))
	cp, _ := startControlArgs(t, ctx, append(homeFlags, "--regions-file="+file, "--region=dc3="+dc3.Endpoints[0])...)
	base := cp.URL()
	_, token := withAdmin(t, home.Store, base)
	app2 := openAs(t, ctx, dc2, dir, "region-dc2") // dc2's appliance, etcd user region-dc2
	heartbeatOn(t, home.Store, "dc1")
	heartbeatOn(t, app2, "dc2")
	heartbeatOn(t, dc3.Store, "dc3")
	took := poll(t, 10*time.Second, "dc1 shared, dc2 and dc3 own, reachable and online", func() bool {
		r1, r2, r3 := regionOf(t, base, "dc1"), regionOf(t, base, "dc2"), regionOf(t, base, "dc3")
		return r1 != nil && r2 != nil && r3 != nil && r1["cluster"] == "shared" && r2["cluster"] == "own" && r3["cluster"] == "own" &&
			r2["reachable"] == true && r3["reachable"] == true && r2["online"] == true && r3["online"] == true
	})
	t.Logf("regions over TLS reachable and online %s after the start", took.Round(time.Millisecond))

	// A task for dc2 lands in dc2's cluster only; the appliance (its certificate) sees
	// and reports it; approved through the API.
	const mac2 = "02:00:00:00:02:01"
	code, m := createVia(t, base, "dc2", mac2)
	if code != http.StatusCreated {
		t.Fatalf("create in dc2: %d %v", code, m)
	}
	id2 := m["task_id"].(string)
	if _, ok := dc2.Get(t, "/os/index/task/"+id2); !ok {
		t.Fatalf("task %s is not in dc2's cluster", id2)
	}
	if _, ok := home.Get(t, "/os/index/task/"+id2); ok || len(home.Dump(t, "/os/install/task/dc2/")) != 0 {
		t.Fatal("dc2's task is in the control plane's etcd")
	}
	if res, err := app2.Report(ctx, "dc2", mac2, []byte(testHardware)); err != nil || !res.Matched {
		t.Fatalf("dc2's appliance reports: %+v %v", res, err)
	}
	var digest string
	poll(t, 5*time.Second, "dc2's task pending approval through the API", func() bool {
		_, m := apiDo(t, "GET", base+"/api/v1/tasks/"+id2, "")
		p, _ := m["plan"].(map[string]any)
		digest, _ = p["digest"].(string)
		return m["status"] == "pending_approval" && digest != ""
	})
	if code, m := apiDo(t, "POST", base+"/api/v1/tasks/"+id2+"/approve", fmt.Sprintf(`{"plan_digest":%q}`, digest)); code != 200 {
		t.Fatalf("approve dc2's task: %d %v", code, m)
	}
	if task, err := app2.OpenTaskForMAC(ctx, "dc2", mac2); err != nil || task.TaskID != id2 || task.Status != store.StatusApproved {
		t.Fatalf("dc2's appliance reads its task: %+v %v", task, err)
	}
	if _, err := app2.RecordProgress(ctx, store.ProgressUpdate{Region: "dc2", MAC: mac2, TaskID: id2, Progress: contract.Progress{Stage: contract.StageWriting, Percentage: 40}}); err != nil {
		t.Fatalf("dc2's progress: %v", err)
	}
	// The mirror follows over TLS: the progress, and a task written straight into dc2's
	// cluster (not through the control plane).
	direct, err := dc2.Store.CreateTask(ctx, store.NewTask{RegionID: "dc2", TargetMAC: "02:00:00:00:02:02", OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}})
	if err != nil {
		t.Fatal(err)
	}
	took = poll(t, 5*time.Second, "dc2's mirror holds the progress and the direct write", func() bool {
		a, _, ok1 := cp.Fleet().MirroredTask("dc2", id2)
		b, _, ok2 := cp.Fleet().MirroredTask("dc2", direct.TaskID)
		return ok1 && ok2 && a.Status == store.StatusInstalling && b.Status == store.StatusPending
	})
	t.Logf("dc2's mirror followed a direct write within %s", took.Round(time.Millisecond))
	ids, list := listIDs(t, base, "?region=dc2")
	if !ids[id2] || !ids[direct.TaskID] || list["stale_regions"] != nil {
		t.Fatalf("dc2's list: %v", list)
	}
	// dc3 (--region, the control plane's own credentials) and dc1 (its etcd) work too.
	code, m = createVia(t, base, "dc3", "02:00:00:00:03:01")
	if code != http.StatusCreated {
		t.Fatalf("create in dc3: %d %v", code, m)
	}
	id3 := m["task_id"].(string)
	if _, ok := dc3.Get(t, "/os/index/task/"+id3); !ok {
		t.Fatalf("task %s is not in dc3's cluster", id3)
	}
	code, m = createVia(t, base, "dc1", "02:00:00:00:01:01")
	if code != http.StatusCreated {
		t.Fatalf("create in dc1: %d %v", code, m)
	}
	id1 := m["task_id"].(string)
	cp.Stop()

	// ---- a regions file wrong for region after region, each in another TLS way
	other := tlsPKI(t) // another `certs init`: its CA signed neither etcd's pair nor ours
	expCert, expKey := expiredPair(t, dir, "root")
	bad := []struct {
		region, endpoint, cacert, cert, key string
		says                                string
	}{
		{"dc2", dc2.Endpoints[0], filepath.Join(other, "ca.crt"), ctl.Cert, ctl.Key, "which " + filepath.Join(other, "ca.crt") + " does not vouch for"},
		{"dc4", dc3.Endpoints[0], ctl.CACert, filepath.Join(other, "control.crt"), filepath.Join(other, "control.key"), "refused the client certificate"},
		{"dc5", dc3.Endpoints[0], ctl.CACert, expCert, expKey, "valid only from"},
		{"dc6", dc3.Endpoints[0], ctl.CACert, "", "", "asks for a client certificate"},
		{"dc7", "http://" + strings.TrimPrefix(dc3.Endpoints[0], "https://"), "", "", "", "speaks TLS, this client plaintext"},
	}
	var yaml strings.Builder
	yaml.WriteString("regions:\n")
	for _, b := range bad {
		fmt.Fprintf(&yaml, "  - name: %s\n    endpoints: [%s]\n", b.region, b.endpoint)
		for k, v := range map[string]string{"cacert": b.cacert, "cert": b.cert, "key": b.key} {
			if v != "" {
				fmt.Fprintf(&yaml, "    %s: %s\n", k, v)
			}
		}
	}
	dc2Before := dc2.Dump(t, "/os/")
	cp, logs := startControlArgs(t, ctx, append(homeFlags, "--regions-file="+writeRegionsFile(t, yaml.String()), "--region=dc3="+dc3.Endpoints[0])...)
	base = cp.URL()
	useToken(t, base, token)
	for _, b := range bad {
		r := regionOf(t, base, b.region)
		if r == nil || r["cluster"] != "own" || r["reachable"] != false || r["unreachable_since"] == nil {
			t.Errorf("%s (%s): %v", b.region, b.says, r)
		}
		poll(t, 5*time.Second, b.region+": a log line naming the TLS problem", func() bool {
			for _, l := range strings.Split(logs.String(), "\n") {
				if strings.Contains(l, "region="+b.region) && strings.Contains(l, b.says) {
					t.Logf("%s: %s", b.region, l)
					return true
				}
			}
			return false
		})
	}
	if r := regionOf(t, base, "dc3"); r == nil || r["reachable"] != true || r["online"] != true {
		t.Fatalf("dc3 beside the broken entries: %v", r)
	}
	if r := regionOf(t, base, "dc1"); r == nil || r["reachable"] != true || r["cluster"] != "shared" {
		t.Fatalf("dc1 beside the broken entries: %v", r)
	}
	start := time.Now()
	code, m = createVia(t, base, "dc2", "02:00:00:00:02:09")
	if msg, _ := m["message"].(string); code != http.StatusServiceUnavailable || !strings.Contains(msg, "region dc2 is unreachable since") || m["retry_after"] != 5.0 {
		t.Fatalf("create in dc2 with the wrong CA: %d %v", code, m)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("the refusal took %s", d)
	}
	storetest.AssertSame(t, dc2Before, dc2.Dump(t, "/os/"))
	for _, r := range []string{"dc1", "dc3"} {
		if code, m := createVia(t, base, r, "02:00:00:00:0"+r[2:]+":02"); code != http.StatusCreated {
			t.Fatalf("create in %s beside the broken entries: %d %v", r, code, m)
		}
	}
	ids, list = listIDs(t, base, "")
	if !ids[id1] || !ids[id3] {
		t.Fatalf("the merged list beside the broken entries lacks dc1's or dc3's task: %v", list)
	}
	t.Logf("merged list with unreachable regions: stale_regions %v", list["stale_regions"])
}

// useToken has the request helpers use token on the control plane at base (a second
// control plane on the same etcd: the admin exists already).
func useToken(t *testing.T, base, token string) {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	bearers.Store(u.Host, token)
	t.Cleanup(func() { bearers.Delete(u.Host) })
}
