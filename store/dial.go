package store

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// Credentials are how a client checks etcd and proves itself to it: TLS files and an
// etcd user, with etcdctl's names (--cacert, --cert, --key, --user, --password) behind
// the --etcd- prefix. With etcd's --client-cert-auth and auth enabled, the client
// certificate's CN is the etcd user and no password is needed.
type Credentials struct {
	CACert, Cert, Key string // PEM files
	User, Password    string
	PasswordFile      string // read at Open; an argument is visible in ps, a file is not
}

// DialConfig is what Open needs to reach etcd.
type DialConfig struct {
	Endpoints []string // host:port (TLS when a CA or a certificate is given), http:// or https://
	Credentials
	// Log receives the etcd client's warnings and errors (nil: slog.Default()).
	Log *slog.Logger
}

// flags pairs each credential with its flag and environment variable (etcdctl's
// ETCDCTL_* spelled as the v2.1 contract spells ETCD_ENDPOINTS).
func (c *Credentials) flags() []struct {
	field            *string
	flag, env, usage string
} {
	return []struct {
		field            *string
		flag, env, usage string
	}{
		{&c.CACert, "etcd-cacert", "ETCD_CACERT", "CA certificate(s) that signed etcd's server certificate; turns TLS on"},
		{&c.Cert, "etcd-cert", "ETCD_CERT", "client certificate for etcd (with etcd's --client-cert-auth its CN is the etcd user)"},
		{&c.Key, "etcd-key", "ETCD_KEY", "key of --etcd-cert"},
		{&c.User, "etcd-user", "ETCD_USER", "etcd user when etcd's auth is on and no client certificate names one (USER or USER:PASSWORD)"},
		{&c.Password, "etcd-password", "ETCD_PASSWORD", "password of --etcd-user (--etcd-password-file keeps it out of ps)"},
		{&c.PasswordFile, "etcd-password-file", "ETCD_PASSWORD_FILE", "file holding the password of --etcd-user"},
	}
}

// AddFlags registers the credential flags on fs: every binary that dials etcd takes
// them the same way. Call FromEnv after fs.Parse.
func (c *Credentials) AddFlags(fs *flag.FlagSet) {
	for _, f := range c.flags() {
		fs.StringVar(f.field, f.flag, "", f.usage+" (env "+f.env+")")
	}
}

// FromEnv sets each credential flag the command line left unset from its environment
// variable: flags win over the environment.
func (c *Credentials) FromEnv(fs *flag.FlagSet, getenv func(string) string) {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for _, f := range c.flags() {
		if v := getenv(f.env); v != "" && !set[f.flag] {
			*f.field = v
		}
	}
}

// dialTimeouts: the probe answers within seconds whatever etcd does; the first request
// waits longer, for an etcd that is still starting (a control plane started beside its
// appliance).
const (
	probeStepTimeout = 2 * time.Second
	pingTimeout      = 15 * time.Second
)

// Open dials etcd and checks that it answers, so a wrong endpoint, CA, certificate or
// user fails at start with a message naming the flag instead of on the first request
// (or, with TLS, a silent retry until a deadline).
func Open(ctx context.Context, d DialConfig) (*Store, error) {
	cfg, err := d.ClientConfig()
	if err != nil {
		return nil, err
	}
	if err := d.probe(ctx, cfg.TLS); err != nil {
		return nil, err
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd client for %v: %w", d.Endpoints, d.explainAuth(err))
	}
	s := New(cli)
	pctx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	if err := s.Ping(pctx); err != nil {
		cli.Close()
		if explained := d.explainAuth(err); explained != err {
			return nil, fmt.Errorf("etcd at %v: %w", d.Endpoints, explained)
		}
		return nil, fmt.Errorf("etcd at %v %w: %w", d.Endpoints, ErrNoAnswer, err)
	}
	return s, nil
}

// ErrNoAnswer: no etcd endpoint answered in time (down, not started yet, unreachable),
// as opposed to a configuration etcd refused (TLS, user): a caller may wait and retry.
var ErrNoAnswer = errors.New("does not answer")

// reconnectParams: gRPC's default reconnect backoff grows to 120 s, so a client whose
// etcd was unreachable for a minute (a WAN link down) found it again up to two minutes
// after the link came back. Capped at 2 s it does within a few seconds; a connection
// attempt (TCP and TLS) gets 3 s before the next one, enough across a WAN.
var reconnectParams = grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
	MinConnectTimeout: 3 * time.Second,
}

