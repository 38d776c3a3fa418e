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
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
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
	AppNS  string
	nsPath string // AppNS's, for Dial

	mu    sync.Mutex
	procs []*Proc
	taps  int
}

var seq atomic.Int32

// New creates the namespace, the bridge and the site DHCP server.
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
	ns := fmt.Sprintf("lpm-lab-%d-%d", os.Getpid(), seq.Add(1))
	app := ns + "-app"
	l := &Lab{cfg: cfg, NS: ns, AppNS: app, nsPath: "/run/netns/" + app}
	if err := run(ctx, "ip", "netns", "add", ns); err != nil {
		return nil, err
	}
	if err := run(ctx, "ip", "netns", "add", app); err != nil {
		l.Close()
		return nil, err
	}
	steps := [][]string{
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", ns, "link", "add", Bridge, "type", "bridge"},
		{"ip", "-n", ns, "addr", "add", BridgeCIDR, "dev", Bridge},
		// An IPv6 router advertisement on the link ends iPXE's ~13 s wait for one (LAB.md).
		{"ip", "-n", ns, "addr", "add", "fd77::1/64", "dev", Bridge, "nodad"},
		{"ip", "-n", ns, "link", "set", Bridge, "up"},
		// The appliance host, cabled to the boot network.
		{"ip", "-n", app, "link", "set", "lo", "up"},
		{"ip", "-n", ns, "link", "add", "vapp", "type", "veth", "peer", "name", ApplianceIF, "netns", app},
		{"ip", "-n", ns, "link", "set", "vapp", "master", Bridge},
		{"ip", "-n", ns, "link", "set", "vapp", "up"},
		{"ip", "-n", app, "addr", "add", ApplianceIP + "/24", "dev", ApplianceIF},
		{"ip", "-n", app, "link", "set", ApplianceIF, "up"},
	}
	for _, s := range steps {
		if err := run(ctx, s...); err != nil {
			l.Close()
			return nil, err
		}
	}
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		l.Close()
		return nil, errors.New("lab: dnsmasq not installed (apt-get install dnsmasq-base)")
	}
	_, err := l.Start("dnsmasq", "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0",
		"--interface="+Bridge, "--bind-interfaces", "--dhcp-range="+DHCPRange,
		"--dhcp-leasefile="+filepath.Join(cfg.Dir, "dnsmasq.leases"),
		"--enable-ra", "--dhcp-range=fd77::,ra-only,64,1h", "--log-dhcp", "--log-facility=-")
	if err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

func run(ctx context.Context, argv ...string) error {
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Proc is a process started in the namespace.
type Proc struct {
	Name    string
	LogPath string
	Cmd     *exec.Cmd
	done    chan struct{}
	err     error
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is the exit error, valid after Done.
func (p *Proc) Err() error { return p.err }

// Log returns what the process has printed so far.
func (p *Proc) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// Start runs argv on the site (the boot network's namespace), output to <Dir>/<name>.log.
func (l *Lab) Start(name string, argv ...string) (*Proc, error) {
	return l.StartIn(l.NS, name, argv...)
}

// StartIn runs argv inside namespace ns, output to <Dir>/<name>.log.
func (l *Lab) StartIn(ns, name string, argv ...string) (*Proc, error) {
	logPath := filepath.Join(l.cfg.Dir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	// `ip netns exec` execs the command, so the PID is the command's own.
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, LogPath: logPath, Cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	l.cfg.Log.Info("lab: started", "name", name, "pid", cmd.Process.Pid)
	return p, nil
}

// Stop ends p: SIGTERM, then SIGKILL after grace.
func (p *Proc) Stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.Cmd.Process.Kill()
		<-p.done
	}
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
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, ns := range []string{l.AppNS, l.NS} {
		if err := run(ctx, "ip", "netns", "del", ns); err != nil {
			l.cfg.Log.Warn("lab: namespace not deleted", "ns", ns, "err", err)
		}
	}
}

// Dial opens a connection from inside the appliance's namespace: the socket is created on a
// thread switched into the namespace, and keeps that namespace after the switch back.
func (l *Lab) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer orig.Close()
		target, err := os.Open(l.nsPath)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("setns %s: %w", l.NS, err)}
			return
		}
		var d net.Dialer
		c, derr := d.DialContext(ctx, network, addr)
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// The thread stays in the lab's namespace: keep it locked so it dies
			// with this goroutine instead of running other goroutines there.
			if c != nil {
				c.Close()
			}
			ch <- result{err: fmt.Errorf("setns back: %w", err)}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{c, derr}
	}()
	r := <-ch
	return r.c, r.err
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
