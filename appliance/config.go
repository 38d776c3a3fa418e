// Package appliance is the regional appliance: one per datacenter (--label=dc1). It
// watches its own region's tasks, answers agents on the regional API, heartbeats, and
// (with no --etcd-endpoints) runs an embedded etcd so one host needs nothing else.
package appliance

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/etcdserver"
)

// Config is the appliance's configuration. Flags win over environment variables.
type Config struct {
	Label         string
	APIPort       int
	APIHost       string // comma-separated listen addresses; empty: 127.0.0.1 and the boot network address
	EtcdEndpoints []string
	// EtcdCredentials are the client's TLS files and etcd user, for whichever etcd it
	// dials (the embedded one too).
	EtcdCredentials store.Credentials

	// Embedded etcd (used when EtcdEndpoints is empty), with etcd's own flag names.
	EtcdDataDir          string
	EtcdListenClientURLs string
	EtcdListenPeerURLs   string
	EtcdTLS              etcdserver.TLS // --etcd-cert-file, --etcd-client-cert-auth, ...

	HeartbeatTTL time.Duration
	RetryAfter   int // seconds an agent is told to wait after a 404 report
	// DeployTimeout fails a task still approved or installing this long after its
	// approval (an agent that died, a completion never acknowledged). 0: one hour.
	DeployTimeout time.Duration
	ImagesDir     string
	ImageRate     int64 // bytes per second per image stream; 0: unlimited
	// MaxConns and MaxConnsPerSource cap the API's open connections; 0: no cap.
	MaxConns, MaxConnsPerSource int
	// ReportBurstPerSource and ReportBurstPerMAC rate-limit POST /api/report (bursts,
	// refilled at 10/s per address and one per 2 s per MAC); 0: no limit.
	ReportBurstPerSource, ReportBurstPerMAC int
	// MaxStreams caps image streams at once; the rest are told to retry. 0: no cap.
	MaxStreams int
	// MaxStreamsPerSource caps one address's image streams (429 over it), so one host
	// cannot take every MaxStreams slot. 0: no cap.
	MaxStreamsPerSource int
	// MinStreamRate (bytes per second) and MinStreamWindow: an image stream whose
	// client takes less than MinStreamRate, with MinStreamWindow of slack, is cut and
	// its slot freed (streams.go). 0: no floor.
	MinStreamRate   int64
	MinStreamWindow time.Duration
	// AgentTokenKey is the file of the region key agent tokens derive from (created
	// on first start, mode 0600). "": <label>.agent-token.key beside the embedded
	// etcd's data dir, or beside ImagesDir with an external etcd.
	AgentTokenKey string
	LogLevel      string

	Boot BootConfig
}

// BootConfig is the netboot side: proxy/full DHCP, TFTP, iPXE over HTTP. The zero
// value turns DHCP and TFTP off (tests, and appliances that only serve the API).
type BootConfig struct {
	DHCPMode      string // "proxy", "full" or "off"; "" picks proxy with an interface, off without
	DHCPInterface string
	BootServerIP  string // advertised to clients; default: the DHCP interface's IPv4 address
	DHCPRange     string // full mode: "10.77.0.100,10.77.0.200"
	DHCPRouter    string
	DHCPDNS       string // comma-separated
	DHCPLeaseTime time.Duration
	BootUnknown   bool
	TFTPAddr      string // ":69"; empty: off
	IPXEDir       string // override the embedded iPXE binaries
	Kernel        string
	Initramfs     string
	KernelArgs    string // extra kernel arguments, space-separated
}

// embeddedClientURLs is where the embedded etcd listens for clients by default (and so
// where lpmos-appliance tasks finds it).
const embeddedClientURLs = "http://127.0.0.1:2379"

// envFor maps a flag to the environment variable of the v2.1 contract.
var envFor = map[string]string{
	"label":          "REGION_LABEL",
	"api-port":       "API_PORT",
	"etcd-endpoints": "ETCD_ENDPOINTS",
}

