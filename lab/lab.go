// Package lab is a boot network on one host, for the end-to-end tests and `make demo`.
// Two network namespaces play two hosts of a datacenter: the "site" holds the boot
// network's bridge, dnsmasq as the site's DHCP server (addresses only, knowing nothing
// of booting, 10.77.0.1) and the QEMU machines on taps; the "appliance" host is joined
// to the bridge by a veth (10.77.0.2) and runs the real appliance and control plane
// binaries. Every process is started here and ended here by PID; the namespaces are
// deleted on Close. The host reaches the appliance's servers only through Dial (a
// socket opened inside its namespace), never through a route.
package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"lpmos.dev/lpmos/internal/netlab"
	"lpmos.dev/lpmos/internal/proc"
)

// The boot network's addresses (inside the namespace only).
const (
	Bridge       = "br0"
	BridgeIP     = "10.77.0.1" // the site's DHCP server
	BridgeCIDR   = BridgeIP + "/24"
	ApplianceIF  = "boot0" // the appliance's NIC on the boot network
	ApplianceIP  = "10.77.0.2"
	DHCPRange    = "10.77.0.100,10.77.0.200,255.255.255.0,1h"
	APIPort      = 8081
	ControlPort  = 8080
	EtcdEndpoint = "127.0.0.1:2379" // the appliance's embedded etcd, namespace loopback
)

// Config says where the lab keeps its files and finds the binaries.
type Config struct {
	Dir string // logs, disks, etcd data, images
	Bin string // directory with lpmos-appliance, lpmos-control, lpmos-image
	Log *slog.Logger
}

// Lab is a running boot network.
type Lab struct {
	cfg Config
	NS  string // the site: bridge, dnsmasq, machines
	// AppNS is the appliance's host: appliance, control plane, embedded etcd.
	AppNS string

	mu    sync.Mutex
	procs []*proc.Proc
	taps  int
	token string // the control plane's admin API token, once StartControl bootstrapped it
}

// New creates the namespaces, the bridge and the site DHCP server.
func New(ctx context.Context, cfg Config) (*Lab, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("lab: needs root (network namespaces, taps, DHCP ports)")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	if err := netlab.DnsmasqInstalled(); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	ns := netlab.Name("lpm-lab", "")
	l := &Lab{cfg: cfg, NS: ns, AppNS: ns + "-app"}
	if err := l.setup(ctx); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

func (l *Lab) setup(ctx context.Context) error {
	for _, ns := range []string{l.NS, l.AppNS} {
		if err := netlab.AddNS(ctx, ns); err != nil {
			return err
		}
	}
	// fd77::1 for the IPv6 router advertisement that ends iPXE's ~13 s wait (docs/lab.md, pitfall 2).
	if err := netlab.AddBridge(ctx, l.NS, Bridge, BridgeCIDR, "fd77::1/64"); err != nil {
		return err
	}
	// The appliance host, cabled to the boot network.
	if err := netlab.Plug(ctx, l.NS, Bridge, "vapp", l.AppNS, ApplianceIF, ApplianceIP+"/24"); err != nil {
		return err
	}
	_, err := l.Start("dnsmasq", netlab.Dnsmasq{Interface: Bridge, Range: DHCPRange,
		LeaseFile: filepath.Join(l.cfg.Dir, "dnsmasq.leases"), RAPrefix: "fd77::", LogDHCP: true}.Argv()...)
	return err
}

// Start runs argv on the site (the boot network's namespace), output to <Dir>/<name>.log.
func (l *Lab) Start(name string, argv ...string) (*proc.Proc, error) {
	return l.StartIn(l.NS, name, argv...)
}

// StartIn runs argv inside namespace ns, output to <Dir>/<name>.log; Close ends it.
func (l *Lab) StartIn(ns, name string, argv ...string) (*proc.Proc, error) {
	p, err := proc.Start(name, argv, proc.Options{NetNS: ns, Log: filepath.Join(l.cfg.Dir, name+".log")})
	if err != nil {
		return nil, err
	}
	l.track(p)
	return p, nil
}

// track has Close end p.
func (l *Lab) track(p *proc.Proc) {
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	l.cfg.Log.Info("lab: started", "name", p.Name, "pid", p.Pid())
}

// Close stops every process (newest first) and deletes the namespaces.
func (l *Lab) Close() {
	l.mu.Lock()
	procs := l.procs
	l.procs = nil
	l.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].Stop(5 * time.Second)
	}
	for _, ns := range []string{l.AppNS, l.NS} {
		if err := netlab.DelNS(ns); err != nil {
			l.cfg.Log.Warn("lab: namespace not deleted", "ns", ns, "err", err)
		}
	}
}

// Dial opens a connection from inside the appliance's namespace (netlab.Dial).
func (l *Lab) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return netlab.Dial(ctx, l.AppNS, network, addr)
}

// HTTPClient reaches servers on the appliance host (addresses like 127.0.0.1:8080).
func (l *Lab) HTTPClient() *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: l.Dial}}
}

// Forward serves a host loopback address by relaying each connection to addr inside
// the namespace (how `make demo` shows the UI at http://localhost:8080).
func (l *Lab) Forward(ctx context.Context, hostAddr, addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", hostAddr)
	if err != nil {
		return nil, err
	}
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r, err := l.Dial(ctx, "tcp", addr)
				if err != nil {
					return
				}
				defer r.Close()
				go func() { copyClose(r, c) }()
				copyClose(c, r)
			}()
		}
	}()
	return ln, nil
}

func copyClose(dst, src net.Conn) {
	io.Copy(dst, src)
	if tc, ok := dst.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
}