// ClientConfig checks the flags against each other and reads the files; Open dials
// with it (tests and tools that need a bare etcd client use it too).
func (d DialConfig) ClientConfig() (clientv3.Config, error) {
	cfg := clientv3.Config{Endpoints: d.Endpoints, DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(reconnectParams)},
		// A link that drops packets (a WAN cut) leaves the connection looking open:
		// pings find it dead, and the reconnect starts, within 15 s.
		DialKeepAliveTime: 10 * time.Second, DialKeepAliveTimeout: 5 * time.Second,
		Logger: clientLogger(d.Log)}
	if len(d.Endpoints) == 0 {
		return cfg, errors.New("--etcd-endpoints: no endpoint")
	}
	c := d.Credentials
	secure := c.CACert != "" || c.Cert != ""
	for _, ep := range d.Endpoints {
		switch scheme, _ := splitEndpoint(ep); {
		case scheme == "https":
			secure = true
		case scheme == "http" && (c.CACert != "" || c.Cert != ""):
			return cfg, fmt.Errorf("--etcd-endpoints: %s is plaintext (http://) but --etcd-cacert/--etcd-cert ask for TLS: use https:// or host:port", ep)
		}
	}
	if (c.Cert == "") != (c.Key == "") {
		return cfg, errors.New("--etcd-cert and --etcd-key go together")
	}
	if secure {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if c.CACert != "" {
			pem, err := os.ReadFile(c.CACert)
			if err != nil {
				return cfg, fmt.Errorf("--etcd-cacert: %w", err)
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return cfg, fmt.Errorf("--etcd-cacert %s: no PEM certificate in it", c.CACert)
			}
		}
		if c.Cert != "" {
			kp, err := tls.LoadX509KeyPair(c.Cert, c.Key)
			if err != nil {
				return cfg, fmt.Errorf("--etcd-cert, --etcd-key: %w", err)
			}
			// etcd would refuse it with a bare TLS alert: say why here.
			if now := time.Now(); now.After(kp.Leaf.NotAfter) || now.Before(kp.Leaf.NotBefore) {
				return cfg, fmt.Errorf("--etcd-cert %s: valid only from %s to %s, not now: etcd refuses it (issue a new one)",
					c.Cert, kp.Leaf.NotBefore.UTC().Format(time.RFC3339), kp.Leaf.NotAfter.UTC().Format(time.RFC3339))
			}
			// Read again at each handshake when the files changed: a client outlives its
			// certificate, and one renewed in place must be what the next connection
			// (a reconnect after a WAN cut) presents, not the expired one read at start.
			r := &certReloader{certFile: c.Cert, keyFile: c.Key, pair: &kp, stamp: fileStamp(c.Cert, c.Key), log: d.Log}
			tc.GetClientCertificate = r.get
		}
		cfg.TLS = tc
	}
	user, password := c.User, c.Password
	if u, p, ok := strings.Cut(user, ":"); ok && password == "" && c.PasswordFile == "" {
		user, password = u, p // etcdctl's --user=USER:PASSWORD
	}
	if c.PasswordFile != "" {
		if password != "" {
			return cfg, errors.New("--etcd-password and --etcd-password-file: give one")
		}
		b, err := os.ReadFile(c.PasswordFile)
		if err != nil {
			return cfg, fmt.Errorf("--etcd-password-file: %w", err)
		}
		password = strings.TrimRight(string(b), "\r\n")
	}
	switch {
	case user == "" && password != "":
		return cfg, errors.New("--etcd-password needs --etcd-user")
	case user != "" && password == "":
		return cfg, fmt.Errorf("--etcd-user %s needs --etcd-password or --etcd-password-file (with a client certificate, its CN is the user: leave --etcd-user out)", user)
	}
	cfg.Username, cfg.Password = user, password
	return cfg, nil
}

// certReloader presents the client pair its files hold at each TLS handshake: a
// certificate renewed in place (the same paths: lpmos-control certs add-region --force,
// or an operator's tooling) is picked up without a restart. While the files are being
// replaced (a new certificate beside the old key), it presents the pair read last.
type certReloader struct {
	certFile, keyFile string
	log               *slog.Logger

	mu    sync.Mutex
	pair  *tls.Certificate
	stamp string // the files' size and mtime when pair was read
}

