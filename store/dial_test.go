package store_test

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/internal/pki"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/etcdserver"
	"lpmos.dev/lpmos/store/storetest"
)

// refusalDeadline: a misconfigured TLS dial must say so within seconds, not hang until
// the ping's deadline.
const refusalDeadline = 5 * time.Second

func openWithin(t *testing.T, d store.DialConfig) (*store.Store, error, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	st, err := store.Open(ctx, d)
	if st != nil {
		t.Cleanup(func() { st.Close() })
	}
	return st, err, time.Since(start)
}

func stripScheme(eps []string) []string {
	var out []string
	for _, ep := range eps {
		_, addr, _ := strings.Cut(ep, "://")
		out = append(out, addr)
	}
	return out
}

func TestOpenOverTLSWithClientCertificate(t *testing.T) {
	e := storetest.StartTLS(t)
	if !strings.HasPrefix(e.Endpoints[0], "https://") {
		t.Fatalf("endpoints of a TLS etcd: %v", e.Endpoints)
	}
	ctx := context.Background()
	creds := e.PKI.Client(t, "control")
	for i, eps := range [][]string{e.Endpoints, stripScheme(e.Endpoints)} { // https://, and host:port with a CA
		st, err, took := openWithin(t, store.DialConfig{Endpoints: eps, Credentials: creds})
		if err != nil {
			t.Fatalf("open %v over TLS: %v (after %s)", eps, err, took)
		}
		name := fmt.Sprintf("viewer%d", i)
		if _, err := st.AddUser(ctx, name, store.RoleViewer, "correct horse battery"); err != nil {
			t.Fatal(err)
		}
		if users, err := e.Store.ListUsers(ctx); err != nil || len(users) != i+1 {
			t.Fatalf("the users written over TLS are not in etcd: %v %v", users, err)
		}
	}
}

// Every way a TLS dial goes wrong ends within seconds with the flag to change.
func TestOpenRefusalsNameTheFlag(t *testing.T) {
	e := storetest.StartTLS(t)
	other := storetest.NewPKI(t) // another CA, as another site's
	plain := storetest.Start(t)
	foreign := other.Client(t, "root")
	foreign.CACert = e.PKI.CACert()
	wrongCA := e.PKI.Client(t, "root2")
	wrongCA.CACert = other.CACert()
	now := time.Now()
	expCert, expKey := e.PKI.Issue(t, "expired", pki.Request{CommonName: "root", Kind: pki.Client, NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-24 * time.Hour)})
	for _, c := range []struct {
		name string
		d    store.DialConfig
		want []string
	}{
		{"plaintext client, TLS etcd", store.DialConfig{Endpoints: stripScheme(e.Endpoints)},
			[]string{"--etcd-cacert", "speaks TLS"}},
		{"no client certificate", store.DialConfig{Endpoints: e.Endpoints, Credentials: store.Credentials{CACert: e.PKI.CACert()}},
			[]string{"--etcd-cert", "asks for a client certificate"}},
		{"client certificate from another CA", store.DialConfig{Endpoints: e.Endpoints, Credentials: foreign},
			[]string{"--etcd-cert " + foreign.Cert, "refused the client certificate"}},
		{"server certificate from another CA", store.DialConfig{Endpoints: e.Endpoints, Credentials: wrongCA},
			[]string{"--etcd-cacert", `issued by "test CA"`, other.CACert()}},
		{"no CA: the system's roots", store.DialConfig{Endpoints: e.Endpoints},
			[]string{"--etcd-cacert", "system's CAs"}},
		{"expired client certificate", store.DialConfig{Endpoints: e.Endpoints, Credentials: store.Credentials{CACert: e.PKI.CACert(), Cert: expCert, Key: expKey}},
			[]string{"--etcd-cert " + expCert, "not now"}},
		{"TLS client, plaintext etcd", store.DialConfig{Endpoints: plain.Endpoints, Credentials: store.Credentials{CACert: e.PKI.CACert()}},
			[]string{"--etcd-cacert/--etcd-cert", "does not speak TLS"}},
		{"https:// to a plaintext etcd", store.DialConfig{Endpoints: []string{"https://" + plain.Endpoints[0]}},
			[]string{"does not speak TLS"}},
		{"http:// with a CA", store.DialConfig{Endpoints: []string{"http://" + plain.Endpoints[0]}, Credentials: store.Credentials{CACert: e.PKI.CACert()}},
			[]string{"--etcd-endpoints", "plaintext (http://)"}},
		{"certificate without key", store.DialConfig{Endpoints: e.Endpoints, Credentials: store.Credentials{Cert: expCert}},
			[]string{"--etcd-cert and --etcd-key go together"}},
		{"CA file missing", store.DialConfig{Endpoints: e.Endpoints, Credentials: store.Credentials{CACert: expKey + ".missing"}},
			[]string{"--etcd-cacert", "no such file"}},
		{"CA file without a certificate", store.DialConfig{Endpoints: e.Endpoints, Credentials: store.Credentials{CACert: expKey}},
			[]string{"--etcd-cacert " + expKey + ": no PEM certificate"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			st, err, took := openWithin(t, c.d)
			if err == nil {
				st.Close()
				t.Fatalf("open succeeded")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
			if took > refusalDeadline {
				t.Errorf("took %s to refuse (want < %s): %v", took, refusalDeadline, err)
			}
			t.Logf("%s: refused in %s: %v", c.name, took.Round(time.Millisecond), err)
		})
	}
}

