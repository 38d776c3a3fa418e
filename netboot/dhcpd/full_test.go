package dhcpd

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// clock is an injectable clock: tests move time instead of sleeping.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func testPool(start, end string) *Pool {
	return &Pool{
		Start: netip.MustParseAddr(start), End: netip.MustParseAddr(end),
		Subnet: netip.MustParsePrefix("10.77.0.0/24"), Router: netip.MustParseAddr("10.77.0.1"),
		DNS: []netip.Addr{netip.MustParseAddr("10.77.0.1")}, LeaseTime: time.Hour,
	}
}

func mac(i int) net.HardwareAddr { return net.HardwareAddr{0x02, 0, 0, 0, byte(i >> 8), byte(i)} }

// dora runs DISCOVER/OFFER/REQUEST/ACK for m and returns the ACK.
func (h *harness) dora(m net.HardwareAddr, mods ...dhcpv4.Modifier) (offer, ack *dhcpv4.DHCPv4) {
	t := h.t
	t.Helper()
	d := packet(t, m, dhcpv4.MessageTypeDiscover, mods...)
	h.send(d.ToBytes())
	offer = recv(t, h.client, d.TransactionID, 5*time.Second)
	if offer == nil {
		return nil, nil
	}
	if offer.MessageType() != dhcpv4.MessageTypeOffer {
		t.Fatalf("DISCOVER got %v", offer.MessageType())
	}
	r := packet(t, m, dhcpv4.MessageTypeRequest, append(mods,
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(offer.ServerIdentifier())),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr)))...)
	h.send(r.ToBytes())
	ack = recv(t, h.client, r.TransactionID, 5*time.Second)
	if ack == nil {
		t.Fatal("no ACK")
	}
	return offer, ack
}

func TestFullDORA(t *testing.T) {
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	store := &notifyStore{deleted: make(chan netip.Addr, 10)}
	h := startServer(t, Config{Mode: ModeFull, Booter: &testBooter{}, Pool: testPool("10.77.0.100", "10.77.0.102"), Leases: store, Now: clk.now})

	offer, ack := h.dora(mac(1))
	if ack.MessageType() != dhcpv4.MessageTypeAck || !ack.YourIPAddr.Equal(offer.YourIPAddr) {
		t.Fatalf("ACK %v for %v, offer %v", ack.MessageType(), ack.YourIPAddr, offer.YourIPAddr)
	}
	if got := ack.YourIPAddr.String(); got != "10.77.0.100" {
		t.Errorf("first address %s", got)
	}
	if ack.IPAddressLeaseTime(0) != time.Hour || ack.IPAddressRenewalTime(0) != 30*time.Minute || ack.SubnetMask().String() != "ffffff00" ||
		len(ack.Router()) != 1 || !ack.Router()[0].Equal(net.IPv4(10, 77, 0, 1)) || len(ack.DNS()) != 1 {
		t.Errorf("options: %s", ack.Summary())
	}
	if ack.BootFileName != "" {
		t.Errorf("non-boot client got boot file %q", ack.BootFileName)
	}
	ls, _ := store.Leases(context.Background())
	if len(ls) != 1 || ls[0].MAC != mac(1).String() || ls[0].IP.String() != "10.77.0.100" {
		t.Fatalf("stored leases %+v", ls)
	}

	// Renewal (RENEWING: ciaddr set, no server id) extends the lease.
	clk.add(40 * time.Minute)
	rn := packet(t, mac(1), dhcpv4.MessageTypeRequest, dhcpv4.WithClientIP(ack.YourIPAddr))
	h.send(rn.ToBytes())
	if r := recv(t, h.client, rn.TransactionID, 5*time.Second); r == nil || r.MessageType() != dhcpv4.MessageTypeAck || !r.YourIPAddr.Equal(ack.YourIPAddr) {
		t.Fatalf("renewal: %v", r)
	}
	ls, _ = store.Leases(context.Background())
	if want := clk.now().Add(time.Hour); !ls[0].Expiry.Equal(want) {
		t.Errorf("renewed expiry %v, want %v", ls[0].Expiry, want)
	}

	// The same client asking again keeps its address; others get new ones.
	_, again := h.dora(mac(1))
	_, second := h.dora(mac(2))
	_, third := h.dora(mac(3))
	seen := map[string]bool{}
	for _, a := range []*dhcpv4.DHCPv4{again, second, third} {
		if seen[a.YourIPAddr.String()] {
			t.Fatalf("address %v handed out twice", a.YourIPAddr)
		}
		seen[a.YourIPAddr.String()] = true
	}
	if !again.YourIPAddr.Equal(ack.YourIPAddr) {
		t.Errorf("client moved from %v to %v", ack.YourIPAddr, again.YourIPAddr)
	}

	// Pool full: a fourth client gets nothing...
	d := packet(t, mac(4), dhcpv4.MessageTypeDiscover)
	h.send(d.ToBytes())
	if r := recv(t, h.client, d.TransactionID, 300*time.Millisecond); r != nil {
		t.Fatalf("offer from a full pool: %s", r.Summary())
	}
	// ...and someone else's address is NAKed (INIT-REBOOT).
	ir := packet(t, mac(4), dhcpv4.MessageTypeRequest, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(second.YourIPAddr)))
	h.send(ir.ToBytes())
	if r := recv(t, h.client, ir.TransactionID, 5*time.Second); r == nil || r.MessageType() != dhcpv4.MessageTypeNak {
		t.Fatalf("stolen address: %v", r)
	}
	// Once the leases expire, the oldest is reclaimed for the newcomer.
	clk.add(2 * time.Hour)
	_, fourth := h.dora(mac(4))
	if fourth == nil || fourth.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatal("no lease after expiry")
	}
	ls, _ = store.Leases(context.Background())
	if len(ls) != 3 {
		t.Errorf("store after reclaim: %+v", ls)
	}
	<-store.deleted // the reclaimed lease

	// RELEASE frees the address in the store.
	rel := packet(t, mac(4), dhcpv4.MessageTypeRelease, dhcpv4.WithClientIP(fourth.YourIPAddr))
	h.send(rel.ToBytes())
	// Releases are not answered: wait for the store's Delete instead.
	select {
	case ip := <-store.deleted:
		if ip.String() != fourth.YourIPAddr.String() {
			t.Errorf("deleted %v, released %v", ip, fourth.YourIPAddr)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("release not applied")
	}
}

