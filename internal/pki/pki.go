// Package pki issues the certificates etcd's TLS needs for people without a PKI of their
// own (lpmos-control certs): one CA, an etcd server pair, client pairs whose CN is the
// etcd user. Keys are ECDSA P-256, which etcd, etcdctl and Go's TLS all accept.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Pair is a certificate and its private key.
type Pair struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// Kind says what a certificate is for.
type Kind int

const (
	// Server is etcd's: it serves clients and, in a cluster, its peers (peers dial each
	// other, so the pair is also a client certificate).
	Server Kind = iota
	// Client is a client's (the control plane, a region's appliance): CN is its etcd user.
	Client
)

// Request is one certificate to issue.
type Request struct {
	CommonName string
	Kind       Kind
	Hosts      []string // Server: DNS names and IP addresses (SANs)
	NotBefore  time.Time
	NotAfter   time.Time
}

// NewCA makes a self-signed CA valid from notBefore to notAfter.
func NewCA(cn string, notBefore, notAfter time.Time) (Pair, error) {
	tmpl := &x509.Certificate{
		Subject: pkix.Name{CommonName: cn}, NotBefore: notBefore, NotAfter: notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true, IsCA: true, MaxPathLenZero: true,
	}
	p, err := sign(tmpl, nil)
	if err != nil {
		return Pair{}, fmt.Errorf("self-sign CA: %w", err)
	}
	return p, nil
}

// Issue signs a new key pair for r with the CA ca.
func (ca Pair) Issue(r Request) (Pair, error) {
	if r.CommonName == "" {
		return Pair{}, errors.New("a certificate needs a common name")
	}
	tmpl := &x509.Certificate{
		Subject: pkix.Name{CommonName: r.CommonName}, NotBefore: r.NotBefore, NotAfter: r.NotAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if r.Kind == Server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		for _, h := range r.Hosts {
			if ip := net.ParseIP(h); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else {
				tmpl.DNSNames = append(tmpl.DNSNames, h)
			}
		}
	}
	p, err := sign(tmpl, &ca)
	if err != nil {
		return Pair{}, fmt.Errorf("sign %s: %w", r.CommonName, err)
	}
	return p, nil
}

// sign makes a new P-256 key and a certificate of it from tmpl (given a fresh serial),
// signed by parent, or by itself when parent is nil.
func sign(tmpl *x509.Certificate, parent *Pair) (Pair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Pair{}, err
	}
	if tmpl.SerialNumber, err = newSerial(); err != nil {
		return Pair{}, err
	}
	issuer, issuerKey := tmpl, any(key)
	if parent != nil {
		issuer, issuerKey = parent.Cert, parent.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), issuerKey)
	if err != nil {
		return Pair{}, err
	}
	cert, err := x509.ParseCertificate(der)
	return Pair{Cert: cert, Key: key}, err
}

// 128 random bits: serials must be unique per CA and unpredictable (RFC 5280 4.1.2.2).
func newSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
}

// Write writes dir/name.crt and dir/name.key (mode 0600). Without force it refuses to
// replace either file: a reissued CA would silently orphan every certificate it signed.
func (p Pair) Write(dir, name string, force bool) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(p.Key)
	if err != nil {
		return err
	}
	files := []struct {
		path string
		pem  []byte
		mode os.FileMode
	}{
		{filepath.Join(dir, name+".crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.Cert.Raw}), 0o644},
		{filepath.Join(dir, name+".key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600},
	}
	if !force {
		for _, f := range files {
			if _, err := os.Lstat(f.path); err == nil {
				return fmt.Errorf("%s exists (--force replaces it)", f.path)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	for _, f := range files {
		if err := writeFile(f.path, f.pem, f.mode); err != nil {
			return err
		}
	}
	return nil
}

// writeFile writes through a temporary file and a rename, so a key never exists with a
// wider mode than its own, not even for a moment, and a crash leaves no half file.
func writeFile(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// Load reads dir/name.crt and dir/name.key and checks that they belong together.
func Load(dir, name string) (Pair, error) {
	certFile, keyFile := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	kp, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return Pair{}, fmt.Errorf("%s, %s: %w", certFile, keyFile, err)
	}
	signer, ok := kp.PrivateKey.(crypto.Signer)
	if !ok {
		return Pair{}, fmt.Errorf("%s: not a signing key", keyFile)
	}
	return Pair{Cert: kp.Leaf, Key: signer}, nil
}
