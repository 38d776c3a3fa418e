package main

import (
	"bufio"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

// The real lpmos-etcd with etcd's TLS flags, as an operator types them, serves the
// store to a client with the CA and a client certificate, and refuses a plaintext one.
func TestTLSFlagsOnTheRealBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds lpmos-etcd")
	}
	bin := filepath.Join(t.TempDir(), "lpmos-etcd")
	if b, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	p := storetest.NewPKI(t)
	tc := p.ServerTLS()
	cmd := exec.Command(bin, "--data-dir="+t.TempDir(), "--listen-client-urls=https://127.0.0.1:0", "--listen-peer-urls=https://127.0.0.1:0",
		"--cert-file="+tc.CertFile, "--key-file="+tc.KeyFile, "--trusted-ca-file="+tc.TrustedCAFile, "--client-cert-auth",
		"--peer-cert-file="+tc.CertFile, "--peer-key-file="+tc.KeyFile, "--peer-trusted-ca-file="+tc.TrustedCAFile, "--peer-client-cert-auth")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	// "lpmos-etcd: serving clients on [https://127.0.0.1:PORT] ...": the real port.
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if _, rest, ok := strings.Cut(sc.Text(), "serving clients on ["); ok {
				ep, _, _ := strings.Cut(rest, "]")
				found <- ep
			}
		}
	}()
	var ep string
	select {
	case ep = <-found:
	case <-time.After(60 * time.Second):
		t.Fatal("lpmos-etcd did not report serving within 60s")
	}
	if !strings.HasPrefix(ep, "https://127.0.0.1:") {
		t.Fatalf("serving on %q, want https://", ep)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := store.Open(ctx, store.DialConfig{Endpoints: []string{ep}, Credentials: p.Client(t, "root")})
	if err != nil {
		t.Fatalf("open over TLS: %v", err)
	}
	defer st.Close()
	if _, err := st.AddUser(ctx, "alice", store.RoleViewer, "correct horse battery"); err != nil {
		t.Fatal(err)
	}
	if users, err := st.ListUsers(ctx); err != nil || len(users) != 1 || users[0].Name != "alice" {
		t.Fatalf("users over TLS: %v %v", users, err)
	}
	start := time.Now()
	if _, err := store.Open(ctx, store.DialConfig{Endpoints: []string{strings.TrimPrefix(ep, "https://")}}); err == nil || !strings.Contains(err.Error(), "--etcd-cacert") || time.Since(start) > 5*time.Second {
		t.Fatalf("plaintext client: %v after %s", err, time.Since(start))
	}
}
