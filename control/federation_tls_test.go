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

// homeFlags are the control plane's flags for its own etcd e, dialled with dir's
// control.crt.
func homeFlags(e *storetest.Etcd, dir string) []string {
	c := pkiCreds(dir, "control")
	return []string{"--etcd-endpoints=" + e.Endpoints[0], "--etcd-cacert=" + c.CACert, "--etcd-cert=" + c.Cert, "--etcd-key=" + c.Key}
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
	homeArgs := homeFlags(home, dir)
	file := writeRegionsFile(t, fmt.Sprintf(`regions:
  - name: dc2
    endpoints: [%s]
    cacert: %s
    cert: %s
    key: %s
`, dc2.Endpoints[0], ctl.CACert, ctl.Cert, ctl.Key))
	cp, _ := startControlArgs(t, ctx, append(homeArgs, "--regions-file="+file, "--region=dc3="+dc3.Endpoints[0])...)
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
	cp, logs := startControlArgs(t, ctx, append(homeArgs, "--regions-file="+writeRegionsFile(t, yaml.String()), "--region=dc3="+dc3.Endpoints[0])...)
	base = cp.URL()
	useToken(t, base, token)
	for _, b := range bad {
		r := regionOf(t, base, b.region)
		if r == nil || r["cluster"] != "own" || r["reachable"] != false || r["unreachable_since"] == nil {
			t.Errorf("%s (%s): %v", b.region, b.says, r)
		}
		poll(t, 5*time.Second, b.region+": a log line naming the TLS problem", func() bool {
			for _, l := range strings.Split(logs.String(), "\n") {
				if strings.Contains(l, "region="+b.region) && strings.Contains(l, b.says) && strings.Contains(l, "the --regions-file entry or --region flag of "+b.region) {
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
	if msg, _ := m["message"].(string); code != http.StatusServiceUnavailable || !strings.Contains(msg, "region dc2 is unreachable since") ||
		!strings.Contains(msg, "refuses the control plane") || !strings.Contains(msg, bad[0].says) || m["retry_after"] != 5.0 {
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
	// The pages too: never a 500 for a region whose cluster was never reached.
	for path, marks := range map[string][]string{
		"/":                 {"unreachable since "},
		"/regions/dc2":      {"unreachable since ", `id="region-unreachable"`},
		"/regions/dc3":      nil,
		"/tasks":            {`id="stale-regions"`},
		"/tasks?region=dc2": {`id="stale-regions"`},
		"/tasks/" + id1:     nil,
		"/unmatched":        nil,
		"/audit":            {`id="audit-unreachable"`},
		"/tasks/create":     nil,
	} {
		code, body := get(t, base+path)
		if code != 200 {
			t.Fatalf("GET %s beside the broken entries: %d\n%.400s", path, code, body)
		}
		for _, m := range marks {
			if !strings.Contains(body, m) {
				t.Fatalf("GET %s beside the broken entries does not show %q", path, m)
			}
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

// regions add NAME --etcd https://... with the --region-etcd-* TLS flags: each TLS
// mistake is refused before anything is written (in the control plane's etcd or the
// region's), naming its cause; then the registration (relative paths made absolute,
// --role creating region-dc2 in dc2's etcd whose auth is on) is followed by a running
// control plane, and dc2's appliance works with its own certificate.
func TestRegionsAddTLS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// The control plane's etcd on TLS too, with a CA of its own: giving the region its
	// CA and certificate is the mistake to catch.
	dir, other := tlsPKI(t, "dc2"), tlsPKI(t)
	home, dc2 := tlsCluster(t, other), tlsCluster(t, dir)
	if out, err := runCLIOn(t, dc2, pkiCreds(dir, "control"), "regions", "enable-auth"); err != nil {
		t.Fatalf("enable-auth in dc2's etcd: %v\n%s", err, out)
	}
	cp, _ := startControlArgs(t, ctx, homeFlags(home, other)...)
	base := cp.URL()
	withAdmin(t, home.Store, base)
	ctl := pkiCreds(dir, "control")
	expCert, expKey := expiredPair(t, dir, "root")
	ep := dc2.Endpoints[0]
	add := func(cacert, cert, key string, more ...string) []string {
		args := []string{"regions", "add", "dc2", "--etcd", ep, "--dial-timeout", "5s"}
		for f, v := range map[string]string{"--region-etcd-cacert": cacert, "--region-etcd-cert": cert, "--region-etcd-key": key} {
			if v != "" {
				args = append(args, f, v)
			}
		}
		return append(args, more...)
	}
	refusals := []struct {
		args []string
		says string
	}{
		{add(filepath.Join(other, "ca.crt"), ctl.Cert, ctl.Key), "does not vouch for"},
		{add(ctl.CACert, filepath.Join(other, "control.crt"), filepath.Join(other, "control.key")), "refused the client certificate"},
		{add(ctl.CACert, expCert, expKey), "valid only from"},
		{add(ctl.CACert, "", ""), "asks for a client certificate"},
		{add(ctl.CACert, ctl.Cert, ""), "cert and key go together"},
		{add(ctl.CACert+".missing", ctl.Cert, ctl.Key), "no such file"},
		{append(add("", "", ""), "--role"), "speaks TLS, this client plaintext"},
	}
	refusals[len(refusals)-1].args[4] = "http://" + strings.TrimPrefix(ep, "https://")
	refuse := func(args []string, says string) {
		t.Helper()
		homeBefore, dc2Before := home.Dump(t, "/"), dc2.Dump(t, "/")
		start := time.Now()
		_, err := runCLIOn(t, home, pkiCreds(other, "control"), args...)
		if err == nil || !strings.Contains(err.Error(), says) {
			t.Fatalf("%v: want an error saying %q, got %v", args, says, err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("%v: refused after %s", args, d)
		}
		storetest.AssertSame(t, homeBefore, home.Dump(t, "/"))
		storetest.AssertSame(t, dc2Before, dc2.Dump(t, "/"))
		t.Logf("refused in %s: %v", time.Since(start).Round(time.Millisecond), err)
	}
	for _, r := range refusals {
		refuse(r.args, r.says)
	}

	// Relative paths are the operator's working directory's: stored absolute, as the
	// control plane reads them from its own.
	t.Chdir(dir)
	out, err := runCLIOn(t, home, pkiCreds(other, "control"), "regions", "add", "dc2", "--etcd", ep,
		"--region-etcd-cacert", "ca.crt", "--region-etcd-cert", "control.crt", "--region-etcd-key", "control.key", "--role")
	if err != nil || !strings.Contains(out, "registered its own etcd "+ep) || !strings.Contains(out, "etcd user and role region-dc2 in region dc2's etcd") {
		t.Fatalf("regions add dc2 over TLS: %q %v", out, err)
	}
	t.Logf("regions add:\n%s", out)
	cs, _, _, err := home.Store.RegionClusters(ctx)
	if want := (store.RegionCluster{Region: "dc2", Endpoints: []string{ep}, CACert: ctl.CACert, Cert: ctl.Cert, Key: ctl.Key}); err != nil || len(cs) != 1 || fmt.Sprint(cs[0]) != fmt.Sprint(want) {
		t.Fatalf("registration %+v %v, want %+v", cs, err, want)
	}
	took := poll(t, 10*time.Second, "the running control plane reaches dc2 over TLS", func() bool {
		r := regionOf(t, base, "dc2")
		return r != nil && r["cluster"] == "own" && r["reachable"] == true
	})
	t.Logf("registration followed: dc2 reachable %s after regions add returned", took.Round(time.Millisecond))
	app := openAs(t, ctx, dc2, dir, "region-dc2") // the role --role made, in force (auth is on)
	heartbeatOn(t, app, "dc2")
	poll(t, 5*time.Second, "dc2 online", func() bool { return regionOf(t, base, "dc2")["online"] == true })
	if _, err := app.ListUsers(ctx); !store.PermissionDenied(err) {
		t.Fatalf("region-dc2 reading users in its etcd: want permission denied, got %v", err)
	}
	const mac = "02:00:00:00:02:01"
	code, m := createVia(t, base, "dc2", mac)
	if code != http.StatusCreated {
		t.Fatalf("create in dc2: %d %v", code, m)
	}
	if task, err := app.OpenTaskForMAC(ctx, "dc2", mac); err != nil || task.TaskID != m["task_id"] {
		t.Fatalf("dc2's appliance finds the task the control plane created: %+v %v", task, err)
	}
	if len(home.Dump(t, "/os/install/task/dc2/")) != 0 {
		t.Fatal("dc2's task is in the control plane's etcd")
	}
	// Registered with the wrong CA again: refused, the registration that works stays.
	refuse(add(filepath.Join(other, "ca.crt"), ctl.Cert, ctl.Key), "does not vouch for")
	if r := regionOf(t, base, "dc2"); r["reachable"] != true {
		t.Fatalf("dc2 after a refused re-registration: %v", r)
	}
	// remove dials dc2 with the registration's TLS files to count its open tasks.
	refuse([]string{"regions", "remove", "dc2"}, "1 open task(s)")
}

// regions migrate copy|verify|register|finish of dc1 from the control plane's etcd into
// its own TLS cluster with client certificates and etcd's auth on (region role
// region-dc1 there): the TLS target recorded by copy is what verify, register and
// finish dial; a running control plane then serves dc1 from it, and dc1's appliance
// works there with its own certificate.
func TestRegionsMigrateTLS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir, other := tlsPKI(t, "dc1"), tlsPKI(t) // the target's CA, the control plane's etcd's
	home, target := tlsCluster(t, other), tlsCluster(t, dir)
	regionAuth(t, target, dir, "dc1")
	ubuntu := contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}
	macs := []string{"52:54:00:00:01:01", "52:54:00:00:01:02"}
	var ids []string
	for _, mac := range macs {
		task, err := home.Store.CreateTask(ctx, store.NewTask{RegionID: "dc1", TargetMAC: mac, OSRef: ubuntu})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, task.TaskID)
	}
	if _, err := home.Store.Report(ctx, "dc1", macs[0], []byte(testHardware)); err != nil {
		t.Fatal(err)
	}
	cp, _ := startControlArgs(t, ctx, homeFlags(home, other)...)
	base := cp.URL()
	withAdmin(t, home.Store, base)
	ctl := pkiCreds(dir, "control")
	ep := target.Endpoints[0]
	tlsFlags := []string{"--region-etcd-cacert", ctl.CACert, "--region-etcd-cert", ctl.Cert, "--region-etcd-key", ctl.Key}
	run := func(want string, args ...string) string {
		t.Helper()
		start := time.Now()
		out, err := runCLIOn(t, home, pkiCreds(other, "control"), args...)
		if err != nil || !strings.Contains(out, want) {
			t.Fatalf("%v: want %q in\n%s\nerr %v", args, want, out, err)
		}
		t.Logf("%s (%s):\n%s", strings.Join(args[:min(3, len(args))], " "), time.Since(start).Round(time.Millisecond), out)
		return out
	}

	homeBefore := home.Dump(t, "/")
	_, err := runCLIOn(t, home, pkiCreds(other, "control"), "regions", "migrate", "copy", "dc1", "--to", ep, "--dial-timeout", "5s",
		"--region-etcd-cacert", filepath.Join(other, "ca.crt"), "--region-etcd-cert", ctl.Cert, "--region-etcd-key", ctl.Key)
	if err == nil || !strings.Contains(err.Error(), "does not vouch for") {
		t.Fatalf("copy to a target of another CA: %v", err)
	}
	storetest.AssertSame(t, homeBefore, home.Dump(t, "/"))
	if d := target.Dump(t, "/os/"); len(d) != 0 {
		t.Fatalf("a refused copy wrote the target: %v", d)
	}

	run("copied ", append([]string{"regions", "migrate", "copy", "dc1", "--to", ep}, tlsFlags...)...)
	run("verified", "regions", "migrate", "verify", "dc1")
	run("registered "+ep, "regions", "migrate", "register", "dc1")
	poll(t, 10*time.Second, "the control plane serves dc1 from its TLS cluster", func() bool {
		r := regionOf(t, base, "dc1")
		return r != nil && r["cluster"] == "own" && r["reachable"] == true
	})
	app := openAs(t, ctx, target, dir, "region-dc1")
	heartbeatOn(t, app, "dc1")
	if res, err := app.Report(ctx, "dc1", macs[1], []byte(testHardware)); err != nil || !res.Matched || res.Task.TaskID != ids[1] {
		t.Fatalf("dc1's appliance reports on its own etcd: %+v %v", res, err)
	}
	run("deleted ", "regions", "migrate", "finish", "dc1")
	for k := range home.Dump(t, "/os/") {
		if strings.Contains(k, "/dc1/") {
			t.Fatalf("left in the control plane's etcd: %s", k)
		}
	}
	for _, id := range ids {
		if _, ok := home.Get(t, "/os/index/task/"+id); ok {
			t.Fatalf("task index of %s left in the control plane's etcd", id)
		}
		if _, ok := target.Get(t, "/os/index/task/"+id); !ok {
			t.Fatalf("task index of %s not in dc1's own etcd", id)
		}
	}
	poll(t, 5*time.Second, "both of dc1's tasks pending approval, from its TLS cluster", func() bool {
		ids2, list := listIDs(t, base, "?region=dc1&status=pending_approval")
		return ids2[ids[0]] && ids2[ids[1]] && list["stale_regions"] == nil
	})
	code, m := createVia(t, base, "dc1", "52:54:00:00:01:03")
	if code != http.StatusCreated {
		t.Fatalf("create in dc1 after the migration: %d %v", code, m)
	}
	if task, err := app.OpenTaskForMAC(ctx, "dc1", "52:54:00:00:01:03"); err != nil || task.TaskID != m["task_id"] {
		t.Fatalf("dc1's appliance finds the new task in its etcd: %+v %v", task, err)
	}
	run("dc1          own     "+ep, "regions", "list")
}
