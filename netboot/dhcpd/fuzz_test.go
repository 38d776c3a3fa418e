package dhcpd

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// FuzzRespond drives the whole protocol logic with arbitrary packets, in
// both modes. Invariants: no panic; a proxy reply never carries an address;
// every reply is a BOOTREPLY for the request's xid and MAC that parses back.
// Seeds: testdata/fuzz/FuzzRespond (real client shapes) plus the ones below.
func FuzzRespond(f *testing.F) {
	seed := func(mods ...dhcpv4.Modifier) {
		d, err := dhcpv4.New(append([]dhcpv4.Modifier{dhcpv4.WithHwAddr(macKnown)}, mods...)...)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(d.ToBytes(), false)
		f.Add(d.ToBytes(), true)
	}
	seed(append(pxe(iana.INTEL_X86PC), dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover))...)
	seed(append(ipxeClient(), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithClientIP(net.IPv4(10, 77, 0, 150)))...)
	seed(dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 77, 0, 120))))
	f.Add([]byte{1, 1, 6, 0}, false)

	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	proxy, err := New(Config{Mode: ModeProxy, Booter: &testBooter{bootUnknown: true}, HTTPPort: 8081})
	if err != nil {
		f.Fatal(err)
	}
	full, err := New(Config{Mode: ModeFull, Booter: &testBooter{}, HTTPPort: 8081, Pool: testPool("10.77.0.100", "10.77.0.103"), Leases: &MemLeases{}, Now: clk.now})
	if err != nil {
		f.Fatal(err)
	}
	req := request{dst: net.IPv4bcast, src: &net.UDPAddr{IP: net.IPv4zero, Port: 68}}
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, b []byte, fullMode bool) {
		s := proxy
		if fullMode {
			s = full
			clk.add(time.Minute) // leases expire and get reclaimed along the way
		}
		s.cfg.ServerIP = loopback
		reply, dst, _ := s.respond(ctx, b, req)
		if reply == nil {
			return
		}
		in, err := dhcpv4.FromBytes(b)
		if err != nil {
			t.Fatalf("answered an unparsable packet: %v", err)
		}
		if dst == nil {
			t.Fatal("reply without destination")
		}
		if reply.OpCode != dhcpv4.OpcodeBootReply || reply.TransactionID != in.TransactionID || reply.ClientHWAddr.String() != in.ClientHWAddr.String() {
			t.Fatalf("reply does not match request: %s", reply.Summary())
		}
		if !fullMode && !reply.YourIPAddr.IsUnspecified() {
			t.Fatalf("proxy offered an address: %v", reply.YourIPAddr)
		}
		if fullMode && !reply.YourIPAddr.IsUnspecified() && !s.cfg.Pool.contains(addr(reply.YourIPAddr)) {
			t.Fatalf("address outside the pool: %v", reply.YourIPAddr)
		}
		if _, err := dhcpv4.FromBytes(reply.ToBytes()); err != nil {
			t.Fatalf("reply does not parse: %v", err)
		}
	})
}
