package etcdserver

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"

	"go.etcd.io/etcd/server/v3/embed"
)

// TLS is etcd's client and peer TLS, with etcd's own flag names (--cert-file, ...).
// With ClientCertAuth, etcd takes a client certificate's CN as the etcd user.
type TLS struct {
	CertFile, KeyFile, TrustedCAFile             string
	ClientCertAuth                               bool
	PeerCertFile, PeerKeyFile, PeerTrustedCAFile string
	PeerClientCertAuth                           bool

	prefix string // of the flag names, for errors: "" (lpmos-etcd) or "etcd-" (the appliance)
}

// AddFlags registers the TLS flags as etcd spells them behind prefix: "" on lpmos-etcd,
// "etcd-" on the appliance's embedded etcd (--etcd-cert-file, ...).
func (t *TLS) AddFlags(fs *flag.FlagSet, prefix string) {
	t.prefix = prefix
	fs.StringVar(&t.CertFile, prefix+"cert-file", "", "TLS certificate etcd serves clients with (then the client URLs are https://)")
	fs.StringVar(&t.KeyFile, prefix+"key-file", "", "key of --"+prefix+"cert-file")
	fs.StringVar(&t.TrustedCAFile, prefix+"trusted-ca-file", "", "CA that signs the client certificates etcd accepts")
	fs.BoolVar(&t.ClientCertAuth, prefix+"client-cert-auth", false, "require a client certificate signed by --"+prefix+"trusted-ca-file (its CN is the etcd user)")
	fs.StringVar(&t.PeerCertFile, prefix+"peer-cert-file", "", "TLS certificate for the peer URLs (then they are https://)")
	fs.StringVar(&t.PeerKeyFile, prefix+"peer-key-file", "", "key of --"+prefix+"peer-cert-file")
	fs.StringVar(&t.PeerTrustedCAFile, prefix+"peer-trusted-ca-file", "", "CA that signs the peers' certificates")
	fs.BoolVar(&t.PeerClientCertAuth, prefix+"peer-client-cert-auth", false, "require peers to present a certificate signed by --"+prefix+"peer-trusted-ca-file")
}

// Client reports whether etcd serves its clients over TLS.
func (t TLS) Client() bool { return t.CertFile != "" }

func (t TLS) flag(name string) string { return "--" + t.prefix + name }

// apply checks the flags against each other and against the URLs, and sets them on cfg.
// etcd itself ignores a certificate beside an http:// URL with only a warning: serving
// plaintext when TLS was asked for is refused here instead.
func (t TLS) apply(cfg *embed.Config) error {
	if err := t.side("", t.CertFile, t.KeyFile, t.TrustedCAFile, t.ClientCertAuth, "listen-client-urls", cfg.ListenClientUrls); err != nil {
		return err
	}
	if err := t.side("peer-", t.PeerCertFile, t.PeerKeyFile, t.PeerTrustedCAFile, t.PeerClientCertAuth, "listen-peer-urls", cfg.ListenPeerUrls); err != nil {
		return err
	}
	ci := &cfg.ClientTLSInfo
	ci.CertFile, ci.KeyFile, ci.TrustedCAFile, ci.ClientCertAuth = t.CertFile, t.KeyFile, t.TrustedCAFile, t.ClientCertAuth
	pi := &cfg.PeerTLSInfo
	pi.CertFile, pi.KeyFile, pi.TrustedCAFile, pi.ClientCertAuth = t.PeerCertFile, t.PeerKeyFile, t.PeerTrustedCAFile, t.PeerClientCertAuth
	return nil
}

// side checks one side's (client or peer) flags.
func (t TLS) side(kind, cert, key, ca string, auth bool, urlsFlag string, urls []url.URL) error {
	certF, keyF, caF := t.flag(kind+"cert-file"), t.flag(kind+"key-file"), t.flag(kind+"trusted-ca-file")
	if (cert == "") != (key == "") {
		return fmt.Errorf("%s and %s go together", certF, keyF)
	}
	if auth && ca == "" {
		return fmt.Errorf("%s needs %s (the CA whose certificates it accepts)", t.flag(kind+"client-cert-auth"), caF)
	}
	if cert == "" && (ca != "" || auth) {
		return fmt.Errorf("%s needs %s and %s (TLS on)", caF, certF, keyF)
	}
	for _, f := range []struct{ name, path string }{{certF, cert}, {keyF, key}, {caF, ca}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
	}
	for _, u := range urls {
		switch {
		case cert != "" && u.Scheme == "http":
			return fmt.Errorf("%s: %s is plaintext but %s is given: use https://", t.flag(urlsFlag), u.String(), certF)
		case cert == "" && u.Scheme == "https":
			return errors.New(t.flag(urlsFlag) + ": " + u.String() + " needs " + certF + " and " + keyF)
		}
	}
	return nil
}
