// Package control is the control plane: the REST API and web pages through which people
// create, approve and follow tasks across every region. It reaches regions only through
// etcd (package store).
package control

import (
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"lpmos.dev/lpmos/federation"
	"lpmos.dev/lpmos/store"
)

// Config is the control plane's configuration. Flags win over environment variables.
type Config struct {
	Port          int
	Host          string
	EtcdEndpoints []string
	// EtcdWait bounds the wait for etcd at start-up (0: until stopped).
	EtcdWait time.Duration
	// EtcdCredentials are the TLS files and etcd user it dials etcd with.
	EtcdCredentials store.Credentials
	UnmatchedAlert  int // unmatched reports per region above which the dashboard alerts
	// AllowedHosts are the Host header values (without port) served; others get 421
	// (DNS rebinding). localhost, 127.0.0.1, ::1 and Host are always allowed; "*"
	// allows any (behind a proxy that checks Host itself).
	AllowedHosts []string
	// SessionIdle and SessionMax end a web session after that long without a request,
	// and that long after the login.
	SessionIdle, SessionMax time.Duration
	// Clock, when set, replaces the store's clock (tests of expiry without sleeping).
	Clock func() time.Time
	// MaxConns and MaxConnsPerSource cap open connections (0: no cap).
	MaxConns, MaxConnsPerSource int
	// RegionClusters are the regions on their own etcd named by --regions-file and
	// --region (docs/federation.md); `regions add NAME --etcd URL` names more in etcd.
	RegionClusters []store.RegionCluster
}

// Session defaults.
const (
	DefaultSessionIdle = 30 * time.Minute
	DefaultSessionMax  = 12 * time.Hour
)

// withDefaults fills what a Config literal (a test's) leaves zero: listen on loopback
// only, the default session limits, and the always-allowed host names.
func (c Config) withDefaults() Config {
	if c.Host == "" {
		c.Host = "127.0.0.1"
	}
	if c.SessionIdle == 0 {
		c.SessionIdle = DefaultSessionIdle
	}
	if c.SessionMax == 0 {
		c.SessionMax = DefaultSessionMax
	}
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	if ip := net.ParseIP(c.Host); ip == nil || !ip.IsUnspecified() {
		hosts = append(hosts, strings.ToLower(strings.Trim(c.Host, "[]")))
	}
	for _, h := range c.AllowedHosts {
		if h = strings.ToLower(strings.TrimSpace(h)); h != "" {
			hosts = append(hosts, strings.Trim(h, "[]"))
		}
	}
	c.AllowedHosts = hosts
	return c
}

// ParseConfig reads args (without the program name) and the environment.
func ParseConfig(args []string, getenv func(string) string, stderr io.Writer) (Config, error) {
	var c Config
	var endpoints string
	fs := flag.NewFlagSet("lpmos-control", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&c.Port, "port", 8080, "HTTP port of the web UI and REST API")
	var allowed string
	fs.StringVar(&c.Host, "host", "127.0.0.1", "address to listen on (0.0.0.0: all interfaces; then name the host's DNS names in --allowed-hosts)")
	fs.StringVar(&allowed, "allowed-hosts", "", "comma-separated Host header names served besides localhost, 127.0.0.1, ::1 and --host (DNS rebinding protection; * allows any)")
	fs.DurationVar(&c.EtcdWait, "etcd-wait", 0, "at start, wait this long for etcd to answer (0: until stopped); TLS or user errors fail at once")
	fs.DurationVar(&c.SessionIdle, "session-idle", DefaultSessionIdle, "a web session ends after this long without a request")
	fs.DurationVar(&c.SessionMax, "session-max", DefaultSessionMax, "a web session ends this long after the login")
	fs.StringVar(&endpoints, "etcd-endpoints", "", "comma-separated etcd endpoints (env ETCD_ENDPOINTS; default 127.0.0.1:2379, an appliance's embedded etcd on this host)")
	c.EtcdCredentials.AddFlags(fs)
	fs.IntVar(&c.MaxConns, "max-conns", 1024, "open connections in all (0: no cap)")
	fs.IntVar(&c.MaxConnsPerSource, "max-conns-per-source", 64, "open connections from one address (0: no cap)")
	var regionsFile string
	var regionFlags []string
	fs.StringVar(&regionsFile, "regions-file", "", "YAML file naming regions on their own etcd: name, endpoints, TLS files, user (env LPMOS_REGIONS_FILE; docs/federation.md)")
	fs.Func("region", "a region on its own etcd, NAME=ENDPOINT[,ENDPOINT...], dialled with the --etcd-* credentials (repeatable; wins over --regions-file)", func(v string) error {
		regionFlags = append(regionFlags, v)
		return nil
	})
	fs.IntVar(&c.UnmatchedAlert, "unmatched-alert", 5, "alert on the dashboard when a region has more unmatched reports than this")
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	c.EtcdCredentials.FromEnv(fs, getenv)
	c.EtcdEndpoints = splitEndpoints(endpoints, getenv)
	if regionsFile == "" {
		regionsFile = getenv("LPMOS_REGIONS_FILE")
	}
	var fromFile, fromFlags []store.RegionCluster
	if regionsFile != "" {
		var err error
		if fromFile, err = federation.LoadRegionsFile(regionsFile); err != nil {
			return Config{}, err
		}
	}
	for _, v := range regionFlags {
		rc, err := federation.ParseRegionFlag(v, c.EtcdCredentials)
		if err != nil {
			return Config{}, err
		}
		fromFlags = append(fromFlags, rc)
	}
	c.RegionClusters = federation.MergeStatic(fromFile, fromFlags)
	if allowed != "" {
		c.AllowedHosts = strings.Split(allowed, ",")
	}
	return c, c.Validate()
}

// Validate names the flag that is wrong.
func (c Config) Validate() error {
	if c.Port < 0 || c.Port > 65535 {
		return fmt.Errorf("--port: %d is not a port", c.Port)
	}
	if c.SessionIdle < 0 || c.SessionMax < 0 {
		return fmt.Errorf("--session-idle, --session-max: must be positive")
	}
	if len(c.EtcdEndpoints) == 0 {
		return fmt.Errorf("--etcd-endpoints: at least one endpoint is required")
	}
	return nil
}

// Addr is the listen address.
func (c Config) Addr() string { return c.Host + ":" + strconv.Itoa(c.Port) }
