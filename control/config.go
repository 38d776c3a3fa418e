// Package control is the control plane: the REST API and web pages through which people
// create, approve and follow tasks across every region. It reaches regions only through
// etcd (package store).
package control

import (
	"flag"
	"fmt"
	"io"
	"strconv"
)

// Config is the control plane's configuration. Flags win over environment variables.
type Config struct {
	Port           int
	Host           string
	EtcdEndpoints  []string
	UnmatchedAlert int // unmatched reports per region above which the dashboard alerts
}

// ParseConfig reads args (without the program name) and the environment.
func ParseConfig(args []string, getenv func(string) string, stderr io.Writer) (Config, error) {
	var c Config
	var endpoints string
	fs := flag.NewFlagSet("lpmos-control", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&c.Port, "port", 8080, "HTTP port of the web UI and REST API")
	fs.StringVar(&c.Host, "host", "", "address to listen on (default: all interfaces)")
	fs.StringVar(&endpoints, "etcd-endpoints", "", "comma-separated etcd endpoints (env ETCD_ENDPOINTS; default 127.0.0.1:2379, an appliance's embedded etcd on this host)")
	fs.IntVar(&c.UnmatchedAlert, "unmatched-alert", 5, "alert on the dashboard when a region has more unmatched reports than this")
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	c.EtcdEndpoints = splitEndpoints(endpoints, getenv)
	return c, c.Validate()
}

// Validate names the flag that is wrong.
func (c Config) Validate() error {
	if c.Port < 0 || c.Port > 65535 {
		return fmt.Errorf("--port: %d is not a port", c.Port)
	}
	if len(c.EtcdEndpoints) == 0 {
		return fmt.Errorf("--etcd-endpoints: at least one endpoint is required")
	}
	return nil
}

// Addr is the listen address.
func (c Config) Addr() string { return c.Host + ":" + strconv.Itoa(c.Port) }
