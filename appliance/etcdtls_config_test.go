package appliance

import (
	"io"
	"testing"

	"lpmos.dev/lpmos/store"
)

// The appliance takes the etcd client's TLS and user as etcdctl names them behind
// --etcd- (env ETCD_*), and its embedded etcd's TLS as etcd names it behind --etcd-.
func TestConfigEtcdTLSFlags(t *testing.T) {
	env := map[string]string{"ETCD_CACERT": "/env/ca.crt", "ETCD_CERT": "/env/c.crt", "ETCD_KEY": "/env/c.key", "ETCD_PASSWORD_FILE": "/env/pw"}
	c, err := ParseConfig([]string{"--label=dc1", "--etcd-cert=/flag/c.crt", "--etcd-user=region-dc1",
		"--etcd-cert-file=s.crt", "--etcd-key-file=s.key", "--etcd-trusted-ca-file=ca.crt", "--etcd-client-cert-auth",
		"--etcd-peer-cert-file=p.crt", "--etcd-peer-key-file=p.key", "--etcd-peer-trusted-ca-file=pca.crt", "--etcd-peer-client-cert-auth"},
		func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if want := (store.Credentials{CACert: "/env/ca.crt", Cert: "/flag/c.crt", Key: "/env/c.key", User: "region-dc1", PasswordFile: "/env/pw"}); c.EtcdCredentials != want {
		t.Errorf("credentials %+v, want %+v", c.EtcdCredentials, want)
	}
	got := c.EtcdTLS
	if got.CertFile != "s.crt" || got.KeyFile != "s.key" || got.TrustedCAFile != "ca.crt" || !got.ClientCertAuth ||
		got.PeerCertFile != "p.crt" || got.PeerKeyFile != "p.key" || got.PeerTrustedCAFile != "pca.crt" || !got.PeerClientCertAuth {
		t.Errorf("embedded etcd TLS %+v", got)
	}
}
