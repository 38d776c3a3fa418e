// Package federation is the control plane's view of regions spread over etcd clusters
// (docs/federation.md): regions found by their heartbeats in the control plane's own
// etcd (the v2.1 shared layout), and regions on their own etcd, named by a regions
// file, --region flags or `regions add NAME --etcd URL` (kept in the control plane's
// etcd). It reaches every cluster only through package store.
package federation

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"gopkg.in/yaml.v3"

	"lpmos.dev/lpmos/store"
)

// regionsFile is the regions file's shape:
//
//	regions:
//	  - name: dc2
//	    endpoints: [https://10.2.0.1:2379]
//	    cacert: /etc/lpmos/pki/ca.crt
//	    cert: /etc/lpmos/pki/control.crt
//	    key: /etc/lpmos/pki/control.key
//	    user: lpmos-control          # optional: a client certificate's CN names the user
//	    password_file: /etc/lpmos/dc2.pass
type regionsFile struct {
	Regions []store.RegionCluster `yaml:"regions"`
}

// LoadRegionsFile reads and checks a regions file: every entry valid, no region twice,
// no unknown field (a misspelt "endpoint" must not silently dial nothing).
func LoadRegionsFile(path string) ([]store.RegionCluster, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--regions-file: %w", err)
	}
	var f regionsFile
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("--regions-file %s: %w", path, err)
	}
	if err := checkClusters(f.Regions); err != nil {
		return nil, fmt.Errorf("--regions-file %s: %w", path, err)
	}
	return f.Regions, nil
}

// ParseRegionFlag reads one --region value, NAME=ENDPOINT[,ENDPOINT...]: the cluster is
// dialled with the control plane's own etcd credentials (def).
func ParseRegionFlag(v string, def store.Credentials) (store.RegionCluster, error) {
	name, eps, ok := strings.Cut(v, "=")
	if !ok || eps == "" {
		return store.RegionCluster{}, fmt.Errorf("--region %q: want NAME=ENDPOINT[,ENDPOINT...]", v)
	}
	c := store.RegionCluster{Region: name, Endpoints: strings.Split(eps, ","),
		CACert: def.CACert, Cert: def.Cert, Key: def.Key, User: def.User, PasswordFile: def.PasswordFile}
	if err := c.Validate(); err != nil {
		return store.RegionCluster{}, fmt.Errorf("--region %q: %w", v, err)
	}
	return c, nil
}

// checkClusters refuses an invalid entry and a region named twice.
func checkClusters(cs []store.RegionCluster) error {
	seen := map[string]bool{}
	for _, c := range cs {
		if err := c.Validate(); err != nil {
			return err
		}
		if seen[c.Region] {
			return fmt.Errorf("region %s is named twice", c.Region)
		}
		seen[c.Region] = true
	}
	return nil
}

// MergeStatic joins the regions file's entries and the --region flags' (a flag wins
// over the file for the same region: the command line is the operator's last word).
func MergeStatic(file, flags []store.RegionCluster) []store.RegionCluster {
	out := append([]store.RegionCluster(nil), flags...)
	named := map[string]bool{}
	for _, c := range flags {
		named[c.Region] = true
	}
	for _, c := range file {
		if !named[c.Region] {
			out = append(out, c)
		}
	}
	return out
}
