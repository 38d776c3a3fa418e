package dhcpd

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"lpmos.dev/lpmos/internal/netlab"
	"lpmos.dev/lpmos/internal/netlab/netlabtest"
	"lpmos.dev/lpmos/netboot"
)

// helperEnv marks this test binary re-executed inside the appliance's namespace: the
// namespace tests run the server there, so it learns its address from the receiving
// interface exactly as the appliance does.
const helperEnv = "LPMOS_DHCPD_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		if err := helperServer(); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// helperServer: LPMOS_DHCPD_HELPER=mode,iface[,start,end,prefix].
func helperServer() error {
	f := strings.Split(os.Getenv(helperEnv), ",")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg := Config{Mode: Mode(f[0]), HTTPPort: 8081, Logger: log.With("region", "[dc1]"),
		Booter: netboot.BooterFunc(func(ctx context.Context, m netboot.Machine) (*netboot.Plan, error) {
			return &netboot.Plan{Kernel: "vmlinuz"}, nil // --boot-unknown=true
		})}
	if cfg.Mode == ModeFull {
		cfg.Pool = &Pool{Start: netip.MustParseAddr(f[2]), End: netip.MustParseAddr(f[3]), Subnet: netip.MustParsePrefix(f[4]), LeaseTime: time.Hour}
		cfg.Leases = &MemLeases{}
	}
	s, err := New(cfg)
	if err != nil {
		return err
	}
	var conns []net.PacketConn
	for _, a := range []string{":67", ":4011"} {
		pc, err := Listen(ctx, a, f[1])
		if err != nil {
			return err
		}
		conns = append(conns, pc)
	}
	fmt.Println("HELPER READY")
	return s.Serve(ctx, conns...)
}

func startHelper(t *testing.T, ns, spec string) *netlabtest.Proc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p := netlabtest.Start(t, ns, "env", helperEnv+"="+spec, exe)
	p.Expect(t, "HELPER READY", 20*time.Second)
	return p
}

// TestUdhcpcFullMode: busybox udhcpc, a stock client, gets an address from
// full mode and renews it (SIGUSR1 makes it renew at once).
func TestUdhcpcFullMode(t *testing.T) {
	netlabtest.Require(t, "udhcpc")
	appl, client := netlabtest.NS(t, "appl"), netlabtest.NS(t, "cli")
	netlabtest.Link(t, appl, "nb0", "10.77.0.1/24", client, "eth0", "")
	srv := startHelper(t, appl, "full,nb0,10.77.0.100,10.77.0.150,10.77.0.0/24")

	script := filepath.Join(t.TempDir(), "udhcpc.script")
	// udhcpc calls the script for each event; print what it got and
	// configure the address so the renewal can be unicast.
	os.WriteFile(script, []byte(`#!/bin/sh
echo "EVENT $1 ip=$ip mask=$mask serverid=$serverid lease=$lease"
case "$1" in bound|renew) ip addr replace "$ip/$mask" dev "$interface" ;; esac
`), 0o755)
	cli := netlabtest.Start(t, client, "udhcpc", "-f", "-i", "eth0", "-s", script, "-t", "5", "-T", "2", "-A", "1")
	bound := cli.Expect(t, "EVENT bound", 30*time.Second)
	if !strings.Contains(bound, "ip=10.77.0.1") || !strings.Contains(bound, "serverid=10.77.0.1 ") || !strings.Contains(bound, "lease=3600") {
		t.Fatalf("bound with %q", bound)
	}
	srv.Expect(t, "DHCP: lease", 5*time.Second)
	cli.Cmd.Process.Signal(syscall.SIGUSR1)
	renew := cli.Expect(t, "EVENT renew", 30*time.Second)
	if ip := field(bound, "ip"); field(renew, "ip") != ip {
		t.Fatalf("renewed %q after bound %q", renew, bound)
	}
	// The renewal was unicast from the client's address (RENEWING state).
	srv.Expect(t, "DHCP: lease", 5*time.Second)
}

func field(line, key string) string {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return ""
}

// TestProxyBesideDnsmasq: dnsmasq plays the site's DHCP server (addresses
// only); the proxy in another namespace adds the boot file. A PXE DISCOVER
// from a third namespace gets both offers.
func TestProxyBesideDnsmasq(t *testing.T) {
	netlabtest.Require(t, "dnsmasq")
	site, appl, client := netlabtest.NS(t, "site"), netlabtest.NS(t, "appl"), netlabtest.NS(t, "cli")
	netlabtest.Bridge(t, site, "br0", "10.78.0.2/24")
	netlabtest.Plug(t, site, "br0", "pa", appl, "nb0", "10.78.0.1/24")
	netlabtest.Plug(t, site, "br0", "pc", client, "eth0", "")

	dir := t.TempDir()
	dns := netlabtest.Start(t, site, netlab.Dnsmasq{Interface: "br0", Range: "10.78.0.100,10.78.0.200,255.255.255.0,1h",
		LeaseFile: filepath.Join(dir, "leases"), LogDHCP: true}.Argv()...)
	dns.Expect(t, "DHCP, IP range", 10*time.Second)
	srv := startHelper(t, appl, "proxy,nb0")

	var conn net.PacketConn
	if err := netlab.Do(client, func() (err error) {
		conn, err = Listen(context.Background(), "0.0.0.0:68", "eth0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	d, err := dhcpv4.NewDiscovery(net.HardwareAddr{0x52, 0x54, 0x00, 0x77, 0x00, 0x01},
		dhcpv4.WithBroadcast(true),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC)),
		dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, guid))
	if err != nil {
		t.Fatal(err)
	}
	var fromSite, fromProxy *dhcpv4.DHCPv4
	buf := make([]byte, 1500)
	deadline := time.Now().Add(20 * time.Second)
	for attempt := 0; (fromSite == nil || fromProxy == nil) && time.Now().Before(deadline); attempt++ {
		// Retransmit like a ROM does (RFC 2131 4.1): the first broadcast
		// may race the bridge's port coming up.
		if _, err := conn.WriteTo(d.ToBytes(), &net.UDPAddr{IP: net.IPv4bcast, Port: 67}); err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		for fromSite == nil || fromProxy == nil {
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				break
			}
			r, err := dhcpv4.FromBytes(buf[:n])
			if err != nil || r.TransactionID != d.TransactionID || r.MessageType() != dhcpv4.MessageTypeOffer {
				continue
			}
			if r.ServerIdentifier().Equal(net.IPv4(10, 78, 0, 2)) {
				fromSite = r
			} else {
				fromProxy = r
			}
		}
	}
	if fromSite == nil || fromProxy == nil {
		t.Fatalf("offers: site %v, proxy %v", fromSite != nil, fromProxy != nil)
	}
	if fromSite.YourIPAddr.IsUnspecified() || fromSite.BootFileName != "" {
		t.Errorf("dnsmasq offer: %s", fromSite.Summary())
	}
	if !fromProxy.YourIPAddr.IsUnspecified() || fromProxy.BootFileName != "undionly.kpxe" ||
		!fromProxy.ServerIPAddr.Equal(net.IPv4(10, 78, 0, 1)) || !fromProxy.ServerIdentifier().Equal(net.IPv4(10, 78, 0, 1)) ||
		fromProxy.ClassIdentifier() != "PXEClient" {
		t.Errorf("proxy offer: %s", fromProxy.Summary())
	}
	srv.Expect(t, "iface=nb0", 5*time.Second)
}