// ParseConfig reads args (without the program name) and the environment.
func ParseConfig(args []string, getenv func(string) string, stderr io.Writer) (Config, error) {
	var c Config
	var endpoints string
	fs := flag.NewFlagSet("lpmos-appliance", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.Label, "label", "", "region label, e.g. dc1: [a-z0-9-]+ (env REGION_LABEL; required)")
	fs.IntVar(&c.APIPort, "api-port", 8081, "regional API and HTTP boot port (env API_PORT)")
	fs.StringVar(&c.APIHost, "api-host", "", "comma-separated addresses the regional API listens on (default: 127.0.0.1 and the boot network address; 0.0.0.0 for every interface)")
	fs.StringVar(&endpoints, "etcd-endpoints", "", "comma-separated etcd endpoints; empty starts an embedded etcd (env ETCD_ENDPOINTS)")
	fs.StringVar(&c.EtcdDataDir, "etcd-data-dir", "", "embedded etcd data directory (default ./<label>.etcd)")
	fs.StringVar(&c.EtcdListenClientURLs, "etcd-listen-client-urls", embeddedClientURLs, "embedded etcd client URLs (a control plane on this host dials these)")
	fs.StringVar(&c.EtcdListenPeerURLs, "etcd-listen-peer-urls", "http://127.0.0.1:2380", "embedded etcd peer URLs")
	c.EtcdCredentials.AddFlags(fs)
	c.EtcdTLS.AddFlags(fs, "etcd-")
	fs.DurationVar(&c.HeartbeatTTL, "heartbeat-ttl", 30*time.Second, "TTL of the region heartbeat lease")
	fs.DurationVar(&c.DeployTimeout, "deploy-timeout", time.Hour, "fail a task not completed this long after its approval")
	fs.IntVar(&c.RetryAfter, "retry-after", 10, "seconds an agent is told to wait before trying again (no task matches yet, image streams full)")
	fs.StringVar(&c.ImagesDir, "images-dir", "images", "directory of OS images served to agents")
	fs.IntVar(&c.ReportBurstPerSource, "report-burst-per-source", 20, "reports one address may send at once (then 10/s); 0: no limit")
	fs.IntVar(&c.ReportBurstPerMAC, "report-burst-per-mac", 5, "reports for one MAC at once (then one per 2 s); 0: no limit")
	fs.IntVar(&c.MaxStreams, "max-streams", 64, "image streams at once; the rest get 503 + Retry-After and their agents wait (0: no cap)")
	fs.IntVar(&c.MaxStreamsPerSource, "max-streams-per-source", 4, "image streams at once from one address; over it 429 + Retry-After (0: no cap)")
	fs.Int64Var(&c.MinStreamRate, "min-stream-rate", 64<<10, "bytes per second an image stream's client must take (with --min-stream-window of slack), else the stream is cut and its slot freed (0: no floor)")
	fs.DurationVar(&c.MinStreamWindow, "min-stream-window", 30*time.Second, "how long an image stream may fall behind --min-stream-rate before it is cut")
	fs.IntVar(&c.MaxConns, "max-conns", 4096, "open connections the regional API holds in all (0: no cap)")
	fs.IntVar(&c.MaxConnsPerSource, "max-conns-per-source", 64, "open connections the regional API holds from one address (0: no cap)")
	fs.StringVar(&c.AgentTokenKey, "agent-token-key", "", "file of the region key agent tokens derive from, created on first start (default <label>.agent-token.key beside --etcd-data-dir, or beside --images-dir with --etcd-endpoints); every appliance of a region needs the same file")
	fs.Int64Var(&c.ImageRate, "image-rate", 0, "bytes per second per image stream (0: unlimited; 125000000 is 1 Gbit/s)")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	b := &c.Boot
	fs.StringVar(&b.DHCPMode, "dhcp-mode", "", "proxy, full or off (default: proxy with --dhcp-interface, off without)")
	fs.StringVar(&b.DHCPInterface, "dhcp-interface", "", "boot network interface for DHCP (e.g. eth1)")
	fs.StringVar(&b.BootServerIP, "boot-server-ip", "", "IPv4 address advertised to booting machines (default: the DHCP interface's)")
	fs.StringVar(&b.DHCPRange, "dhcp-range", "", "full mode: address pool, e.g. 10.77.0.100,10.77.0.200")
	fs.StringVar(&b.DHCPRouter, "dhcp-router", "", "full mode: default gateway offered (option 3)")
	fs.StringVar(&b.DHCPDNS, "dhcp-dns", "", "full mode: comma-separated DNS servers offered (option 6)")
	fs.DurationVar(&b.DHCPLeaseTime, "dhcp-lease-time", time.Hour, "full mode: lease time")
	fs.BoolVar(&b.BootUnknown, "boot-unknown", true, "boot the agent on machines without a task (they land as unmatched reports; nothing is written without approval)")
	fs.StringVar(&b.TFTPAddr, "tftp-addr", ":69", "TFTP listen address for the iPXE binaries; empty turns TFTP off")
	fs.StringVar(&b.IPXEDir, "ipxe-dir", "", "directory of iPXE binaries (default: the ones built into this binary)")
	fs.StringVar(&b.Kernel, "kernel", "build/initramfs/vmlinuz", "kernel booted by the agent's iPXE script")
	fs.StringVar(&b.Initramfs, "initramfs", "build/initramfs/initramfs.cpio.gz", "the agent's initramfs")
	fs.StringVar(&b.KernelArgs, "kernel-args", "console=tty0 console=ttyS0,115200", "extra kernel arguments for the agent")
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	// Environment fills only what no flag set.
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for name, env := range envFor {
		if v := getenv(env); v != "" && !set[name] {
			if err := fs.Set(name, v); err != nil {
				return Config{}, fmt.Errorf("%s=%q: %w", env, v, err)
			}
		}
	}
	c.EtcdCredentials.FromEnv(fs, getenv)
	c.EtcdEndpoints = splitList(endpoints)
	if c.EtcdDataDir == "" {
		c.EtcdDataDir = c.Label + ".etcd"
	}
	return c, c.Validate()
}

