package store_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"lpmos.dev/lpmos/internal/pki"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

// The client pair is read again at each handshake when its files changed: a renewed
// certificate is presented from the next connection on; while the files are being
// replaced (a new certificate beside the old key) the pair read last is.
func TestClientCertificateRenewedInPlace(t *testing.T) {
	p := storetest.NewPKI(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "control.crt"), filepath.Join(dir, "control.key")
	put := func(from, to string) {
		t.Helper()
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to+".new", b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(to+".new", to); err != nil {
			t.Fatal(err)
		}
	}
	issue := func(name string, notAfter time.Time) (string, string) {
		return p.Issue(t, name, pki.Request{CommonName: "root", Kind: pki.Client, NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter})
	}
	oldCert, oldKey := issue("old", time.Now().Add(time.Hour))
	put(oldCert, certFile)
	put(oldKey, keyFile)
	cfg, err := store.DialConfig{Endpoints: []string{"https://127.0.0.1:1"}, Credentials: store.Credentials{CACert: p.CACert(), Cert: certFile, Key: keyFile}}.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	presented := func() time.Time {
		t.Helper()
		c, err := cfg.TLS.GetClientCertificate(nil)
		if err != nil || c == nil || c.Leaf == nil {
			t.Fatalf("client certificate: %v %v", c, err)
		}
		return c.Leaf.NotAfter
	}
	first := presented()
	if presented() != first {
		t.Fatal("unchanged files, another certificate")
	}
	newCert, newKey := issue("new", time.Now().Add(48*time.Hour))
	put(newCert, certFile) // the key not yet: the files do not pair
	if got := presented(); got != first {
		t.Fatalf("mid-replacement: presented the certificate valid until %s, want the old one (until %s)", got, first)
	}
	put(newKey, keyFile)
	if got := presented(); got.Sub(first) < 24*time.Hour {
		t.Fatalf("after the renewal: presented the certificate valid until %s, want the new one", got)
	}
}
