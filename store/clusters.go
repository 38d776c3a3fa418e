package store

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// A region on its own etcd cluster (docs/federation.md): the control plane is told where
// that cluster is, and reads and writes the region's v2.1 keys there instead of in its
// own etcd. Where each such region lives is kept beside the v2.1 keys in the control
// plane's own etcd, under /os/federation/clusters/{region} (control-only: no region role
// names it), written by `lpmos-control regions add NAME --etcd URL`; a regions file and
// --region flags name more (federation.LoadRegionsFile).

const clusterRoot = "/os/federation/clusters/"

func clusterKey(region string) string { return clusterRoot + region }

// AuditRegionCluster is the audit action of registering or removing a region's cluster.
const AuditRegionCluster = "region.cluster"

// RegionCluster is where one region's etcd is and how the control plane dials it.
// TLS files and the password file are paths on the control plane's host: no secret is
// stored in etcd.
type RegionCluster struct {
	Region       string   `json:"region" yaml:"name"`
	Endpoints    []string `json:"endpoints" yaml:"endpoints"`
	CACert       string   `json:"cacert,omitempty" yaml:"cacert"`
	Cert         string   `json:"cert,omitempty" yaml:"cert"`
	Key          string   `json:"key,omitempty" yaml:"key"`
	User         string   `json:"user,omitempty" yaml:"user"`
	PasswordFile string   `json:"password_file,omitempty" yaml:"password_file"`
}

// Validate names what is wrong: a region label, at least one endpoint, each a host:port
// or an http(s) URL, and a user's password only from a file.
func (c RegionCluster) Validate() error {
	if err := ValidateRegion(c.Region); err != nil {
		return err
	}
	if len(c.Endpoints) == 0 {
		return invalid("endpoints", "region %s: at least one etcd endpoint is required", c.Region)
	}
	for _, e := range c.Endpoints {
		if err := validEndpoint(e); err != nil {
			return invalid("endpoints", "region %s: %v", c.Region, err)
		}
	}
	if strings.Contains(c.User, ":") {
		return invalid("user", "region %s: give the password in password_file, not in user", c.Region)
	}
	if (c.Cert == "") != (c.Key == "") {
		return invalid("cert", "region %s: cert and key go together", c.Region)
	}
	return nil
}

func validEndpoint(e string) error {
	if e == "" || strings.ContainsAny(e, " \t\n,") {
		return fmt.Errorf("%q is not an etcd endpoint", e)
	}
	if strings.Contains(e, "://") {
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return fmt.Errorf("%q is not an http:// or https:// etcd endpoint", e)
		}
	}
	return nil
}

// DialConfig is how to reach the cluster with store.Open.
func (c RegionCluster) DialConfig() DialConfig {
	return DialConfig{Endpoints: c.Endpoints, Credentials: Credentials{
		CACert: c.CACert, Cert: c.Cert, Key: c.Key, User: c.User, PasswordFile: c.PasswordFile}}
}

// PutRegionCluster registers (or changes) where region c.Region's etcd is, audited in
// the same transaction. Running control planes follow the change (WatchRegionClusters).
func (s *Store) PutRegionCluster(ctx context.Context, c RegionCluster) error {
	if err := c.Validate(); err != nil {
		return err
	}
	b, _ := json.Marshal(c)
	// Audited in the control scope, not the region's: a registration is the control
	// plane's decision, and a region's own keys in this etcd are what a migration
	// copies, compares and deletes (federation.Migration).
	audit := newAudit(ctx, s.now(), AuditRegionCluster, "", "").with("endpoints", strings.Join(c.Endpoints, ","))
	audit.Target = c.Region
	if _, err := s.c.Txn(ctx).Then(clientv3.OpPut(clusterKey(c.Region), string(b)), audit.op()).Commit(); err != nil {
		return fmt.Errorf("register region %s's etcd: %w", c.Region, err)
	}
	return nil
}

// DeleteRegionCluster removes the registration of region's own etcd (the region is then
// looked for in the control plane's own etcd again). It says whether one was there.
func (s *Store) DeleteRegionCluster(ctx context.Context, region string) (bool, error) {
	if err := ValidateRegion(region); err != nil {
		return false, err
	}
	audit := newAudit(ctx, s.now(), AuditRegionCluster, "", "").with("removed", "true")
	audit.Target = region
	resp, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(clusterKey(region)), ">", 0)).
		Then(clientv3.OpDelete(clusterKey(region)), audit.op()).Commit()
	if err != nil {
		return false, fmt.Errorf("remove region %s's etcd: %w", region, err)
	}
	return resp.Succeeded, nil
}

// RegionClusters lists the registered region clusters by region name, and the revision
// read at. A value that no longer parses is skipped (and named in bad).
func (s *Store) RegionClusters(ctx context.Context) (cs []RegionCluster, bad []string, rev int64, err error) {
	resp, err := s.c.Get(ctx, clusterRoot, clientv3.WithPrefix())
	if err != nil {
		return nil, nil, 0, fmt.Errorf("list region clusters: %w", err)
	}
	for _, kv := range resp.Kvs {
		var c RegionCluster
		name := strings.TrimPrefix(string(kv.Key), clusterRoot)
		if json.Unmarshal(kv.Value, &c) != nil || c.Region != name || c.Validate() != nil {
			bad = append(bad, name)
			continue
		}
		cs = append(cs, c)
	}
	return cs, bad, resp.Header.Revision, nil
}

// WatchRegionClusters calls changed after every change of the registrations (and once
// the watch is registered, and after a resync) until ctx ends: the caller re-reads
// RegionClusters.
func (s *Store) WatchRegionClusters(ctx context.Context, changed func()) error {
	return s.watchPrefixes(ctx, []string{clusterRoot}, 0, changed, func(*clientv3.Event) { changed() })
}
