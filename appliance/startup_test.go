package appliance

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"lpmos.dev/lpmos/internal/syncbuf"

	"lpmos.dev/lpmos/netboot/dhcpd"
	"lpmos.dev/lpmos/store/storetest"
)

// ports are the loopback ports one appliance binds.
type ports struct {
	api, etcdClient, etcdPeer int // TCP
	tftp                      int // UDP
}

// freePorts finds four ports free on 127.0.0.1 (held together, so distinct, then
// released for the appliance to bind).
func freePorts(t *testing.T) ports {
	t.Helper()
	var p ports
	for _, dst := range []*int{&p.api, &p.etcdClient, &p.etcdPeer} {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		*dst = ln.Addr().(*net.TCPAddr).Port
	}
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p.tftp = c.LocalAddr().(*net.UDPAddr).Port
	return p
}

func loopback(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

// bindDHCP binds udp4 :port on lo the way dhcpd.Listen does, but without
// SO_REUSEADDR: it fails while any socket of ours (dhcpd.Listen binds to lo with
// SO_REUSEADDR) or an unbound one still holds the port.
func bindDHCP(port int) error {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = syscall.BindToDevice(int(fd), "lo") })
		return errors.Join(err, serr)
	}}
	c, err := lc.ListenPacket(context.Background(), "udp4", ":"+strconv.Itoa(port))
	if err != nil {
		return err
	}
	return c.Close()
}

var dhcpPorts = []int{dhcpd.PortServer, dhcpd.PortPXE}

// dhcpOnLoopback says whether this test can run proxy DHCP on lo (root, and ports
// 67/4011 on lo not held by another process), and checks that bindDHCP sees a
// socket dhcpd.Listen holds.
func dhcpOnLoopback(t *testing.T) (bool, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		return false, "DHCP on ports 67/4011 needs root"
	}
	for _, p := range dhcpPorts {
		if err := bindDHCP(p); err != nil {
			return false, "DHCP port busy on this host: " + err.Error()
		}
	}
	c, err := dhcpd.Listen(t.Context(), ":"+strconv.Itoa(dhcpd.PortServer), "lo")
	if err != nil {
		t.Fatalf("dhcpd.Listen on lo: %v", err)
	}
	held := bindDHCP(dhcpd.PortServer)
	c.Close()
	if held == nil {
		t.Fatal("bindDHCP succeeded while dhcpd.Listen held the port: the probe cannot see a leak")
	}
	if err := bindDHCP(dhcpd.PortServer); err != nil {
		t.Fatalf("port %d still busy after closing it: %v", dhcpd.PortServer, err)
	}
	return true, ""
}

// assertFree binds every port the appliance had (API, embedded etcd client and peer,
// TFTP, DHCP when it ran) and fails t for any still held.
func assertFree(t *testing.T, p ports, dhcp bool) {
	t.Helper()
	for name, port := range map[string]int{"API": p.api, "etcd client": p.etcdClient, "etcd peer": p.etcdPeer} {
		if port == 0 {
			continue
		}
		ln, err := net.Listen("tcp4", loopback(port))
		if err != nil {
			t.Errorf("%s port %d still bound: %v", name, port, err)
			continue
		}
		ln.Close()
	}
	c, err := net.ListenPacket("udp4", loopback(p.tftp))
	if err != nil {
		t.Errorf("TFTP port %d still bound: %v", p.tftp, err)
	} else {
		c.Close()
	}
	if dhcp {
		for _, port := range dhcpPorts {
			if err := bindDHCP(port); err != nil {
				t.Errorf("DHCP port %d still bound: %v", port, err)
			}
		}
	}
}

// testConfig is an appliance with embedded etcd, the API and TFTP on p, and proxy
// DHCP on lo when dhcp.
func testConfig(t *testing.T, p ports, dhcp bool) Config {
	cfg := Config{
		Label: "dc1", APIHost: "127.0.0.1", APIPort: p.api,
		EtcdDataDir:          t.TempDir(),
		EtcdListenClientURLs: "http://" + loopback(p.etcdClient), EtcdListenPeerURLs: "http://" + loopback(p.etcdPeer),
		HeartbeatTTL: 5 * time.Second, RetryAfter: 2, ImagesDir: t.TempDir(), LogLevel: "info",
		Boot: BootConfig{BootServerIP: "127.0.0.1", TFTPAddr: loopback(p.tftp), DHCPMode: "off"},
	}
	if dhcp {
		cfg.Boot.DHCPMode, cfg.Boot.DHCPInterface = "proxy", "lo"
	}
	return cfg
}

func assertLabelled(t *testing.T, logs string) {
	t.Helper()
	for _, l := range strings.Split(strings.TrimSpace(logs), "\n") {
		if l != "" && !strings.Contains(l, " [dc1] ") {
			t.Errorf("log line without label: %q", l)
		}
	}
}

// A start-up that fails after any step closes everything opened before it: the ports
// of the API, the embedded etcd, TFTP and DHCP can be bound again at once.
func TestFailedStartupFreesPorts(t *testing.T) {
	dhcp, why := dhcpOnLoopback(t)
	if !dhcp {
		t.Logf("DHCP off in these cases: %s", why)
	}
	for _, step := range []string{stepEtcd, stepStore, stepListen, stepDHCP, stepTFTP, stepHeartbeat} {
		t.Run(step, func(t *testing.T) {
			if step == stepDHCP && !dhcp {
				t.Skipf("SKIP: %s", why)
			}
			p := freePorts(t)
			injected := errors.New("injected failure")
			var reached []string
			logs := &syncbuf.Buffer{}
			a, err := start(t.Context(), testConfig(t, p, dhcp), logs, startOptions{failAt: func(s string) error {
				reached = append(reached, s)
				if s == step {
					return injected
				}
				return nil
			}})
			if !errors.Is(err, injected) || a != nil {
				t.Fatalf("start = %v, %v; want the injected failure at %s", a, err, step)
			}
			if !strings.Contains(err.Error(), "start-up step "+step) || reached[len(reached)-1] != step {
				t.Fatalf("failed at %v: %v", reached, err)
			}
			assertFree(t, p, dhcp)
			if step == stepHeartbeat && !strings.Contains(logs.String(), "[dc1] Region marked offline") {
				t.Errorf("a region that went online during a failed start-up is not marked offline:\n%s", logs)
			}
			assertLabelled(t, logs.String())
		})
	}
}

