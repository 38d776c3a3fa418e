package appliance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"lpmos.dev/lpmos/appliance/applog"
	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/images"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/etcdserver"
)

// Version is the appliance's version, set at build time with -ldflags.
var Version = "dev"

// Appliance is a running regional appliance.
type Appliance struct {
	cfg    Config
	log    *slog.Logger
	etcd   *etcdserver.Server // nil with external etcd
	store  *store.Store
	hb     *store.Heartbeater
	ln     net.Listener
	srv    *http.Server
	images *images.Catalog

	bootURL    string       // the regional URL machines on the boot network use
	bootSubnet netip.Prefix // the boot interface's subnet (full-DHCP mode)
	servers    []func(context.Context) error

	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// Run is the appliance's main: parse flags and env, start, serve until ctx ends.
func Run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	cfg, err := ParseConfig(args, getenv, stderr)
	if err != nil {
		return err
	}
	a, err := Start(ctx, cfg, stderr)
	if err != nil {
		return err
	}
	return a.Wait()
}

// Start brings the appliance up: etcd (embedded or dialled), the regional API, the task
// watcher and the heartbeat. It returns once the API listens; Wait blocks until ctx ends
// and the appliance has shut down (status offline written).
func Start(ctx context.Context, cfg Config, logw io.Writer) (*Appliance, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	a := &Appliance{cfg: cfg, log: applog.New(logw, cfg.Label, parseLevel(cfg.LogLevel)), done: make(chan struct{})}
	ok := false
	defer func() {
		if !ok {
			a.closeBackends()
		}
	}()
	// Startup runs to its end even if ctx ends meanwhile (a SIGTERM right after
	// launch): the appliance then stops through the normal path, which writes offline,
	// instead of leaving a half-started region behind.
	startCtx, cancelStart := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancelStart()

	endpoints := cfg.EtcdEndpoints
	if len(endpoints) == 0 {
		dir, _ := filepath.Abs(cfg.EtcdDataDir)
		a.log.Info("Starting embedded etcd", "data_dir", dir, "client_urls", cfg.EtcdListenClientURLs)
		srv, err := etcdserver.Start(startCtx, etcdserver.Config{
			Name: cfg.Label, DataDir: cfg.EtcdDataDir,
			ListenClientURLs: cfg.EtcdListenClientURLs, ListenPeerURLs: cfg.EtcdListenPeerURLs,
		})
		if err != nil {
			return nil, err
		}
		a.etcd = srv
		endpoints = srv.Endpoints()
	}
	st, err := store.Open(startCtx, endpoints)
	if err != nil {
		return nil, err
	}
	a.store = st
	if err := os.MkdirAll(cfg.ImagesDir, 0o755); err != nil {
		return nil, fmt.Errorf("--images-dir: %w", err)
	}
	if a.images, err = images.OpenCatalog(cfg.ImagesDir); err != nil {
		return nil, fmt.Errorf("--images-dir: %w", err)
	}

	ln, err := net.Listen("tcp", cfg.Addr())
	if err != nil {
		return nil, fmt.Errorf("--api-port: listen on %s: %w", cfg.Addr(), err)
	}
	a.ln = ln
	runCtx, cancel := context.WithCancel(ctx)
	a.cancel = cancel
	mux := a.routes()
	servers, err := a.startBoot(startCtx, mux, ln.Addr().(*net.TCPAddr).Port)
	if err != nil {
		cancel()
		ln.Close()
		return nil, err
	}
	a.servers = servers
	a.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(a.log.Handler(), slog.LevelWarn)}
	hb, err := a.store.StartHeartbeat(startCtx, a.heartbeat, cfg.HeartbeatTTL, a.log)
	if err != nil {
		cancel()
		ln.Close()
		return nil, err
	}
	a.hb = hb
	ok = true

	watchReady := make(chan struct{})
	go a.run(runCtx, watchReady)
	<-watchReady
	a.log.Info("Regional appliance ready", "api", a.URL(), "etcd", endpoints, "embedded_etcd", a.etcd != nil, "version", Version)
	return a, nil
}

