package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"lpmos.dev/lpmos/federation"
	"lpmos.dev/lpmos/internal/connlimit"
	"lpmos.dev/lpmos/store"
)

// Server is a running control plane.
type Server struct {
	cfg      Config
	log      *slog.Logger
	home     *store.Store      // users, sessions, tokens, the control audit
	fleet    *federation.Fleet // every region, on home or on its own cluster
	fleetRun context.CancelFunc
	ln       net.Listener
	srv      *http.Server
	done     chan struct{}
	err      error
	cancel   context.CancelFunc
	overview *overview // what the pages and the push show, and remember between reads
	live     *hub      // the web UI's WebSocket push
	logins   loginLimits
	metrics  *controlMetrics
}

// Run is the control plane's main.
func Run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	cfg, err := ParseConfig(args, getenv, stderr)
	if err != nil {
		return err
	}
	s, err := Start(ctx, cfg, slog.New(slog.NewTextHandler(stderr, nil)).With("component", "control"))
	if err != nil {
		return err
	}
	return s.Wait()
}

// Start dials etcd and serves the API; it returns once listening.
func Start(ctx context.Context, cfg Config, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	st, err := openStore(ctx, cfg, log)
	if err != nil {
		return nil, fmt.Errorf("%w (start an appliance with its embedded etcd, or `make start-etcd`)", err)
	}
	if cfg.Clock != nil {
		st.SetClock(cfg.Clock)
	}
	s := &Server{cfg: cfg, log: log, home: st, done: make(chan struct{}), logins: newLoginLimits()}
	s.fleet = federation.New(st, cfg.RegionClusters, log.With("part", "fleet"))
	s.overview = newOverview(s.fleet, cfg.UnmatchedAlert)
	s.live = newHub(s.fleet, log, s.overview)
	s.metrics = newControlMetrics(s)
	s.fleet.Listen(federation.Listener{Change: s.live.onMirrorChange, Reach: s.live.onReach, CatchUp: s.metrics.catchUp})
	ln, err := net.Listen("tcp", cfg.Addr())
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("--port: listen on %s: %w", cfg.Addr(), err)
	}
	// Region clusters: one that does not answer is retried in the background (shown
	// unreachable), never a reason not to start.
	fleetCtx, cancelFleet := context.WithCancel(context.WithoutCancel(ctx))
	s.fleetRun = cancelFleet
	s.fleet.Start(fleetCtx)
	// A slow or idle client holds a connection only so long; the caps bound how many.
	s.ln = connlimit.New(ln, cfg.MaxConns, cfg.MaxConnsPerSource)
	s.srv = &http.Server{Handler: s.routes(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		IdleTimeout: 90 * time.Second, MaxHeaderBytes: 64 << 10}
	runCtx, cancelRun := context.WithCancel(ctx)
	s.cancel = cancelRun
	go s.live.run(runCtx)
	go s.run(runCtx)
	log.Info("control plane ready", "url", s.URL(), "etcd", cfg.EtcdEndpoints, "region_clusters", len(cfg.RegionClusters))
	return s, nil
}

func (s *Server) run(ctx context.Context) {
	defer close(s.done)
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case <-ctx.Done():
	case err := <-errc:
		s.err = err
	}
	shCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(shCtx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.log.Warn("shutdown", "err", err)
	}
	s.cancel() // also when Serve failed: the live push must stop before the store closes
	<-s.live.stopped
	s.fleetRun()
	s.fleet.Wait()
	s.home.Close()
}

// Fleet is the control plane's view of the regions and their clusters.
func (s *Server) Fleet() *federation.Fleet { return s.fleet }

// Wait blocks until the server stops.
func (s *Server) Wait() error { <-s.done; return s.err }

// Stop shuts down and waits.
func (s *Server) Stop() error { s.cancel(); return s.Wait() }

// URL is the base URL as seen from this host.
func (s *Server) URL() string {
	host := s.cfg.Host
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, strconv.Itoa(s.ln.Addr().(*net.TCPAddr).Port))
}

// openStore dials etcd. An etcd that does not answer yet (started after the control
// plane, or being restarted) is waited for with backoff and a log line per attempt, up to
// --etcd-wait (0: until stopped); a configuration etcd refuses (TLS, user) fails at once.
func openStore(ctx context.Context, cfg Config, log *slog.Logger) (*store.Store, error) {
	dial := store.DialConfig{Endpoints: cfg.EtcdEndpoints, Credentials: cfg.EtcdCredentials, Log: log}
	var deadline <-chan time.Time
	if cfg.EtcdWait > 0 {
		t := time.NewTimer(cfg.EtcdWait)
		defer t.Stop()
		deadline = t.C
	}
	backoff := time.Second
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := store.Open(actx, dial)
		cancel()
		if err == nil || !errors.Is(err, store.ErrNoAnswer) {
			return st, err
		}
		log.Warn("waiting for etcd", "endpoints", cfg.EtcdEndpoints, "attempt", attempt, "retry_in", backoff, "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (stopped while waiting)", err)
		case <-deadline:
			return nil, fmt.Errorf("%w (waited --etcd-wait %s)", err, cfg.EtcdWait)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 15*time.Second)
	}
}
