package appliance

import (
	"net/netip"
	"strings"
	"testing"

	"lpmos.dev/lpmos/internal/syncbuf"
)

// --boot-server-ip names the boot server; the boot subnet full DHCP needs still comes
// from the interface holding that address (it used to be left unset, and full mode
// failed with "pool range ... is outside subnet invalid Prefix").
func TestBootSubnetWithBootServerIP(t *testing.T) {
	for _, ifc := range []string{"lo", ""} {
		a := &Appliance{cfg: Config{Boot: BootConfig{BootServerIP: "127.0.0.1", DHCPInterface: ifc}}}
		ip, err := a.bootServerIP()
		if err != nil || ip != netip.MustParseAddr("127.0.0.1") {
			t.Fatalf("interface %q: bootServerIP = %v, %v", ifc, ip, err)
		}
		if a.bootSubnet != netip.MustParsePrefix("127.0.0.0/8") {
			t.Fatalf("interface %q: boot subnet = %v, want lo's 127.0.0.0/8", ifc, a.bootSubnet)
		}
	}
	// An address on no interface: proxy mode may still use it; the subnet stays unknown.
	a := &Appliance{cfg: Config{Boot: BootConfig{BootServerIP: "192.0.2.77"}}}
	if ip, err := a.bootServerIP(); err != nil || ip.String() != "192.0.2.77" || a.bootSubnet.IsValid() {
		t.Fatalf("foreign address: %v, %v, subnet %v", ip, err, a.bootSubnet)
	}
}

// Full DHCP starts with --boot-server-ip and --dhcp-interface (the Vagrant lab's
// documented flags), and refuses with a clear message when the address is on no
// interface.
func TestFullDHCPWithBootServerIP(t *testing.T) {
	dhcp, why := dhcpOnLoopback(t)
	if !dhcp {
		t.Skipf("SKIP: %s", why)
	}
	p := freePorts(t)
	cfg := testConfig(t, p, true)
	cfg.Boot.DHCPMode, cfg.Boot.DHCPRange = "full", "127.0.0.100,127.0.0.200"
	a, err := Start(t.Context(), cfg, &syncbuf.Buffer{})
	if err != nil {
		t.Fatalf("full DHCP with --boot-server-ip=127.0.0.1 --dhcp-interface=lo: %v", err)
	}
	a.Stop()

	cfg = testConfig(t, freePorts(t), true)
	cfg.Boot.DHCPMode, cfg.Boot.DHCPRange, cfg.Boot.BootServerIP = "full", "192.0.2.100,192.0.2.200", "192.0.2.1"
	if a, err := Start(t.Context(), cfg, &syncbuf.Buffer{}); err == nil {
		a.Stop()
		t.Fatal("full DHCP with a boot server address on no interface started")
	} else if !strings.Contains(err.Error(), "boot subnet is unknown") {
		t.Fatalf("error does not say why: %v", err)
	}
}
