package dhcpd

import (
	"context"
	"log/slog"
	"net"
	"os"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// BenchmarkFullDORA measures the protocol logic of one DISCOVER+REQUEST
// pair in full mode (no sockets), with a text logger at warn level as the
// appliance would run it under load.
func BenchmarkFullDORA(b *testing.B) {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	s, err := New(Config{Mode: ModeFull, Booter: &testBooter{}, HTTPPort: 8081, Logger: log, ServerIP: loopback,
		Pool: testPool("10.77.0.2", "10.77.0.254"), Leases: &MemLeases{}})
	if err != nil {
		b.Fatal(err)
	}
	req := request{dst: net.IPv4bcast, src: &net.UDPAddr{IP: net.IPv4(10, 77, 0, 1), Port: 67}}
	ctx := context.Background()
	d, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(1)), dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover), dhcpv4.WithRelay(net.IPv4(10, 77, 0, 1)))
	r, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(1)), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithRelay(net.IPv4(10, 77, 0, 1)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(127, 0, 0, 1))), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 77, 0, 2))))
	db, rb := d.ToBytes(), r.ToBytes()
	b.ReportAllocs()
	for b.Loop() {
		if o, _, _ := s.respond(ctx, db, req); o == nil {
			b.Fatal("no offer")
		}
		if a, _, _ := s.respond(ctx, rb, req); a == nil {
			b.Fatal("no ack")
		}
	}
}