// Real failures: a port already taken. The error names the flag, and nothing opened
// before stays bound.
func TestStartupPortInUse(t *testing.T) {
	for _, tc := range []struct {
		name, flag string
		hold       func(p ports) string // the held address
	}{
		{"etcd client", "--etcd-listen-client-urls", func(p ports) string { return "tcp:" + loopback(p.etcdClient) }},
		{"API", "--api-port", func(p ports) string { return "tcp:" + loopback(p.api) }},
		{"TFTP", "--tftp-addr", func(p ports) string { return "udp:" + loopback(p.tftp) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := freePorts(t)
			netw, addr, _ := strings.Cut(tc.hold(p), ":")
			var held interface{ Close() error }
			var err error
			if netw == "tcp" {
				held, err = net.Listen("tcp4", addr)
			} else {
				held, err = net.ListenPacket("udp4", addr)
			}
			if err != nil {
				t.Fatal(err)
			}
			logs := &syncbuf.Buffer{}
			a, err := Start(t.Context(), testConfig(t, p, false), logs)
			if err == nil {
				a.Stop()
				t.Fatalf("start with %s held succeeded", addr)
			}
			if !strings.Contains(err.Error(), tc.flag) || !strings.Contains(err.Error(), "address already in use") {
				t.Fatalf("error %q does not name %s and the cause", err, tc.flag)
			}
			held.Close()
			assertFree(t, p, false)
			assertLabelled(t, logs.String())
		})
	}
}

// A running piece that fails (here the API listener, closed under the server) stops
// the others: Wait returns that failure, the region is marked offline, every port is
// released.
func TestRunningFailureStopsAll(t *testing.T) {
	dhcp, why := dhcpOnLoopback(t)
	if !dhcp {
		t.Logf("DHCP off: %s", why)
	}
	e := storetest.Start(t)
	p := freePorts(t)
	cfg := testConfig(t, p, dhcp)
	cfg.EtcdEndpoints = e.Endpoints
	logs := &syncbuf.Buffer{}
	a, err := Start(t.Context(), cfg, logs)
	if err != nil {
		t.Fatal(err)
	}
	e.WaitValue(t, "/os/region/dc1/status", "online", 10*time.Second)
	a.lns[0].Close()
	waited := make(chan error, 1)
	go func() { waited <- a.Wait() }()
	select {
	case err = <-waited:
	case <-time.After(30 * time.Second):
		t.Fatal("the appliance did not stop after its API listener failed")
	}
	if err == nil || !strings.HasPrefix(err.Error(), "regional API: ") {
		t.Fatalf("Wait = %v, want the API failure", err)
	}
	if v, _ := e.Get(t, "/os/region/dc1/status"); v != "offline" {
		t.Errorf("status = %q after the failure", v)
	}
	p.etcdClient, p.etcdPeer = 0, 0 // external etcd: still running
	assertFree(t, p, dhcp)
	out := logs.String()
	i, j := strings.Index(out, "[dc1] Shutting down"), strings.Index(out, "[dc1] Region marked offline")
	if i < 0 || j < i {
		t.Errorf("log lacks shutdown then offline:\n%s", out)
	}
	assertLabelled(t, out)
}

// The regional API listens where its agents are, never on every interface unasked:
// loopback, plus the boot network's address when the appliance serves one.
func TestAPIListensOnlyWhereAsked(t *testing.T) {
	for _, c := range []struct {
		boot BootConfig
		host string
		want string
	}{
		{BootConfig{}, "", "127.0.0.1"},
		{BootConfig{DHCPMode: "proxy", BootServerIP: "10.99.0.1"}, "", "127.0.0.1,10.99.0.1"},
		{BootConfig{DHCPMode: "proxy", BootServerIP: "10.99.0.1"}, "192.0.2.7, 127.0.0.1", "192.0.2.7,127.0.0.1"},
		{BootConfig{}, "0.0.0.0", "0.0.0.0"},
	} {
		a := &Appliance{cfg: Config{APIHost: c.host, Boot: c.boot}}
		hosts, err := a.apiHosts()
		if err != nil || strings.Join(hosts, ",") != c.want {
			t.Errorf("api-host %q, boot %+v: %v %v, want %s", c.host, c.boot, hosts, err, c.want)
		}
	}
	// By default nothing answers on another local address.
	etcd := storetest.Start(t)
	a, err := Start(t.Context(), Config{Label: "dc1", EtcdEndpoints: etcd.Endpoints, HeartbeatTTL: 5 * time.Second, RetryAfter: 2, ImagesDir: t.TempDir()}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop()
	port := strings.TrimPrefix(a.URL(), "http://127.0.0.1:")
	if c, err := net.DialTimeout("tcp", "127.0.0.2:"+port, 2*time.Second); err == nil {
		c.Close()
		t.Fatalf("the API answers on 127.0.0.2:%s without --api-host", port)
	}
	if c, err := net.DialTimeout("tcp", "127.0.0.1:"+port, 2*time.Second); err != nil {
		t.Fatalf("the API does not answer on loopback: %v", err)
	} else {
		c.Close()
	}
}