func (r *certReloader) get(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s := fileStamp(r.certFile, r.keyFile); s != "" && s != r.stamp {
		if kp, err := tls.LoadX509KeyPair(r.certFile, r.keyFile); err == nil {
			r.pair, r.stamp = &kp, s
			log := r.log
			if log == nil {
				log = slog.Default()
			}
			log.Info("etcd client certificate changed on disk: the next connections present the new one",
				"cert", r.certFile, "valid_until", kp.Leaf.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	return r.pair, nil
}

// fileStamp is the files' sizes and modification times ("" if one cannot be read).
func fileStamp(paths ...string) string {
	var b strings.Builder
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return ""
		}
		fmt.Fprintf(&b, "%d/%d;", fi.Size(), fi.ModTime().UnixNano())
	}
	return b.String()
}

// splitEndpoint returns an endpoint's scheme ("" for host:port) and address.
func splitEndpoint(ep string) (scheme, addr string) {
	if s, rest, ok := strings.Cut(ep, "://"); ok {
		return s, rest
	}
	return "", ep
}

// probe speaks to every endpoint by hand, at once, before the gRPC client does: that
// client retries a failed TLS handshake until its deadline and then reports only the
// deadline. The probe finds a plaintext client against a TLS etcd (and the reverse), a
// server certificate from another CA, a client certificate etcd refuses, within a few
// seconds, and names the flag. An endpoint that does not answer (etcd still starting)
// is no finding: the ping waits for it.
func (d DialConfig) probe(ctx context.Context, tc *tls.Config) error {
	errs := make([]error, len(d.Endpoints))
	var wg sync.WaitGroup
	for i, ep := range d.Endpoints {
		scheme, addr := splitEndpoint(ep)
		if scheme != "" && scheme != "http" && scheme != "https" {
			continue // unix sockets: local, no TLS question
		}
		wg.Go(func() {
			if tc != nil {
				errs[i] = d.probeTLS(ctx, ep, addr, tc)
			} else {
				errs[i] = probePlain(ctx, ep, addr)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// healthRequest is etcd's /health over HTTP/1.1: an answer proves the connection
// (and so the TLS handshake, client certificate included) was accepted.
func healthRequest(addr string) string {
	return "GET /health HTTP/1.1\r\nHost: " + addr + "\r\nConnection: close\r\n\r\n"
}

// exchange sends /health on conn and returns the start of the answer.
func exchange(conn net.Conn, addr string) (string, error) {
	conn.SetDeadline(time.Now().Add(probeStepTimeout))
	if _, err := io.WriteString(conn, healthRequest(addr)); err != nil {
		return "", err
	}
	buf := make([]byte, 512)
	n, err := io.ReadAtLeast(bufio.NewReader(conn), buf, len("HTTP/1.1 200"))
	return string(buf[:n]), err
}

func (d DialConfig) probeTLS(ctx context.Context, ep, addr string, tc *tls.Config) error {
	dctx, cancel := context.WithTimeout(ctx, probeStepTimeout)
	defer cancel()
	conn, err := (&tls.Dialer{Config: tc}).DialContext(dctx, "tcp", addr)
	if err == nil {
		defer conn.Close()
		// TLS 1.3: the server checks the client certificate after the client's side of the
		// handshake is done; a refusal arrives as an alert on the first read.
		_, err = exchange(conn, addr)
	}
	if err == nil {
		return nil
	}
	var (
		unknownCA x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		notTLS    tls.RecordHeaderError
		opErr     *net.OpError
	)
	roots := "the system's CAs (no --etcd-cacert given)"
	if d.CACert != "" {
		roots = d.CACert
	}
	switch {
	case errors.As(err, &unknownCA):
		issuer := ""
		if unknownCA.Cert != nil {
			issuer = unknownCA.Cert.Issuer.CommonName
		}
		return fmt.Errorf("--etcd-cacert: etcd at %s presents a certificate issued by %q, which %s does not vouch for", ep, issuer, roots)
	case errors.As(err, &hostname):
		return fmt.Errorf("--etcd-endpoints: etcd at %s presents a certificate for %v, not for %s: reissue it with that name (lpmos-control certs init --hosts)",
			ep, append(hostname.Certificate.DNSNames, ipStrings(hostname.Certificate.IPAddresses)...), hostname.Host)
	case errors.As(err, &invalid):
		return fmt.Errorf("etcd at %s: its server certificate (etcd's --cert-file) is not valid: %v", ep, invalid)
	case errors.As(err, &notTLS):
		return fmt.Errorf("--etcd-cacert/--etcd-cert: etcd at %s does not speak TLS (it serves http://): use http:// without --etcd-cacert/--etcd-cert, or give etcd --cert-file and --key-file", ep)
	case errors.As(err, &opErr) && opErr.Op == "remote error":
		return d.explainAlert(ep, opErr.Err.Error())
	}
	// Nothing TLS-shaped came back (EOF, a timeout): a plaintext etcd waits for a
	// request line and never answers a TLS hello. Ask it in plaintext to tell.
	if answer, perr := plainHealth(ctx, addr); perr == nil && strings.HasPrefix(answer, "HTTP/") && !strings.Contains(answer, "HTTPS") {
		return fmt.Errorf("--etcd-cacert/--etcd-cert: etcd at %s does not speak TLS (it serves http://): use http:// without --etcd-cacert/--etcd-cert, or give etcd --cert-file and --key-file", ep)
	}
	return nil
}

// explainAlert turns the TLS alert etcd sent into what to change.
func (d DialConfig) explainAlert(ep, alert string) error {
	switch {
	case strings.Contains(alert, "certificate required"):
		return fmt.Errorf("--etcd-cert: etcd at %s asks for a client certificate (it runs with --client-cert-auth): give --etcd-cert and --etcd-key", ep)
	case d.Cert == "":
		return fmt.Errorf("etcd at %s refused the TLS handshake (%s)", ep, alert)
	case strings.Contains(alert, "expired"):
		return fmt.Errorf("--etcd-cert %s: etcd at %s refused it as expired (%s)", d.Cert, ep, alert)
	default:
		return fmt.Errorf("--etcd-cert %s: etcd at %s refused the client certificate (%s): it is not signed by a CA etcd trusts (etcd's --trusted-ca-file)", d.Cert, ep, alert)
	}
}

// probePlain finds a TLS etcd dialled without TLS.
func probePlain(ctx context.Context, ep, addr string) error {
	answer, err := plainHealth(ctx, addr)
	if err == nil && strings.HasPrefix(answer, "HTTP/") && !strings.Contains(answer, "HTTPS") {
		return nil // a plaintext server answered in plaintext
	}
	var dialErr *net.OpError
	if errors.As(err, &dialErr) && dialErr.Op == "dial" {
		return nil // not up (yet): the ping waits
	}
	// No plaintext answer: does it speak TLS? The certificate does not matter here.
	hctx, cancel := context.WithTimeout(ctx, probeStepTimeout)
	defer cancel()
	conn, err := (&tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true}}).DialContext(hctx, "tcp", addr)
	var opErr *net.OpError
	if err == nil || errors.As(err, &opErr) && opErr.Op == "remote error" {
		if conn != nil {
			conn.Close()
		}
		return fmt.Errorf("--etcd-cacert: etcd at %s speaks TLS, this client plaintext: give --etcd-cacert (the CA of etcd's certificate; and --etcd-cert/--etcd-key if etcd asks for a client certificate), or use https://", ep)
	}
	return nil
}

// plainHealth asks /health without TLS.
func plainHealth(ctx context.Context, addr string) (string, error) {
	dctx, cancel := context.WithTimeout(ctx, probeStepTimeout)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(dctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	return exchange(conn, addr)
}

// explainAuth names the flag behind an authentication error of etcd's.
func (d DialConfig) explainAuth(err error) error {
	who := "this client (no --etcd-user, no --etcd-cert)"
	switch {
	case d.User != "":
		who = "--etcd-user " + strings.SplitN(d.User, ":", 2)[0]
	case d.Cert != "":
		who = "the CN of --etcd-cert " + d.Cert
		if kp, kerr := tls.LoadX509KeyPair(d.Cert, d.Key); kerr == nil {
			who = fmt.Sprintf("etcd user %q (%s)", kp.Leaf.Subject.CommonName, who)
		}
	}
	switch {
	case errors.Is(err, rpctypes.ErrAuthFailed):
		return fmt.Errorf("--etcd-user/--etcd-password: etcd refused them: %w", err)
	case errors.Is(err, rpctypes.ErrUserEmpty):
		return fmt.Errorf("etcd's auth is on and this client names no user: give --etcd-cert/--etcd-key (its CN is the user) or --etcd-user: %w", err)
	case errors.Is(err, rpctypes.ErrUserNotFound), errors.Is(err, rpctypes.ErrPermissionDenied):
		return fmt.Errorf("%s: %w (is it an etcd user with a role on LPMOS's keys? etcdctl user get)", who, err)
	}
	return err
}

func ipStrings(ips []net.IP) []string {
	out := make([]string, len(ips))
	for i, ip := range ips {
		out[i] = ip.String()
	}
	return out
}