func (a *Appliance) run(ctx context.Context, watchReady chan struct{}) {
	defer close(a.done)
	serveErr := make(chan error, 1)
	go func() { serveErr <- a.srv.Serve(a.ln) }()
	watchErr := make(chan error, 1)
	go func() { watchErr <- a.watch(ctx, watchReady) }()
	bootErr := make(chan error, len(a.servers))
	running := len(a.servers)
	for _, serve := range a.servers {
		go func() { bootErr <- serve(ctx) }()
	}

	var etcdErr <-chan error
	if a.etcd != nil {
		etcdErr = a.etcd.Err()
	}
	select {
	case <-ctx.Done():
	case err := <-serveErr:
		a.err = fmt.Errorf("regional API: %w", err)
	case err := <-etcdErr:
		a.err = fmt.Errorf("embedded etcd: %w", err)
	case err := <-bootErr:
		running--
		a.err = fmt.Errorf("boot service stopped: %w", err)
	}
	a.cancel()
	a.log.Info("Shutting down")
	shCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.srv.Shutdown(shCtx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		a.log.Warn("API shutdown", "err", err)
	}
	if err := a.hb.Stop(shCtx); err != nil {
		a.log.Warn("could not mark region offline", "err", err)
	} else {
		a.log.Info("Region marked offline")
	}
	<-watchErr
	for ; running > 0; running-- {
		<-bootErr
	}
	a.closeBackends()
}

func (a *Appliance) closeBackends() {
	if a.store != nil {
		a.store.Close()
	}
	if a.etcd != nil {
		a.etcd.Close()
	}
}

// Wait blocks until the appliance has stopped and returns why, if not a clean stop.
func (a *Appliance) Wait() error {
	<-a.done
	return a.err
}

// Stop shuts the appliance down and waits.
func (a *Appliance) Stop() error {
	a.cancel()
	return a.Wait()
}

// URL is the regional API's base URL as seen from this host.
func (a *Appliance) URL() string {
	addr := a.ln.Addr().(*net.TCPAddr)
	host := a.cfg.APIHost
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, strconv.Itoa(addr.Port))
}

// watch logs the region's task lifecycle. Only /os/install/task/{label}/ is watched:
// other regions' tasks never reach this appliance.
func (a *Appliance) watch(ctx context.Context, ready chan struct{}) error {
	once := func() {
		select {
		case <-ready:
		default:
			close(ready)
		}
	}
	defer once()
	for ctx.Err() == nil {
		err := a.store.WatchTasks(ctx, a.cfg.Label, once, a.onTaskEvent)
		if ctx.Err() != nil {
			return nil
		}
		a.log.Warn("task watch ended; restarting", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	return nil
}

func (a *Appliance) onTaskEvent(ev store.TaskEvent) {
	switch {
	case ev.Created:
		a.log.Info("New task assigned: " + ev.TaskID)
		a.log.Info(fmt.Sprintf("Task %s ready for PXE boot (target MAC: %s)", ev.TaskID, ev.Metadata.TargetMAC))
	case ev.Part == store.PartMetadata && ev.Metadata == nil && !ev.Deleted:
		a.log.Warn("unreadable task metadata", "task", ev.TaskID)
	case ev.Status != "":
		a.log.Info(fmt.Sprintf("Task %s status: %s", ev.TaskID, ev.Status))
	}
}

// heartbeat is what the region advertises on every beat.
func (a *Appliance) heartbeat() store.Heartbeat {
	hb := store.Heartbeat{Region: a.cfg.Label, APIURL: a.URL(), Version: Version, Images: []contract.ImageRef{}}
	for _, e := range a.images.List() {
		hb.Images = append(hb.Images, contract.ImageRef{OSRef: e.OSRef, SHA256: e.SHA256, Size: e.Size, Format: string(e.Format)})
	}
	return hb
}

func parseLevel(s string) slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return slog.LevelInfo
	}
	return l
}
