package etcdserver_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/internal/pki"
	"lpmos.dev/lpmos/store/etcdserver"
	"lpmos.dev/lpmos/store/storetest"
)

// The TLS flags are etcd's own names on lpmos-etcd, and the same behind --etcd- on the
// appliance.
func TestTLSFlagNames(t *testing.T) {
	names := []string{"cert-file", "key-file", "trusted-ca-file", "client-cert-auth",
		"peer-cert-file", "peer-key-file", "peer-trusted-ca-file", "peer-client-cert-auth"}
	for _, prefix := range []string{"", "etcd-"} {
		var tc etcdserver.TLS
		fs := flag.NewFlagSet("x", flag.ContinueOnError)
		tc.AddFlags(fs, prefix)
		for _, n := range names {
			if fs.Lookup(prefix+n) == nil {
				t.Errorf("no --%s%s", prefix, n)
			}
		}
		args := []string{"--" + prefix + "cert-file=c", "--" + prefix + "key-file=k", "--" + prefix + "trusted-ca-file=ca", "--" + prefix + "client-cert-auth",
			"--" + prefix + "peer-cert-file=pc", "--" + prefix + "peer-key-file=pk", "--" + prefix + "peer-trusted-ca-file=pca", "--" + prefix + "peer-client-cert-auth"}
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		if tc.CertFile != "c" || tc.KeyFile != "k" || tc.TrustedCAFile != "ca" || !tc.ClientCertAuth ||
			tc.PeerCertFile != "pc" || tc.PeerKeyFile != "pk" || tc.PeerTrustedCAFile != "pca" || !tc.PeerClientCertAuth {
			t.Errorf("prefix %q: parsed %+v", prefix, tc)
		}
	}
}

// A TLS configuration that cannot work is refused before etcd starts, naming the flag
// as the binary spells it. etcd itself would serve plaintext beside a certificate with
// only a warning.
func TestTLSConfigRefusals(t *testing.T) {
	p := storetest.NewPKI(t)
	good := p.ServerTLS()
	for _, c := range []struct {
		name    string
		prefix  string
		args    func(tc etcdserver.TLS) []string
		clients string
		peers   string
		want    []string
	}{
		{"certificate beside http://", "", func(tc etcdserver.TLS) []string {
			return []string{"--cert-file=" + tc.CertFile, "--key-file=" + tc.KeyFile}
		}, "http://127.0.0.1:0", "", []string{"--listen-client-urls", "is plaintext but --cert-file is given"}},
		{"appliance spelling", "etcd-", func(tc etcdserver.TLS) []string {
			return []string{"--etcd-cert-file=" + tc.CertFile, "--etcd-key-file=" + tc.KeyFile}
		}, "http://127.0.0.1:0", "", []string{"--etcd-listen-client-urls", "--etcd-cert-file"}},
		{"https:// without certificate", "", func(etcdserver.TLS) []string { return nil },
			"https://127.0.0.1:0", "", []string{"--listen-client-urls", "needs --cert-file and --key-file"}},
		{"client-cert-auth without CA", "", func(tc etcdserver.TLS) []string {
			return []string{"--cert-file=" + tc.CertFile, "--key-file=" + tc.KeyFile, "--client-cert-auth"}
		}, "https://127.0.0.1:0", "", []string{"--client-cert-auth needs --trusted-ca-file"}},
		{"certificate without key", "", func(tc etcdserver.TLS) []string { return []string{"--cert-file=" + tc.CertFile} },
			"https://127.0.0.1:0", "", []string{"--cert-file and --key-file go together"}},
		{"missing file", "", func(tc etcdserver.TLS) []string {
			return []string{"--cert-file=" + tc.CertFile, "--key-file=" + tc.KeyFile + ".missing"}
		}, "https://127.0.0.1:0", "", []string{"--key-file", "no such file"}},
		{"peer certificate beside http://", "", func(tc etcdserver.TLS) []string {
			return []string{"--peer-cert-file=" + tc.CertFile, "--peer-key-file=" + tc.KeyFile}
		}, "http://127.0.0.1:0", "http://127.0.0.1:0", []string{"--listen-peer-urls", "--peer-cert-file"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var tc etcdserver.TLS
			fs := flag.NewFlagSet("x", flag.ContinueOnError)
			tc.AddFlags(fs, c.prefix)
			if err := fs.Parse(c.args(good)); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			dir := t.TempDir()
			srv, err := etcdserver.Start(ctx, etcdserver.Config{DataDir: dir, ListenClientURLs: c.clients, ListenPeerURLs: c.peers, Quiet: true, TLS: tc})
			if err == nil {
				srv.Close()
				t.Fatal("etcd started")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
		})
	}
}

// etcd itself refuses a client certificate that expired or comes from another CA (the
// store refuses an expired one before dialling; this is the server's half).
func TestServerRefusesBadClientCertificates(t *testing.T) {
	e := storetest.StartTLS(t)
	other := storetest.NewPKI(t)
	now := time.Now()
	expCert, expKey := e.PKI.Issue(t, "expired", pki.Request{CommonName: "root", Kind: pki.Client, NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)})
	foreign := other.Client(t, "root")
	good := e.PKI.Client(t, "good")
	addr := strings.TrimPrefix(e.Endpoints[0], "https://")
	for _, c := range []struct {
		name, cert, key, want string
	}{
		{"expired", expCert, expKey, "expired certificate"},
		{"another CA", foreign.Cert, foreign.Key, "unknown certificate authority"},
		{"none", "", "", "certificate required"},
		{"good", good.Cert, good.Key, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := handshake(t, addr, e.PKI.CACert(), c.cert, c.key)
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("a good certificate: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("want refusal %q, got %v", c.want, err)
			}
		})
	}
}

