// Package netlab builds throw-away networks for the project's tests and lab: network
// namespaces playing hosts, bridges playing a switch, taps for QEMU machines, veth
// cables, and dnsmasq as a site's DHCP server (with an IPv6 router advertisement).
// Code runs inside a namespace either as a process (proc.Options.NetNS) or in this
// process on a thread switched into it (Do, Dial: the sockets opened there keep the
// namespace). Only addresses inside namespaces the caller created are ever used, and
// everything is undone by PID and `ip netns del`. It imports nothing of the project.
//
// The shape of a boot network (docs/lab.md):
//
//	netlab.AddNS(ctx, site); netlab.AddNS(ctx, appl)
//	netlab.AddBridge(ctx, site, "br0", "10.77.0.1/24", "fd77::1/64")
//	netlab.Plug(ctx, site, "br0", "vapp", appl, "boot0", "10.77.0.2/24")
//	netlab.AddTap(ctx, site, "tap0", "br0")            // a QEMU machine's NIC
//	proc.Start("dnsmasq", netlab.Dnsmasq{...}.Argv(), proc.Options{NetNS: site})
package netlab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Run runs a command, returning its output in the error when it fails.
func Run(ctx context.Context, argv ...string) error {
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func runAll(ctx context.Context, steps [][]string) error {
	for _, s := range steps {
		if err := Run(ctx, s...); err != nil {
			return err
		}
	}
	return nil
}

var seq atomic.Int32

// Name returns a namespace name unique on the host: prefix-<pid>-<n>, then -tag if tag
// is not empty.
func Name(prefix, tag string) string {
	n := fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), seq.Add(1))
	if tag != "" {
		n += "-" + tag
	}
	return n
}

// AddNS creates network namespace ns with its loopback up.
func AddNS(ctx context.Context, ns string) error {
	if err := Run(ctx, "ip", "netns", "add", ns); err != nil {
		return err
	}
	return Run(ctx, "ip", "-n", ns, "link", "set", "lo", "up")
}

// DelNS deletes namespace ns (and with it its links); it waits at most 10 s.
func DelNS(ns string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return Run(ctx, "ip", "netns", "del", ns)
}

// AddBridge creates bridge br in ns with addrs (CIDR; IPv6 ones without duplicate
// address detection, usable at once) and brings it up.
func AddBridge(ctx context.Context, ns, br string, addrs ...string) error {
	steps := [][]string{{"ip", "-n", ns, "link", "add", br, "type", "bridge"}}
	for _, a := range addrs {
		s := []string{"ip", "-n", ns, "addr", "add", a, "dev", br}
		if strings.Contains(a, ":") {
			s = append(s, "nodad")
		}
		steps = append(steps, s)
	}
	return runAll(ctx, append(steps, []string{"ip", "-n", ns, "link", "set", br, "up"}))
}

// AddTap creates tap device tap in ns as a port of bridge br, up: a QEMU machine's
// cable (QEMU runs in ns and opens it with -netdev tap,ifname=tap).
func AddTap(ctx context.Context, ns, tap, br string) error {
	return runAll(ctx, [][]string{
		{"ip", "-n", ns, "tuntap", "add", "dev", tap, "mode", "tap"},
		{"ip", "-n", ns, "link", "set", tap, "master", br},
		{"ip", "-n", ns, "link", "set", tap, "up"},
	})
}

// AddVeth cables namespace a (interface ifA, address addrA in CIDR form or "") to
// namespace b (ifB, addrB) with a veth pair, both ends up.
func AddVeth(ctx context.Context, a, ifA, addrA, b, ifB, addrB string) error {
	steps := [][]string{{"ip", "-n", a, "link", "add", ifA, "type", "veth", "peer", "name", ifB, "netns", b}}
	for _, e := range []struct{ ns, ifname, addr string }{{a, ifA, addrA}, {b, ifB, addrB}} {
		if e.addr != "" {
			steps = append(steps, []string{"ip", "-n", e.ns, "addr", "add", e.addr, "dev", e.ifname})
		}
		steps = append(steps, []string{"ip", "-n", e.ns, "link", "set", e.ifname, "up"})
	}
	return runAll(ctx, steps)
}

// Plug cables namespace host to bridge br of namespace site: a veth whose end port (in
// site) is a port of br, and whose other end ifname (in host) has addr (CIDR, or "").
func Plug(ctx context.Context, site, br, port, host, ifname, addr string) error {
	if err := AddVeth(ctx, site, port, "", host, ifname, addr); err != nil {
		return err
	}
	return Run(ctx, "ip", "-n", site, "link", "set", port, "master", br)
}

// Do runs f on a goroutine whose thread is switched into namespace ns, and returns f's
// error. Sockets opened in f stay in ns afterwards; goroutines f starts do not run in
// ns. Should switching back fail, the thread stays locked and dies with the goroutine.
func Do(ns string, f func() error) error {
	ch := make(chan error, 1)
	go func() { ch <- do(ns, f) }()
	return <-ch
}

func do(ns string, f func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns %s: %w", ns, err)
	}
	ferr := f()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		return errors.Join(ferr, fmt.Errorf("setns back: %w", err)) // thread stays locked
	}
	runtime.UnlockOSThread()
	return ferr
}

// Dial opens a connection from inside namespace ns (an http.Transport's DialContext, a
// gRPC dialer): the host reaches a namespace's servers this way, never through a route.
func Dial(ctx context.Context, ns, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := Do(ns, func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil && c != nil {
		c.Close()
		c = nil
	}
	return c, err
}

// Dnsmasq is a site's DHCP server: addresses only, knowing nothing of booting.
type Dnsmasq struct {
	Interface string // serve on this interface only (a bridge)
	Range     string // --dhcp-range, e.g. "10.77.0.100,10.77.0.200,255.255.255.0,1h"; "" = no DHCPv4
	LeaseFile string // --dhcp-leasefile; needed with Range
	// RAPrefix sends IPv6 router advertisements for this /64 (e.g. "fd77::", with an
	// address of it on Interface): they end iPXE's ~13 s wait for a router (docs/lab.md, pitfall 2).
	RAPrefix string
	LogDHCP  bool // log every DHCP exchange
}

// Argv is dnsmasq's command line, in the foreground, logging to stderr.
func (d Dnsmasq) Argv() []string {
	a := []string{"dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0",
		"--interface=" + d.Interface, "--bind-interfaces"}
	if d.Range != "" {
		a = append(a, "--dhcp-range="+d.Range)
	}
	if d.LeaseFile != "" {
		a = append(a, "--dhcp-leasefile="+d.LeaseFile)
	}
	if d.RAPrefix != "" {
		a = append(a, "--enable-ra", "--dhcp-range="+d.RAPrefix+",ra-only,64,1h")
	}
	if d.LogDHCP {
		a = append(a, "--log-dhcp")
	}
	return append(a, "--log-facility=-")
}

// DnsmasqInstalled says how to install dnsmasq when it is missing.
func DnsmasqInstalled() error {
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		return errors.New("dnsmasq not installed (apt-get install dnsmasq-base)")
	}
	return nil
}