// With etcd's auth on, a client certificate's CN is the etcd user; a password user
// works beside it, and each refusal names what to change.
func TestOpenWithEtcdAuth(t *testing.T) {
	e := storetest.StartTLS(t)
	region := e.PKI.Client(t, "region-dc1")
	root := store.DialConfig{Endpoints: e.Endpoints, Credentials: e.Root}
	storetest.EnableAuth(t, root, "region-dc1")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := e.Client.UserAdd(ctx, "operator", "op-password-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Client.UserGrantRole(ctx, "operator", "all-keys"); err != nil {
		t.Fatal(err)
	}
	pwFile := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pwFile, []byte("op-password-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	stranger := e.PKI.Client(t, "nobody")
	withUser := func(user, password, file string) store.Credentials {
		c := stranger
		c.User, c.Password, c.PasswordFile = user, password, file
		return c
	}
	for _, c := range []struct {
		name  string
		creds store.Credentials
		want  []string // nil: opens
	}{
		{"CN region-dc1 is an etcd user", region, nil},
		{"password user", withUser("operator", "op-password-1", ""), nil},
		{"password file", withUser("operator", "", pwFile), nil},
		{"user:password", withUser("operator:op-password-1", "", ""), nil},
		{"CN with no etcd user", stranger, []string{`etcd user "nobody" (the CN of --etcd-cert ` + stranger.Cert + ")", "permission denied"}},
		{"wrong password", withUser("operator", "wrong-password", ""), []string{"--etcd-user/--etcd-password", "authentication failed"}},
		{"user without password", withUser("operator", "", ""), []string{"--etcd-user operator needs --etcd-password"}},
		{"both password flags", withUser("operator", "x", pwFile), []string{"--etcd-password and --etcd-password-file"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			st, err, took := openWithin(t, store.DialConfig{Endpoints: e.Endpoints, Credentials: c.creds})
			switch {
			case c.want == nil && err != nil:
				t.Fatalf("open: %v", err)
			case c.want == nil:
				if _, err := st.ListUsers(ctx); err != nil {
					t.Fatalf("read through etcd auth: %v", err)
				}
				return
			case err == nil:
				t.Fatal("open succeeded")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
			if took > refusalDeadline {
				t.Errorf("took %s to refuse: %v", took, err)
			}
			t.Logf("refused in %s: %v", took.Round(time.Millisecond), err)
		})
	}
}

// The credential flags are etcdctl's behind --etcd-, filled from ETCD_* when the
// command line leaves them out.
func TestCredentialFlagsAndEnv(t *testing.T) {
	var c store.Credentials
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.AddFlags(fs)
	if err := fs.Parse([]string{"--etcd-cacert=/flag/ca.crt", "--etcd-user=alice"}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"ETCD_CACERT": "/env/ca.crt", "ETCD_CERT": "/env/c.crt", "ETCD_KEY": "/env/c.key", "ETCD_USER": "bob", "ETCD_PASSWORD": "pw", "ETCD_PASSWORD_FILE": "/env/pw"}
	c.FromEnv(fs, func(k string) string { return env[k] })
	want := store.Credentials{CACert: "/flag/ca.crt", Cert: "/env/c.crt", Key: "/env/c.key", User: "alice", Password: "pw", PasswordFile: "/env/pw"}
	if c != want {
		t.Fatalf("got %+v\nwant %+v", c, want)
	}
}

// etcd's own certificate must name the host dialled and be valid now: otherwise the
// error says what to reissue.
func TestOpenBadServerCertificates(t *testing.T) {
	p := storetest.NewPKI(t)
	now := time.Now()
	for _, c := range []struct {
		name string
		req  pki.Request
		want []string
	}{
		{"for another name", pki.Request{CommonName: "etcd-server", Kind: pki.Server, Hosts: []string{"etcd.example.net"}},
			[]string{"--etcd-endpoints", "[etcd.example.net]", "not for 127.0.0.1", "--hosts"}},
		{"expired", pki.Request{CommonName: "etcd-server", Kind: pki.Server, Hosts: []string{"127.0.0.1"}, NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)},
			[]string{"its server certificate (etcd's --cert-file) is not valid", "expired"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cert, key := p.Issue(t, strings.ReplaceAll(c.name, " ", "-"), c.req)
			tc := p.ServerTLS()
			tc.CertFile, tc.KeyFile = cert, key
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			srv, err := etcdserver.Start(ctx, etcdserver.Config{DataDir: t.TempDir(), ListenClientURLs: "https://127.0.0.1:0", ListenPeerURLs: "http://127.0.0.1:0", Quiet: true, TLS: tc})
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			st, err, took := openWithin(t, store.DialConfig{Endpoints: srv.Endpoints(), Credentials: p.Client(t, "root-"+strings.ReplaceAll(c.name, " ", "-"))})
			if err == nil {
				st.Close()
				t.Fatal("open succeeded")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
			if took > refusalDeadline {
				t.Errorf("took %s", took)
			}
			t.Logf("refused in %s: %v", took.Round(time.Millisecond), err)
		})
	}
}