// Peer TLS: the peer URL serves TLS and, with --peer-client-cert-auth, wants a peer
// certificate of the peer CA (etcd-server.crt is one: it is also a client certificate).
func TestPeerTLS(t *testing.T) {
	p := storetest.NewPKI(t)
	tc := p.ServerTLS()
	tc.PeerCertFile, tc.PeerKeyFile, tc.PeerTrustedCAFile, tc.PeerClientCertAuth = tc.CertFile, tc.KeyFile, tc.TrustedCAFile, true
	peer := "127.0.0.1:" + strconv.Itoa(freePort(t))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv, err := etcdserver.Start(ctx, etcdserver.Config{DataDir: t.TempDir(), ListenClientURLs: "https://127.0.0.1:0", ListenPeerURLs: "https://" + peer, Quiet: true, TLS: tc})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if err := handshake(t, peer, p.CACert(), "", ""); err == nil || !strings.Contains(err.Error(), "certificate required") {
		t.Fatalf("a peer without certificate: %v", err)
	}
	if err := handshake(t, peer, p.CACert(), tc.PeerCertFile, tc.PeerKeyFile); err != nil {
		t.Fatalf("a peer with the peer certificate: %v", err)
	}
}

// handshake dials addr over TLS with the given client pair and reads etcd's answer to
// GET /health: TLS 1.3 reports a refused client certificate on that first read.
func handshake(t *testing.T, addr, caFile, cert, key string) error {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{RootCAs: x509.NewCertPool()}
	cfg.RootCAs.AppendCertsFromPEM(pem)
	if cert != "" {
		kp, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{kp}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := (&tls.Dialer{Config: cfg}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); err != nil {
		return err
	}
	buf := make([]byte, 16)
	if _, err := io.ReadAtLeast(conn, buf, 12); err != nil {
		return err
	}
	if !strings.HasPrefix(string(buf), "HTTP/1.1 ") {
		return fmt.Errorf("not an HTTP answer: %q", buf)
	}
	return nil
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
