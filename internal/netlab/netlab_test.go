package netlab_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/internal/netlab"
	"lpmos.dev/lpmos/internal/netlab/netlabtest"
)

// Two hosts on a bridge of a third: a server listening in one (Do) is reached from the
// other by Dial, and the host itself has no route there.
func TestBridgeDoDial(t *testing.T) {
	netlabtest.Require(t)
	site, a, b := netlabtest.NS(t, "site"), netlabtest.NS(t, "a"), netlabtest.NS(t, "b")
	netlabtest.Bridge(t, site, "br0", "10.79.0.1/24", "fd79::1/64")
	netlabtest.Plug(t, site, "br0", "pa", a, "eth0", "10.79.0.2/24")
	netlabtest.Plug(t, site, "br0", "pb", b, "eth0", "10.79.0.3/24")
	var ln net.Listener
	if err := netlab.Do(a, func() (err error) { ln, err = net.Listen("tcp4", "10.79.0.2:0"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Write([]byte("hello\n"))
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := netlab.Dial(ctx, b, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	n, _ := c.Read(buf)
	c.Close()
	if string(buf[:n]) != "hello\n" {
		t.Fatalf("read %q", buf[:n])
	}
	// The namespace's own command runs there: it sees its address.
	p := netlabtest.Start(t, a, "ip", "-4", "addr", "show", "eth0")
	p.Expect(t, "10.79.0.2/24", 10*time.Second)
}

func TestDnsmasqArgv(t *testing.T) {
	got := strings.Join(netlab.Dnsmasq{Interface: "br0", Range: "10.77.0.100,10.77.0.200,255.255.255.0,1h",
		LeaseFile: "/r/leases", RAPrefix: "fd77::", LogDHCP: true}.Argv(), " ")
	want := "dnsmasq --no-daemon --conf-file=/dev/null --port=0 --interface=br0 --bind-interfaces " +
		"--dhcp-range=10.77.0.100,10.77.0.200,255.255.255.0,1h --dhcp-leasefile=/r/leases " +
		"--enable-ra --dhcp-range=fd77::,ra-only,64,1h --log-dhcp --log-facility=-"
	if got != want {
		t.Errorf("\n got %s\nwant %s", got, want)
	}
}