func TestFullBootClientAndRestart(t *testing.T) {
	store := &MemLeases{}
	pool := testPool("10.77.0.100", "10.77.0.200")
	h := startServer(t, Config{Mode: ModeFull, Booter: &testBooter{}, Pool: pool, Leases: store})
	_, ack := h.dora(macKnown, pxe(iana.INTEL_X86PC)...)
	if ack.BootFileName != "undionly.kpxe" || ack.YourIPAddr.IsUnspecified() || !ack.ServerIPAddr.Equal(net.IPv4(127, 0, 0, 1)) {
		t.Errorf("PXE client in full mode: %s", ack.Summary())
	}
	// Unknown PXE machine: an address, no boot information.
	_, ack2 := h.dora(macUnknown, pxe(iana.INTEL_X86PC)...)
	if ack2.BootFileName != "" || ack2.YourIPAddr.IsUnspecified() {
		t.Errorf("unknown PXE machine: %s", ack2.Summary())
	}

	// A new server on the same store (appliance restart) keeps the lease.
	h2 := startServer(t, Config{Mode: ModeFull, Booter: &testBooter{}, Pool: pool, Leases: store})
	_, again := h2.dora(macKnown, pxe(iana.INTEL_X86PC)...)
	if !again.YourIPAddr.Equal(ack.YourIPAddr) {
		t.Errorf("after restart %v, before %v", again.YourIPAddr, ack.YourIPAddr)
	}
	// And never offers it to someone else.
	_, other := h2.dora(mac(9))
	if other.YourIPAddr.Equal(ack.YourIPAddr) || other.YourIPAddr.Equal(ack2.YourIPAddr) {
		t.Errorf("address in use offered again: %v", other.YourIPAddr)
	}
}

func TestLeasesConcurrentNeverTwice(t *testing.T) {
	ls := newLeases(testPool("10.77.0.10", "10.77.0.59"), &MemLeases{})
	now := time.Now()
	var mu sync.Mutex
	got := map[netip.Addr]string{}
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := mac(i).String()
			ip, err := ls.offer(context.Background(), m, netip.Addr{}, now)
			if err != nil {
				t.Error(err)
				return
			}
			if _, err := ls.commit(context.Background(), m, ip, "", now); err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if o, dup := got[ip]; dup {
				t.Errorf("%v to %s and %s", ip, o, m)
			}
			got[ip] = m
		}()
	}
	wg.Wait()
	if _, err := ls.offer(context.Background(), mac(99).String(), netip.Addr{}, now); err != errPoolFull {
		t.Errorf("51st client: %v", err)
	}
	// Declined address is quarantined, then reusable.
	ip := netip.MustParseAddr("10.77.0.10")
	owner := got[ip]
	if err := ls.decline(context.Background(), owner, ip, now); err != nil {
		t.Fatal(err)
	}
	if _, err := ls.offer(context.Background(), mac(100).String(), ip, now); err != errPoolFull {
		t.Errorf("declined address offered: %v", err)
	}
	if got, err := ls.offer(context.Background(), mac(100).String(), ip, now.Add(declineHold+time.Second)); err != nil || got != ip {
		t.Errorf("after quarantine: %v %v", got, err)
	}
}

// notifyStore reports deletions, so a test can wait for an unanswered
// RELEASE without sleeping.
type notifyStore struct {
	MemLeases
	deleted chan netip.Addr
}

func (s *notifyStore) Delete(ctx context.Context, ip netip.Addr) error {
	err := s.MemLeases.Delete(ctx, ip)
	s.deleted <- ip
	return err
}

func TestFullRelayOtherSubnetSilent(t *testing.T) {
	h := startServer(t, Config{Mode: ModeFull, Booter: &testBooter{}, Pool: testPool("10.77.0.100", "10.77.0.200"), Leases: &MemLeases{}})
	d := packet(t, mac(1), dhcpv4.MessageTypeDiscover, dhcpv4.WithRelay(net.IPv4(127, 0, 0, 1)))
	h.send(d.ToBytes())
	probe := packet(t, mac(2), dhcpv4.MessageTypeDiscover)
	h.send(probe.ToBytes())
	if recv(t, h.client, probe.TransactionID, 5*time.Second) == nil {
		t.Fatal("no answer to the probe")
	}
	if r := recv(t, h.relay, d.TransactionID, 200*time.Millisecond); r != nil {
		t.Fatalf("answered a relay outside the pool's subnet: %s", r.Summary())
	}
}
