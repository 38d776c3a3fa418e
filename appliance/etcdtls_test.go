package appliance_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/internal/syncbuf"

	"lpmos.dev/lpmos/appliance"
	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/control"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

// The seed flow with etcd spoken over TLS only: the appliance's embedded etcd serves
// https with client-certificate auth (the --etcd-cert-file flags) and etcd's auth on,
// the appliance dials it as region-dc1 and the control plane as root (their
// certificates' CNs, from lpmos-control certs), and a task is created, reported,
// approved and installed through the APIs. A client without the CA is refused at
// start, naming the flag.
func TestSeedFlowOverTLS(t *testing.T) {
	pkiDir := t.TempDir()
	for _, args := range [][]string{{"certs", "init", "--dir", pkiDir}, {"certs", "add-region", "dc1", "--dir", pkiDir}} {
		if err := control.Main(context.Background(), args, control.Env{Stdout: io.Discard, Stderr: io.Discard, Getenv: func(string) string { return "" }}); err != nil {
			t.Fatal(err)
		}
	}
	f := func(name string) string { return filepath.Join(pkiDir, name) }
	noEnv := func(string) string { return "" }
	etcdURL := "https://127.0.0.1:" + strconv.Itoa(freePort(t))
	imagesDir := t.TempDir()
	image := addImage(t, imagesDir, "ubuntu", "22.04")
	cfg, err := appliance.ParseConfig([]string{
		"--label=dc1", "--api-host=127.0.0.1", "--api-port=0", "--images-dir=" + imagesDir, "--heartbeat-ttl=5s", "--retry-after=2",
		"--dhcp-mode=off", "--tftp-addr=", "--log-level=info",
		"--etcd-data-dir=" + filepath.Join(t.TempDir(), "dc1.etcd"),
		"--etcd-listen-client-urls=" + etcdURL, "--etcd-listen-peer-urls=http://127.0.0.1:" + strconv.Itoa(freePort(t)),
		"--etcd-cert-file=" + f("etcd-server.crt"), "--etcd-key-file=" + f("etcd-server.key"),
		"--etcd-trusted-ca-file=" + f("ca.crt"), "--etcd-client-cert-auth",
		"--etcd-cert=" + f("region-dc1.crt"), "--etcd-key=" + f("region-dc1.key"),
	}, func(k string) string { return map[string]string{"ETCD_CACERT": f("ca.crt")}[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	logs := &syncbuf.Buffer{}
	a, err := appliance.Start(ctx, cfg, logs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Stop() })
	root := store.DialConfig{Endpoints: []string{etcdURL}, Credentials: store.Credentials{CACert: f("ca.crt"), Cert: f("control.crt"), Key: f("control.key")}}
	storetest.EnableAuth(t, root, "region-dc1")

	ccfg, err := control.ParseConfig([]string{"--host=127.0.0.1", "--port=0", "--etcd-endpoints=" + etcdURL,
		"--etcd-cacert=" + f("ca.crt"), "--etcd-cert=" + f("control.crt"), "--etcd-key=" + f("control.key")}, noEnv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	c, err := control.Start(ctx, ccfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop() })
	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	defer scancel()
	st, err := store.Open(sctx, root)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.AddUser(sctx, "admin", store.RoleAdmin, "correct horse battery"); err != nil {
		t.Fatal(err)
	}
	_, tok, err := st.CreateToken(sctx, "admin", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	controlTokens.Store(c.URL(), tok)

	id := createTask(t, c.URL(), "00:1a:2b:3c:4d:71")
	target := filepath.Join(t.TempDir(), "disk.img")
	m := newFileDisks(t, "00:1a:2b:3c:4d:71", contract.Disk{Name: "vda", SizeBytes: 1 << 30, Serial: "T1"})
	acfg := m.agentConfig(a.URL())
	acfg.Target = target
	agentErr := runAgent(acfg)
	waitTaskStatus(t, c.URL(), id, "pending_approval", 30*time.Second)
	approve(t, c.URL(), id)
	if err := waitAgent(t, agentErr, 60*time.Second); err != nil {
		t.Fatalf("agent: %v", err)
	}
	waitTaskStatus(t, c.URL(), id, "completed", 10*time.Second)
	if got, _ := os.ReadFile(target); !bytes.Equal(got, image) {
		t.Fatalf("target holds %d bytes, want the %d-byte image", len(got), len(image))
	}
	if !strings.Contains(logs.String(), "[dc1] Found matching task "+id) {
		t.Errorf("appliance log lacks the match:\n%s", logs.String())
	}

	// A second appliance without the CA: refused at start, within seconds, naming it.
	start := time.Now()
	_, err = appliance.Start(ctx, appliance.Config{Label: "dc2", APIHost: "127.0.0.1", EtcdEndpoints: []string{strings.TrimPrefix(etcdURL, "https://")},
		HeartbeatTTL: 5 * time.Second, RetryAfter: 2, ImagesDir: imagesDir}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--etcd-cacert") || time.Since(start) > 5*time.Second {
		t.Fatalf("plaintext appliance against a TLS etcd: %v after %s", err, time.Since(start))
	}
}

// waitTaskStatus polls the control plane's task until it has status want.
func waitTaskStatus(t *testing.T, controlURL, id, want string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		code, body := call(t, "GET", controlURL+"/api/v1/tasks/"+id, nil)
		if code == http.StatusOK && body["status"] == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s: status %v after %s, want %s", id, body["status"], within, want)
		}
		<-tick.C
	}
}
