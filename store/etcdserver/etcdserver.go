// Package etcdserver starts an embedded etcd (go.etcd.io/etcd/server/v3/embed): the
// appliance's self-contained mode, the lpmos-etcd binary behind `make start-etcd`, and
// the tests. Besides store, it is the only package that imports etcd.
package etcdserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3client"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"lpmos.dev/lpmos/internal/zapslog"
)

// Config uses etcd's own flag names (data-dir, listen-client-urls, listen-peer-urls).
type Config struct {
	Name             string // member name; default "default"
	DataDir          string
	ListenClientURLs string // comma-separated; default http://127.0.0.1:2379
	ListenPeerURLs   string // comma-separated; default http://127.0.0.1:2380
	// Quiet drops etcd's own zap logging (tests); otherwise etcd logs errors to Log
	// (component=etcd; nil: zap JSON on stderr).
	Quiet bool
	Log   *slog.Logger
	// QuotaBackendBytes is etcd's --quota-backend-bytes; 0: 2 GiB.
	QuotaBackendBytes int64
	// TLS is etcd's client and peer TLS (tls.go); zero: plaintext.
	TLS TLS

	// Cluster membership, etcd's own flags. All empty: a one-member cluster of this
	// member alone, advertising its listen URLs (the dev setup, the appliance's
	// embedded etcd, the tests).
	InitialCluster      string // --initial-cluster: name=peerURL,... of every member
	InitialClusterState string // --initial-cluster-state: new (default) or existing (joining a running cluster)
	InitialClusterToken string // --initial-cluster-token: tells clusters apart; default etcd-cluster
	AdvertisePeerURLs   string // --initial-advertise-peer-urls; default the listen peer URLs
	AdvertiseClientURLs string // --advertise-client-urls; default the listen client URLs
}

// Server is a running embedded etcd.
type Server struct {
	etcd      *embed.Etcd
	close     sync.Once
	closing   *atomic.Bool // set by Close: etcd's "server closed" errors then are the stop
	clientTLS bool         // Endpoints say https://
}

// Start starts etcd and waits until it serves (or ctx ends). Port 0 in a URL picks a free
// port; Endpoints reports the real addresses.
func Start(ctx context.Context, c Config) (*Server, error) {
	if c.DataDir == "" {
		return nil, errors.New("etcd: data dir is required")
	}
	cfg := embed.NewConfig()
	if c.Name != "" {
		cfg.Name = c.Name
	}
	cfg.Dir = c.DataDir
	clientURLs, err := parseURLs(c.ListenClientURLs, "http://127.0.0.1:2379")
	if err != nil {
		return nil, fmt.Errorf("--etcd-listen-client-urls: %w", err)
	}
	peerURLs, err := parseURLs(c.ListenPeerURLs, "http://127.0.0.1:2380")
	if err != nil {
		return nil, fmt.Errorf("--etcd-listen-peer-urls: %w", err)
	}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = clientURLs, clientURLs
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = peerURLs, peerURLs
	if err := c.membership(cfg); err != nil {
		return nil, err
	}
	// Every progress post writes a revision: without compaction the history of a busy
	// region grows until the backend quota's NOSPACE alarm stops all writes. Keep one
	// hour of history (watchers that fall further behind resync) and etcd's 2 GiB quota.
	cfg.AutoCompactionMode, cfg.AutoCompactionRetention = "periodic", "1h"
	cfg.QuotaBackendBytes = 2 << 30
	if c.QuotaBackendBytes > 0 {
		cfg.QuotaBackendBytes = c.QuotaBackendBytes
	}
	closing := new(atomic.Bool)
	switch {
	case c.Quiet:
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	case c.Log != nil:
		// Errors only: etcd logs every slow-ish request at warn, too loud beside our lines.
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zapslog.New(c.Log.With("component", "etcd"), zapcore.ErrorLevel,
			30*time.Second, func(string) bool { return closing.Load() }))
	default:
		cfg.LogLevel = "error"
	}
	if err := c.TLS.apply(cfg); err != nil {
		return nil, err
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd in %s: %w", c.DataDir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd: %w", err)
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, errors.New("embedded etcd: not ready after 60s")
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
	return &Server{etcd: e, closing: closing, clientTLS: c.TLS.Client()}, nil
}

// membership applies the cluster flags to cfg.
func (c Config) membership(cfg *embed.Config) error {
	var err error
	if c.AdvertiseClientURLs != "" {
		if cfg.AdvertiseClientUrls, err = parseURLs(c.AdvertiseClientURLs, ""); err != nil {
			return fmt.Errorf("--advertise-client-urls: %w", err)
		}
	}
	if c.AdvertisePeerURLs != "" {
		if cfg.AdvertisePeerUrls, err = parseURLs(c.AdvertisePeerURLs, ""); err != nil {
			return fmt.Errorf("--initial-advertise-peer-urls: %w", err)
		}
	}
	switch c.InitialClusterState {
	case "", embed.ClusterStateFlagNew:
		cfg.ClusterState = embed.ClusterStateFlagNew
	case embed.ClusterStateFlagExisting:
		cfg.ClusterState = embed.ClusterStateFlagExisting
	default:
		return fmt.Errorf("--initial-cluster-state: %q must be new or existing", c.InitialClusterState)
	}
	if c.InitialClusterToken != "" {
		cfg.InitialClusterToken = c.InitialClusterToken
	}
	if c.InitialCluster == "" {
		cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
		return nil
	}
	cfg.InitialCluster = c.InitialCluster
	// etcd checks the rest (this member named, its peer URLs matching) at start; this
	// catches the typo that would otherwise read as "member not in cluster".
	for _, m := range strings.Split(c.InitialCluster, ",") {
		if name, u, ok := strings.Cut(strings.TrimSpace(m), "="); !ok || name == "" || u == "" {
			return fmt.Errorf("--initial-cluster: %q is not name=peerURL", m)
		}
	}
	return nil
}

// Endpoints are the client addresses to dial (host:port, https://host:port with TLS),
// with the real ports.
func (s *Server) Endpoints() []string {
	var eps []string
	for _, l := range s.etcd.Clients {
		ep := l.Addr().String()
		if s.clientTLS {
			ep = "https://" + ep
		}
		eps = append(eps, ep)
	}
	return eps
}

// LocalClient is a client of this member that calls its services in-process
// (etcd's v3client): no gRPC encoding, no loopback TCP, none of their goroutine
// hand-offs. Same server path, so the same guarantees: a write returns once it is
// committed (persisted in the WAL) and applied. It carries no credentials: with
// etcd's authentication on, every request through it is refused (ErrUserEmpty).
// The caller closes it before Close.
func (s *Server) LocalClient() *clientv3.Client { return v3client.New(s.etcd.Server) }

// Err reports a fatal serving error.
func (s *Server) Err() <-chan error { return s.etcd.Err() }

// Close stops etcd; later calls do nothing (a test may stop etcd before its cleanup).
func (s *Server) Close() {
	s.close.Do(func() {
		s.closing.Store(true)
		s.etcd.Close()
	})
}

func parseURLs(s, def string) ([]url.URL, error) {
	if strings.TrimSpace(s) == "" {
		s = def
	}
	var out []url.URL
	for _, part := range strings.Split(s, ",") {
		u, err := url.Parse(strings.TrimSpace(part))
		if err != nil {
			return nil, err
		}
		if u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "unix" {
			return nil, fmt.Errorf("%q: scheme must be http, https or unix", part)
		}
		out = append(out, *u)
	}
	return out, nil
}
