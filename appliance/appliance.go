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
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"lpmos.dev/lpmos/appliance/applog"
	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/images"
	"lpmos.dev/lpmos/internal/connlimit"
	"lpmos.dev/lpmos/internal/ratelimit"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/etcdserver"
)

// Version is the appliance's version, set at build time with -ldflags.
var Version = "dev"

// Appliance is a running regional appliance.
type Appliance struct {
	cfg    Config
	opts   startOptions
	log    *slog.Logger
	etcd   *etcdserver.Server // nil with external etcd
	store  *store.Store
	etcdEP []string // the endpoints dialled
	hb     *store.Heartbeater

	refusedMu     sync.Mutex
	refusedLogged map[string]time.Time // when a refused connection was last logged, per cap
	lns           []net.Listener       // the regional API's, one per --api-host address
	srv           *http.Server
	images        *images.Catalog
	metrics       *applianceMetrics // its own registry: GET /metrics

	tokenKey    []byte            // the region key agent tokens derive from (--agent-token-key)
	rejectAudit *ratelimit.Bucket // rate limit of agent_token.reject audit entries
	reports     *reportLimiter    // rate limits of POST /api/report
	streamLog   *ratelimit.Keyed  // rate limit of the refused and cut image stream log lines, per reason
	imageGrants imageGrants       // agents admitted to their image, for resuming through a store outage

	bootURL    string       // the regional URL machines on the boot network use
	bootSubnet netip.Prefix // the boot interface's subnet (full-DHCP mode)
	servers    []func(context.Context) error

	// closers undo start-up: every resource registers one the moment it is open. A
	// failed Start runs them all; a started appliance runs them after it has stopped.
	closers closers
	// stopHeartbeat writes offline and revokes the lease, once (it is also a closer).
	stopHeartbeat func()

	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// startOptions are test seams: failAt, if set, is called after each start-up step
// (see the step calls in open and startBoot) and an error from it fails Start there.
type startOptions struct {
	failAt func(step string) error
}

// Start-up steps, in order, each right after the resource it names is open.
const (
	stepEtcd      = "etcd"      // embedded etcd serving (skipped with --etcd-endpoints)
	stepStore     = "store"     // etcd client connected
	stepListen    = "listen"    // API listener bound
	stepDHCP      = "dhcp"      // DHCP sockets bound (skipped with --dhcp-mode=off)
	stepTFTP      = "tftp"      // TFTP socket bound (skipped with --tftp-addr=)
	stepHeartbeat = "heartbeat" // region online
)

func (a *Appliance) step(name string) error {
	if a.opts.failAt == nil {
		return nil
	}
	if err := a.opts.failAt(name); err != nil {
		return fmt.Errorf("start-up step %s: %w", name, err)
	}
	return nil
}

// closers is a LIFO list of functions that release what start-up opened.
type closers struct{ fns []func() }

func (c *closers) add(f func()) { c.fns = append(c.fns, f) }

// run calls every closer, last added first, and forgets them.
func (c *closers) run() {
	for len(c.fns) > 0 {
		f := c.fns[len(c.fns)-1]
		c.fns = c.fns[:len(c.fns)-1]
		f()
	}
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
// and the appliance has shut down (status offline written). When Start fails, everything
// it had opened is closed again: no port stays bound.
func Start(ctx context.Context, cfg Config, logw io.Writer) (*Appliance, error) {
	return start(ctx, cfg, logw, startOptions{})
}

func start(ctx context.Context, cfg Config, logw io.Writer, opts startOptions) (*Appliance, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	a := &Appliance{cfg: cfg, opts: opts, log: applog.New(logw, cfg.Label, parseLevel(cfg.LogLevel)), done: make(chan struct{})}
	if err := a.open(ctx); err != nil {
		a.closers.run()
		return nil, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	a.cancel = cancel
	watchReady := make(chan struct{})
	go a.run(runCtx, watchReady)
	<-watchReady
	a.log.Info("Regional appliance ready", "api", a.URL(), "etcd", a.etcdEP, "embedded_etcd", a.etcd != nil, "version", Version)
	return a, nil
}

// open runs start-up up to the heartbeat, registering a closer for each resource as
// it opens it; on error the caller runs them.
func (a *Appliance) open(ctx context.Context) error {
	cfg := a.cfg
	// Startup runs to its end even if ctx ends meanwhile (a SIGTERM right after
	// launch): the appliance then stops through the normal path, which writes offline,
	// instead of leaving a half-started region behind.
	startCtx, cancelStart := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancelStart()

	endpoints := cfg.EtcdEndpoints
	etcdFlag := "--etcd-endpoints"
	if len(endpoints) == 0 {
		etcdFlag = "embedded etcd (--etcd-listen-client-urls)"
		dir, _ := filepath.Abs(cfg.EtcdDataDir)
		a.log.Info("Starting embedded etcd", "data_dir", dir, "client_urls", cfg.EtcdListenClientURLs)
		srv, err := etcdserver.Start(startCtx, etcdserver.Config{
			Name: cfg.Label, DataDir: cfg.EtcdDataDir,
			ListenClientURLs: cfg.EtcdListenClientURLs, ListenPeerURLs: cfg.EtcdListenPeerURLs,
			TLS: cfg.EtcdTLS, Log: a.log,
		})
		if err != nil {
			return fmt.Errorf("embedded etcd (--etcd-data-dir, --etcd-listen-client-urls, --etcd-listen-peer-urls): %w", err)
		}
		a.etcd = srv
		a.closers.add(srv.Close)
		endpoints = srv.Endpoints()
		if err := a.step(stepEtcd); err != nil {
			return err
		}
	}
	st, err := store.Open(startCtx, store.DialConfig{Endpoints: endpoints, Credentials: cfg.EtcdCredentials, Log: a.log})
	if err != nil {
		return fmt.Errorf("%s: %w", etcdFlag, err)
	}
	a.closers.add(func() { st.Close() })
	// Pinned to the region: a task is read in the region's own keys, never through the
	// control-only task index (which a region's etcd role may not read).
	if a.store, err = st.InRegion(cfg.Label); err != nil {
		return fmt.Errorf("--label: %w", err)
	}
	a.etcdEP = endpoints
	if err := a.step(stepStore); err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.ImagesDir, 0o755); err != nil {
		return fmt.Errorf("--images-dir: %w", err)
	}
	if a.images, err = images.OpenCatalog(cfg.ImagesDir); err != nil {
		return fmt.Errorf("--images-dir: %w", err)
	}
	if a.tokenKey, err = loadAgentTokenKey(cfg.agentTokenKeyPath()); err != nil {
		return fmt.Errorf("--agent-token-key: %w", err)
	}
	a.rejectAudit = ratelimit.NewBucket(60, time.Second)
	a.reports = newReportLimiter(cfg.ReportBurstPerSource, cfg.ReportBurstPerMAC)
	a.streamLog = ratelimit.NewKeyed(5, 10*time.Second)

	hosts, err := a.apiHosts()
	if err != nil {
		return err
	}
	port := cfg.APIPort
	for _, h := range hosts { // all on one port: the first listener picks it when 0
		addr := net.JoinHostPort(h, strconv.Itoa(port))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("--api-host/--api-port: listen on %s: %w", addr, err)
		}
		a.closers.add(func() { ln.Close() })
		port = ln.Addr().(*net.TCPAddr).Port
		limited := connlimit.New(ln, cfg.MaxConns, cfg.MaxConnsPerSource)
		limited.Refused = a.connRefused
		a.lns = append(a.lns, limited)
	}
	if err := a.step(stepListen); err != nil {
		return err
	}
	a.metrics = newApplianceMetrics(a)
	mux := a.routes()
	if a.servers, err = a.startBoot(startCtx, mux, port); err != nil {
		return err
	}
	// Timeouts bound what a slow or idle client holds: headers and bodies (reports are
	// small) must arrive in time, idle keep-alives are dropped. No write timeout: image
	// streams take minutes and long polls 60 s; the connection caps bound those.
	a.srv = &http.Server{Handler: a.metrics.http.Wrap(mux, mux), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		IdleTimeout: 90 * time.Second, MaxHeaderBytes: 64 << 10, ErrorLog: slog.NewLogLogger(a.log.Handler(), slog.LevelWarn)}
	hb, err := a.store.StartHeartbeat(startCtx, a.heartbeat, cfg.HeartbeatTTL, a.log)
	if err != nil {
		return fmt.Errorf("--label=%s: region heartbeat (--heartbeat-ttl=%s): %w", cfg.Label, cfg.HeartbeatTTL, err)
	}
	a.hb = hb
	a.stopHeartbeat = sync.OnceFunc(func() {
		// etcd answers in milliseconds; an unreachable one must not hold a stop for
		// long (the lease runs out within the TTL anyway).
		shCtx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		if err := hb.Stop(shCtx); err != nil {
			a.log.Warn("could not mark region offline", "err", err)
		} else {
			a.log.Info("Region marked offline")
		}
	})
	a.closers.add(a.stopHeartbeat)
	return a.step(stepHeartbeat)
}

// run serves until ctx ends or one of the running pieces fails, which stops the rest;
// then it shuts down (API, heartbeat offline) and closes what start-up opened.
func (a *Appliance) run(ctx context.Context, watchReady chan struct{}) {
	defer close(a.done)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := a.srv.Serve(a.lns[0]); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("regional API: %w", err)
		}
		return nil
	})
	for _, ln := range a.lns[1:] {
		g.Go(func() error {
			if err := a.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("regional API on %s: %w", ln.Addr(), err)
			}
			return nil
		})
	}
	g.Go(func() error { return a.watch(gctx, watchReady) })
	g.Go(func() error { a.tend(gctx); return nil })
	for _, serve := range a.servers {
		g.Go(func() error {
			err := serve(gctx)
			if err == nil && gctx.Err() == nil {
				err = errors.New("ended by itself")
			}
			if err != nil {
				return fmt.Errorf("boot service stopped: %w", err)
			}
			return nil
		})
	}
	if a.etcd != nil {
		g.Go(func() error {
			select {
			case err := <-a.etcd.Err():
				return fmt.Errorf("embedded etcd: %w", err)
			case <-gctx.Done():
				return nil
			}
		})
	}
	// The stop path: once anything ends the group (ctx, or the first failure), the API
	// stops taking requests and the region is marked offline while etcd still runs.
	g.Go(func() error {
		<-gctx.Done()
		a.log.Info("Shutting down")
		shCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := a.srv.Shutdown(shCtx); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Warn("API shutdown", "err", err)
		}
		a.stopHeartbeat()
		return nil
	})
	a.err = g.Wait()
	a.closers.run() // store, then embedded etcd (the rest is closed already)
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
	addr := a.lns[0].Addr().(*net.TCPAddr)
	host := addr.IP.String()
	if addr.IP.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, strconv.Itoa(addr.Port))
}