// Validate names the flag that is wrong.
func (c Config) Validate() error {
	if c.Label == "" {
		return errors.New("--label (or REGION_LABEL) is required, e.g. --label=dc1")
	}
	if err := store.ValidateRegion(c.Label); err != nil {
		return fmt.Errorf("--label: %q must match [a-z0-9-]+ (at most 63 characters)", c.Label)
	}
	if c.APIPort < 0 || c.APIPort > 65535 {
		return fmt.Errorf("--api-port: %d is not a port", c.APIPort)
	}
	if c.HeartbeatTTL < time.Second {
		return fmt.Errorf("--heartbeat-ttl: %s is below 1s", c.HeartbeatTTL)
	}
	if c.DeployTimeout != 0 && c.DeployTimeout < time.Minute {
		return fmt.Errorf("--deploy-timeout: %s is below 1m (an install takes minutes)", c.DeployTimeout)
	}
	if c.MaxConns < 0 || c.MaxConnsPerSource < 0 {
		return fmt.Errorf("--max-conns, --max-conns-per-source: must be >= 0")
	}
	if c.ImageRate < 0 {
		return fmt.Errorf("--image-rate: %d is negative", c.ImageRate)
	}
	if err := c.validateStreams(); err != nil {
		return err
	}
	if c.RetryAfter < 1 {
		return fmt.Errorf("--retry-after: %d must be at least 1", c.RetryAfter)
	}
	return c.Boot.validate()
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// deployTimeout is DeployTimeout with its default.
func (c Config) deployTimeout() time.Duration {
	if c.DeployTimeout == 0 {
		return time.Hour
	}
	return c.DeployTimeout
}

// validateStreams checks the image stream caps and the rate floor.
func (c Config) validateStreams() error {
	switch {
	case c.MaxStreams < 0 || c.MaxStreamsPerSource < 0:
		return errors.New("--max-streams, --max-streams-per-source: must be >= 0")
	case c.MinStreamRate < 0:
		return fmt.Errorf("--min-stream-rate: %d is negative", c.MinStreamRate)
	case c.MinStreamRate > 0 && c.MinStreamWindow <= 0:
		return fmt.Errorf("--min-stream-window: %s must be positive with --min-stream-rate", c.MinStreamWindow)
	case c.ImageRate > 0 && c.MinStreamRate > c.ImageRate:
		return fmt.Errorf("--min-stream-rate: %d is above --image-rate %d: every stream would be cut", c.MinStreamRate, c.ImageRate)
	}
	return nil
}
