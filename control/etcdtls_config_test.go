package control_test

import (
	"io"
	"testing"

	"lpmos.dev/lpmos/control"
	"lpmos.dev/lpmos/store"
)

// The control plane takes the same etcd client flags as the appliance (one
// registration, store.Credentials.AddFlags), flags over ETCD_* env.
func TestConfigEtcdTLSFlags(t *testing.T) {
	env := map[string]string{"ETCD_CACERT": "/env/ca.crt", "ETCD_CERT": "/env/c.crt", "ETCD_KEY": "/env/c.key", "ETCD_USER": "bob", "ETCD_PASSWORD": "pw"}
	c, err := control.ParseConfig([]string{"--etcd-endpoints=https://e1:2379", "--etcd-key=/flag/c.key", "--etcd-user=root"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if want := (store.Credentials{CACert: "/env/ca.crt", Cert: "/env/c.crt", Key: "/flag/c.key", User: "root", Password: "pw"}); c.EtcdCredentials != want {
		t.Errorf("credentials %+v, want %+v", c.EtcdCredentials, want)
	}
}