// apiHosts are the addresses the regional API listens on: --api-host's list when given
// (0.0.0.0 only when someone writes it); else this host's loopback and, when the
// appliance serves a boot network, its address there. Never every interface silently:
// the API hands out install plans and images.
func (a *Appliance) apiHosts() ([]string, error) {
	if a.cfg.APIHost != "" {
		return splitList(a.cfg.APIHost), nil
	}
	hosts := []string{"127.0.0.1"}
	if a.cfg.Boot.DHCPInterface != "" || a.cfg.Boot.BootServerIP != "" {
		ip, err := a.bootServerIP()
		if err != nil {
			return nil, err
		}
		if ip.IsValid() && !ip.IsLoopback() {
			hosts = append(hosts, ip.String())
		}
	}
	return hosts, nil
}

// watch logs the region's task lifecycle. Only /os/install/task/{label}/ is watched:
// other regions' tasks never reach this appliance.
func (a *Appliance) watch(ctx context.Context, ready chan struct{}) error {
	once := func() {
		select {
		case <-ready: // again: a resync after a compaction (store.WatchTasks)
			a.log.Warn("task watch resynced: etcd had compacted changes it missed (their log lines are lost; the tasks are not)")
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
		hb.Images = append(hb.Images, contract.ImageRef{OSRef: e.OSRef, SHA256: e.SHA256, Size: e.Size, Format: string(e.Format), Layout: e.Layout})
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

// connRefused logs a connection closed for being over a cap, at most once a minute per
// kind (a flood must not flood the log too).
func (a *Appliance) connRefused(source string, perSource bool) {
	kind, limit := "total", a.cfg.MaxConns
	if perSource {
		kind, limit = "per-source", a.cfg.MaxConnsPerSource
	}
	a.refusedMu.Lock()
	defer a.refusedMu.Unlock()
	if now := time.Now(); now.Sub(a.refusedLogged[kind]) >= time.Minute {
		if a.refusedLogged == nil {
			a.refusedLogged = map[string]time.Time{}
		}
		a.refusedLogged[kind] = now
		a.log.Warn("connection refused: over the "+kind+" cap (logged once a minute)", "source", source, "cap", limit)
	}
}
