package etcdserver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	clientsnap "go.etcd.io/etcd/client/v3/snapshot"
	"go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.uber.org/zap"
)

// SaveSnapshot writes a snapshot of the keyspace of the cluster at endpoints to file:
// etcd's own `etcdctl snapshot save` (one member streams its backend; the file carries
// a hash that Restore checks). The file appears only once complete.
func SaveSnapshot(ctx context.Context, endpoints []string, file string) (version string, err error) {
	if len(endpoints) == 0 {
		return "", errors.New("--endpoints: at least one etcd endpoint is required")
	}
	// One endpoint: etcd's snapshot API streams from the member dialled, and Save
	// refuses several (it would not say which member the file came from).
	var last error
	for _, ep := range endpoints {
		version, last = clientsnap.SaveWithVersion(ctx, zap.NewNop(), clientv3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second}, file)
		if last == nil {
			return version, nil
		}
		if ctx.Err() != nil {
			break
		}
	}
	return "", fmt.Errorf("snapshot save from %v: %w", endpoints, last)
}

// RestoreConfig is `etcdutl snapshot restore`'s: the new member's name, data dir
// (must not exist) and the cluster it bootstraps.
type RestoreConfig struct {
	Snapshot            string
	Name                string
	DataDir             string
	InitialCluster      string // name=peerURL,...; default Name=AdvertisePeerURLs
	InitialClusterToken string // default etcd-cluster
	AdvertisePeerURLs   string // this member's peer URLs; default http://127.0.0.1:2380
}

// RestoreSnapshot makes a data dir from a snapshot for one member of a new cluster
// (etcdutl's restore, as a library): each member of the new cluster restores the same
// file with its own name and peer URLs, then starts with --initial-cluster-state new.
// The old cluster's membership is dropped; the keys and their revisions are kept.
func RestoreSnapshot(c RestoreConfig) error {
	if c.Snapshot == "" || c.DataDir == "" {
		return errors.New("snapshot restore: the snapshot file and --data-dir are required")
	}
	if _, err := os.Stat(c.DataDir); err == nil {
		return fmt.Errorf("--data-dir %s exists: restore makes a new data dir, it never overwrites one", c.DataDir)
	}
	if c.Name == "" {
		c.Name = "default"
	}
	if c.AdvertisePeerURLs == "" {
		c.AdvertisePeerURLs = "http://127.0.0.1:2380"
	}
	if c.InitialCluster == "" {
		c.InitialCluster = c.Name + "=" + c.AdvertisePeerURLs
	}
	if c.InitialClusterToken == "" {
		c.InitialClusterToken = "etcd-cluster"
	}
	var peers []string
	for _, u := range strings.Split(c.AdvertisePeerURLs, ",") {
		peers = append(peers, strings.TrimSpace(u))
	}
	err := snapshot.NewV3(zap.NewNop()).Restore(snapshot.RestoreConfig{
		SnapshotPath: c.Snapshot, Name: c.Name, OutputDataDir: c.DataDir, PeerURLs: peers,
		InitialCluster: c.InitialCluster, InitialClusterToken: c.InitialClusterToken,
	})
	if err != nil {
		return fmt.Errorf("snapshot restore %s into %s: %w", c.Snapshot, c.DataDir, err)
	}
	return nil
}
