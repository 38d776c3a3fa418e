package control_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/control"
	"lpmos.dev/lpmos/store/etcdserver"
)

func runCerts(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	err := control.Main(context.Background(), append([]string{"certs"}, args...), control.Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }})
	return out.String(), err
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// certs init and add-region write a chain that verifies, with the names etcd's RBAC
// reads (CN root, region-NAME), keys 0600, and never replace a file without --force.
func TestCertsInitAndAddRegion(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	if _, err := runCerts(t, "add-region", "dc2", "--dir", dir); err == nil || !strings.Contains(err.Error(), "certs init") {
		t.Fatalf("add-region before init: %v", err)
	}
	if _, err := runCerts(t, "init", "--dir", dir, "--hosts", "127.0.0.1,localhost,etcd1.example.net,10.0.0.5"); err != nil {
		t.Fatal(err)
	}
	if _, err := runCerts(t, "add-region", "--dir", dir, "dc2"); err != nil {
		t.Fatal(err)
	}
	if _, err := runCerts(t, "add-region", "DC_2", "--dir", dir); err == nil {
		t.Fatal("add-region accepted a region name that is not [a-z0-9-]+")
	}
	for _, n := range []string{"ca", "etcd-server", "control", "region-dc2"} {
		for ext, mode := range map[string]os.FileMode{".crt": 0o644, ".key": 0o600} {
			fi, err := os.Stat(filepath.Join(dir, n+ext))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != mode {
				t.Errorf("%s%s: mode %v, want %v", n, ext, fi.Mode().Perm(), mode)
			}
		}
	}
	roots := x509.NewCertPool()
	ca := readCert(t, filepath.Join(dir, "ca.crt"))
	roots.AddCert(ca)
	if !ca.IsCA {
		t.Fatal("ca.crt is not a CA")
	}
	server := readCert(t, filepath.Join(dir, "etcd-server.crt"))
	for _, host := range []string{"127.0.0.1", "localhost", "etcd1.example.net", "10.0.0.5"} {
		if _, err := server.Verify(x509.VerifyOptions{Roots: roots, DNSName: host, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("etcd-server.crt for %s: %v", host, err)
		}
	}
	if _, err := server.Verify(x509.VerifyOptions{Roots: roots, DNSName: "other.example.net"}); err == nil {
		t.Error("etcd-server.crt verifies for a host not in --hosts")
	}
	// Peers dial each other: the server pair is a client certificate too.
	if _, err := server.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("etcd-server.crt as a peer's client certificate: %v", err)
	}
	for file, cn := range map[string]string{"control.crt": "root", "region-dc2.crt": "region-dc2"} {
		c := readCert(t, filepath.Join(dir, file))
		if c.Subject.CommonName != cn {
			t.Errorf("%s: CN %q, want %q", file, c.Subject.CommonName, cn)
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("%s: %v", file, err)
		}
		if c.NotAfter.After(ca.NotAfter) || time.Until(c.NotAfter) < 365*24*time.Hour {
			t.Errorf("%s: valid until %s (CA until %s)", file, c.NotAfter, ca.NotAfter)
		}
	}

	// No silent replacement: a new CA would orphan every certificate of the old one.
	before, _ := os.ReadFile(filepath.Join(dir, "ca.key"))
	if _, err := runCerts(t, "init", "--dir", dir); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("init over an existing CA: %v", err)
	}
	if _, err := runCerts(t, "add-region", "dc2", "--dir", dir); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("add-region over existing files: %v", err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, "ca.key")); !bytes.Equal(before, after) {
		t.Fatal("ca.key changed without --force")
	}
	if _, err := runCerts(t, "init", "--dir", dir, "--force"); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, "ca.key")); bytes.Equal(before, after) {
		t.Fatal("init --force kept the old CA")
	}
}

// The files of certs init run etcd with TLS and client-certificate auth, and the
// administration commands dial it with the control plane's and a region's pair.
func TestCertsServeEtcd(t *testing.T) {
	dir := t.TempDir()
	if _, err := runCerts(t, "init", "--dir", dir); err != nil {
		t.Fatal(err)
	}
	if _, err := runCerts(t, "add-region", "dc1", "--dir", dir); err != nil {
		t.Fatal(err)
	}
	f := func(name string) string { return filepath.Join(dir, name) }
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv, err := etcdserver.Start(ctx, etcdserver.Config{DataDir: t.TempDir(), ListenClientURLs: "https://127.0.0.1:0", ListenPeerURLs: "http://127.0.0.1:0", Quiet: true,
		TLS: etcdserver.TLS{CertFile: f("etcd-server.crt"), KeyFile: f("etcd-server.key"), TrustedCAFile: f("ca.crt"), ClientCertAuth: true}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ep := srv.Endpoints()[0]
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(ep, "https://"))
	for _, c := range []struct{ endpoint, pair string }{
		{ep, "control"}, {"localhost:" + port, "region-dc1"}, // the SAN localhost, TLS from the CA flag
	} {
		var out, errb bytes.Buffer
		env := control.Env{Stdout: &out, Stderr: &errb, Getenv: func(k string) string { return map[string]string{"ETCD_CACERT": f("ca.crt")}[k] }}
		err := control.Main(ctx, []string{"users", "list", "--etcd-endpoints=" + c.endpoint, "--etcd-cert=" + f(c.pair+".crt"), "--etcd-key=" + f(c.pair+".key")}, env)
		if err != nil || !strings.Contains(out.String(), "NAME") {
			t.Fatalf("users list over TLS as %s: %v %q", c.pair, err, out.String())
		}
	}
}
