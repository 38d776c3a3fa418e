package storetest

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"lpmos.dev/lpmos/internal/pki"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/etcdserver"
)

// PKI is a test CA in a directory, writing pairs as lpmos-control certs does.
type PKI struct {
	Dir string
	CA  pki.Pair
}

// NewPKI makes a CA in t.TempDir() and etcd's server pair (etcd-server.crt/.key) for
// 127.0.0.1 and localhost.
func NewPKI(t testing.TB) *PKI {
	t.Helper()
	now := time.Now()
	ca, err := pki.NewCA("test CA", now.Add(-time.Hour), now.Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	p := &PKI{Dir: t.TempDir(), CA: ca}
	if err := ca.Write(p.Dir, "ca", false); err != nil {
		t.Fatal(err)
	}
	p.Issue(t, "etcd-server", pki.Request{CommonName: "etcd-server", Kind: pki.Server, Hosts: []string{"127.0.0.1", "localhost"}})
	return p
}

// Issue writes DIR/name.crt and .key signed by the CA; a zero validity is now-1h to
// now+24h. It returns the two files.
func (p *PKI) Issue(t testing.TB, name string, r pki.Request) (certFile, keyFile string) {
	t.Helper()
	if r.NotBefore.IsZero() {
		r.NotBefore, r.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
	}
	pair, err := p.CA.Issue(r)
	if err != nil {
		t.Fatal(err)
	}
	if err := pair.Write(p.Dir, name, false); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(p.Dir, name+".crt"), filepath.Join(p.Dir, name+".key")
}

// CACert is the CA certificate's file.
func (p *PKI) CACert() string { return filepath.Join(p.Dir, "ca.crt") }

// Client issues a client pair with CN cn (the etcd user) and returns the credentials
// that dial with it.
func (p *PKI) Client(t testing.TB, cn string) store.Credentials {
	t.Helper()
	cert, key := p.Issue(t, cn, pki.Request{CommonName: cn, Kind: pki.Client})
	return store.Credentials{CACert: p.CACert(), Cert: cert, Key: key}
}

// ServerTLS is etcd's TLS with the server pair, asking clients for a certificate of
// this CA (--client-cert-auth).
func (p *PKI) ServerTLS() etcdserver.TLS {
	return etcdserver.TLS{
		CertFile: filepath.Join(p.Dir, "etcd-server.crt"), KeyFile: filepath.Join(p.Dir, "etcd-server.key"),
		TrustedCAFile: p.CACert(), ClientCertAuth: true,
	}
}

// TLSEtcd is an embedded etcd that serves clients over TLS only and asks for a client
// certificate; Client and Store dial as root (CN root).
type TLSEtcd struct {
	*Etcd
	PKI  *PKI
	Root store.Credentials
}

// StartTLS starts etcd with TLS and client-certificate auth on 127.0.0.1 port 0.
func StartTLS(t testing.TB) *TLSEtcd {
	t.Helper()
	p := NewPKI(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv, err := etcdserver.Start(ctx, etcdserver.Config{
		DataDir:          t.TempDir(),
		ListenClientURLs: "https://127.0.0.1:0",
		ListenPeerURLs:   "http://127.0.0.1:0",
		Quiet:            true,
		TLS:              p.ServerTLS(),
	})
	if err != nil {
		t.Fatalf("embedded etcd with TLS: %v", err)
	}
	t.Cleanup(srv.Close)
	root := p.Client(t, "root")
	cli := dial(t, store.DialConfig{Endpoints: srv.Endpoints(), Credentials: root})
	return &TLSEtcd{Etcd: &Etcd{Server: srv, Client: cli, Store: store.New(cli), Endpoints: srv.Endpoints()}, PKI: p, Root: root}
}

func dial(t testing.TB, d store.DialConfig) *clientv3.Client {
	t.Helper()
	cfg, err := d.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// EnableAuth turns etcd's authentication on, dialling with root's credentials: user
// root (no password: its certificate names it) and each of users with a role that
// reads and writes every key. The key layout per region is not what this tests: that
// a certificate's CN is the etcd user, through the whole system.
func EnableAuth(t testing.TB, root store.DialConfig, users ...string) {
	t.Helper()
	cli := dial(t, root)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	noPassword := &clientv3.UserAddOptions{NoPassword: true}
	steps := []func() error{
		func() error { _, err := cli.UserAddWithOptions(ctx, "root", "", noPassword); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := cli.RoleAdd(ctx, "all-keys"); return err },
		func() error {
			// etcdctl role grant-permission all-keys readwrite --from-key ''
			_, err := cli.RoleGrantPermission(ctx, "all-keys", "\x00", "\x00", clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
	}
	for _, u := range users {
		steps = append(steps,
			func() error { _, err := cli.UserAddWithOptions(ctx, u, "", noPassword); return err },
			func() error { _, err := cli.UserGrantRole(ctx, u, "all-keys"); return err })
	}
	steps = append(steps, func() error { _, err := cli.AuthEnable(ctx); return err })
	for _, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("enable etcd auth: %v", err)
		}
	}
}
