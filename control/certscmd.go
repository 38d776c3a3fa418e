package control

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"lpmos.dev/lpmos/internal/cliflag"
	"lpmos.dev/lpmos/internal/pki"
	"lpmos.dev/lpmos/store"
)

// Certificates for etcd's TLS, for people without a PKI of their own:
//
//	lpmos-control certs init --dir DIR [--hosts 127.0.0.1,localhost,...] [--force]
//	lpmos-control certs add-region NAME --dir DIR [--force]
//
// init writes the CA (ca.crt, ca.key), etcd's server pair (etcd-server.crt/.key: the
// --hosts as SANs; usable as the peer pair too) and the control plane's client pair
// (control.crt/.key); add-region signs region-NAME.crt/.key with that CA.
//
// The control plane's certificate has CN root: with etcd's --client-cert-auth and auth
// enabled, the CN is the etcd user, and the control plane needs every key and, to give
// each region its role (lpmos-control regions add), etcd's user and role management,
// which only the root role may do. etcd requires the root user before `auth enable`
// anyway, so the certificate works as soon as auth is on. A region's CN region-NAME is
// the etcd user of that region's role.

const certsUsage = `usage:
  lpmos-control certs init --dir DIR [--hosts 127.0.0.1,localhost] [--force]
  lpmos-control certs add-region NAME --dir DIR [--force]`

// Validity: the CA outlives the certificates it signs; NotBefore a little in the past
// so a host whose clock is behind accepts a certificate made a moment ago.
const (
	caValidity   = 10 * 365 * 24 * time.Hour
	leafValidity = 5 * 365 * 24 * time.Hour
	clockSkew    = 5 * time.Minute
)

// ControlCertCN is the control plane's etcd user (see above).
const ControlCertCN = "root"

// RegionCertCN is the CN, and so the etcd user, of a region's appliance.
func RegionCertCN(region string) string { return store.RegionUser(region) }

func certsCmd(args []string, env Env) error {
	if len(args) == 0 {
		return fmt.Errorf("certs: which subcommand?\n%s", certsUsage)
	}
	cmd, rest := args[0], args[1:]
	if cmd != "init" && cmd != "add-region" {
		return fmt.Errorf("unknown command %q\n%s", "certs "+cmd, certsUsage)
	}
	fs := flag.NewFlagSet("lpmos-control certs "+cmd, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	dir := fs.String("dir", "", "directory of the CA and the certificates (required)")
	hosts := fs.String("hosts", "127.0.0.1,localhost", "init: comma-separated DNS names and IP addresses of the etcd server certificate (every member's, for a cluster)")
	force := fs.Bool("force", false, "replace existing files (a new CA invalidates every certificate the old one signed)")
	pos, err := cliflag.ParseInterleaved(fs, rest)
	if err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("--dir is required")
	}
	now := time.Now()
	switch cmd {
	case "init":
		if len(pos) != 0 {
			return fmt.Errorf("certs init takes no arguments, got %q\n%s", pos, certsUsage)
		}
		var sans []string
		for _, h := range strings.Split(*hosts, ",") {
			if h = strings.TrimSpace(h); h != "" {
				sans = append(sans, h)
			}
		}
		if len(sans) == 0 {
			return errors.New("--hosts: at least one name or address")
		}
		written, err := certsInit(*dir, sans, *force, now)
		if err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "wrote %s\n", strings.Join(written, ", "))
		fmt.Fprintf(env.Stdout, `etcd:          lpmos-etcd --listen-client-urls=https://127.0.0.1:2379 --cert-file=%[1]s/etcd-server.crt --key-file=%[1]s/etcd-server.key --trusted-ca-file=%[1]s/ca.crt --client-cert-auth
control plane: lpmos-control --etcd-endpoints=https://127.0.0.1:2379 --etcd-cacert=%[1]s/ca.crt --etcd-cert=%[1]s/control.crt --etcd-key=%[1]s/control.key
a region:      lpmos-control certs add-region NAME --dir=%[1]s
`, *dir)
	case "add-region":
		if len(pos) != 1 {
			return fmt.Errorf("certs add-region: want the region's name, got %q\n%s", pos, certsUsage)
		}
		region := pos[0]
		if err := store.ValidateRegion(region); err != nil {
			return fmt.Errorf("region %q: %w", region, err)
		}
		name := RegionCertCN(region)
		if err := certsAddRegion(*dir, region, *force, now); err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "wrote %[1]s/%[2]s.crt, %[1]s/%[2]s.key (CN %[2]s)\nappliance: lpmos-appliance --label=%[3]s --etcd-cacert=%[1]s/ca.crt --etcd-cert=%[1]s/%[2]s.crt --etcd-key=%[1]s/%[2]s.key ...\n", *dir, name, region)
	}
	return nil
}

// certsInit writes the CA, the etcd server pair and the control plane's pair; without
// force it writes nothing when any of them exists.
func certsInit(dir string, hosts []string, force bool, now time.Time) ([]string, error) {
	names := []string{"ca", "etcd-server", "control"}
	if !force {
		for _, n := range names {
			for _, ext := range []string{".crt", ".key"} {
				p := filepath.Join(dir, n+ext)
				if _, err := os.Lstat(p); err == nil {
					return nil, fmt.Errorf("%s exists (--force replaces it, and a new CA invalidates every certificate the old one signed)", p)
				} else if !errors.Is(err, fs.ErrNotExist) {
					return nil, err
				}
			}
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	notBefore := now.Add(-clockSkew)
	// The CA's name says where and when it was made: with a CA per site (hq, dc2), an
	// "issued by X, which ca.crt does not vouch for" error then tells them apart.
	host, _ := os.Hostname()
	host = host[:min(len(host), 24)] // a CN is at most 64 characters (RFC 5280)
	ca, err := pki.NewCA(fmt.Sprintf("LPMOS etcd CA %s %s", host, now.UTC().Format("2006-01-02T15:04:05Z")), notBefore, now.Add(caValidity))
	if err != nil {
		return nil, err
	}
	server, err := ca.Issue(pki.Request{CommonName: "etcd-server", Kind: pki.Server, Hosts: hosts, NotBefore: notBefore, NotAfter: now.Add(leafValidity)})
	if err != nil {
		return nil, err
	}
	client, err := ca.Issue(pki.Request{CommonName: ControlCertCN, Kind: pki.Client, NotBefore: notBefore, NotAfter: now.Add(leafValidity)})
	if err != nil {
		return nil, err
	}
	var written []string
	for i, p := range []pki.Pair{ca, server, client} {
		if err := p.Write(dir, names[i], true); err != nil {
			return written, err
		}
		written = append(written, filepath.Join(dir, names[i]+".crt"), filepath.Join(dir, names[i]+".key"))
	}
	return written, nil
}

// certsAddRegion signs region-NAME's client pair with the CA in dir.
func certsAddRegion(dir, region string, force bool, now time.Time) error {
	ca, err := pki.Load(dir, "ca")
	if err != nil {
		return fmt.Errorf("the CA (lpmos-control certs init --dir=%s first): %w", dir, err)
	}
	notAfter := now.Add(leafValidity)
	if ca.Cert.NotAfter.Before(notAfter) {
		notAfter = ca.Cert.NotAfter
	}
	pair, err := ca.Issue(pki.Request{CommonName: RegionCertCN(region), Kind: pki.Client, NotBefore: now.Add(-clockSkew), NotAfter: notAfter})
	if err != nil {
		return err
	}
	return pair.Write(dir, RegionCertCN(region), force)
}
