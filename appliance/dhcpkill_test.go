package appliance_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"golang.org/x/sys/unix"

	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/etcdserver"
)

// No ACKed lease is lost when the appliance dies: the real binary in full-DHCP
// mode, its embedded etcd on disk, takes a storm of DHCP clients (each its own
// MAC, through a relay) and is killed with SIGKILL while REQUESTs are in
// flight. Every (MAC, IP) that got an ACK is then in etcd's data on disk, and
// the appliance restarted on that data offers each MAC its address again.
func TestDHCPLeasesSurviveKill(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces")
	}
	if testing.Short() {
		t.Skip("builds and kills the appliance binary")
	}
	bin := buildBinary(t, "./appliance/cmd/lpmos-appliance")
	srvNS, cliNS := vethNamespaces(t, "10.97.0.1/16", "10.97.0.2/16")
	dir := t.TempDir()
	etcdDir := filepath.Join(dir, "etcd")
	imagesDir := filepath.Join(dir, "images")
	os.Mkdir(imagesDir, 0o755)
	start := func() *exec.Cmd {
		cmd := exec.Command("ip", "netns", "exec", srvNS, bin, "--label=dc1", "--dhcp-mode=full", "--dhcp-interface=kv0",
			"--dhcp-range=10.97.1.0,10.97.250.255", "--etcd-data-dir="+etcdDir, "--tftp-addr=", "--api-host=127.0.0.1",
			"--images-dir="+imagesDir, "--kernel="+os.DevNull, "--initramfs="+os.DevNull, "--log-level=warn")
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() }) // netns exec execs: this is the appliance
		return cmd
	}
	c := newRelayClient(t, cliNS, "10.97.0.2", "10.97.0.1")

	cmd := start()
	c.waitServing(t, 60*time.Second)
	const clients, perMs, killAfter = 6000, 2, 1500
	acked, unanswered, unsent := c.stormAndKill(t, clients, perMs, killAfter, cmd)
	t.Logf("storm: %d ACKed, %d REQUESTs unanswered, %d clients not started when the appliance was killed", len(acked), unanswered, unsent)
	if len(acked) < killAfter || unsent == 0 {
		t.Fatalf("the kill did not land mid-storm: %d ACKed, %d clients not started", len(acked), unsent)
	}

	// On disk: etcd's data, opened by an etcd of our own.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e, err := etcdserver.Start(ctx, etcdserver.Config{DataDir: etcdDir, ListenClientURLs: "http://127.0.0.1:0", ListenPeerURLs: "http://127.0.0.1:0", Quiet: true})
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(ctx, store.DialConfig{Endpoints: e.Endpoints()})
	if err != nil {
		e.Close()
		t.Fatal(err)
	}
	stored, err := st.ListLeases(ctx, "dc1")
	st.Close()
	e.Close()
	if err != nil {
		t.Fatal(err)
	}
	byIP := map[string]string{}
	for _, l := range stored {
		byIP[l.IP] = l.MAC
	}
	for mac, ip := range acked {
		if byIP[ip.String()] != mac {
			t.Errorf("ACKed %s to %s; etcd holds %q for it", ip, mac, byIP[ip.String()])
		}
	}
	if t.Failed() {
		t.Fatalf("%d leases stored, %d ACKed", len(stored), len(acked))
	}

	// Restarted on the same data: each MAC is offered its address again.
	start()
	offered := c.discoverAll(t, acked, 60*time.Second)
	for mac, ip := range acked {
		if offered[mac] != ip {
			t.Errorf("%s: ACKed %s before the kill, offered %v after", mac, ip, offered[mac])
		}
	}
	t.Logf("%d leases stored, all %d ACKed ones there and offered again after the restart", len(stored), len(acked))
}

// vethNamespaces creates two network namespaces joined by a veth pair, kv0 in
// the first with srvAddr, kv1 in the second with cliAddr, removed at cleanup.
func vethNamespaces(t *testing.T, srvAddr, cliAddr string) (srv, cli string) {
	t.Helper()
	tag := strconv.Itoa(os.Getpid())
	srv, cli = "lpm-kill-"+tag+"-s", "lpm-kill-"+tag+"-c"
	run := func(args ...string) {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	run("netns", "add", srv)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", srv).Run() })
	run("netns", "add", cli)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", cli).Run() })
	run("-n", srv, "link", "set", "lo", "up")
	run("-n", cli, "link", "set", "lo", "up")
	run("-n", srv, "link", "add", "kv0", "type", "veth", "peer", "name", "kv1", "netns", cli)
	run("-n", srv, "addr", "add", srvAddr, "dev", "kv0")
	run("-n", cli, "addr", "add", cliAddr, "dev", "kv1")
	run("-n", srv, "link", "set", "kv0", "up")
	run("-n", cli, "link", "set", "kv1", "up")
	return srv, cli
}

// relayClient plays many DHCP clients behind one relay (giaddr): one socket
// on the relay's port 67, made in the client namespace; the server unicasts
// every reply to it.
type relayClient struct {
	conn    *net.UDPConn
	server  *net.UDPAddr
	giaddr  net.IP
	replies chan *dhcpv4.DHCPv4
}

func newRelayClient(t *testing.T, ns, relay, server string) *relayClient {
	t.Helper()
	conn, err := listenInNetNS(ns, &net.UDPAddr{IP: net.ParseIP(relay), Port: 67})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetReadBuffer(8 << 20)
	c := &relayClient{conn: conn, server: &net.UDPAddr{IP: net.ParseIP(server), Port: 67}, giaddr: net.ParseIP(relay).To4(), replies: make(chan *dhcpv4.DHCPv4, 1<<16)}
	go func() {
		buf := make([]byte, 1500)
		for {
			n, _, err := conn.ReadFromUDP(buf)
			if err != nil {
				close(c.replies)
				return
			}
			if p, err := dhcpv4.FromBytes(buf[:n]); err == nil {
				c.replies <- p
			}
		}
	}()
	return c
}

// listenInNetNS opens a UDP socket inside the named network namespace: made on
// a thread switched there, the socket stays in it.
func listenInNetNS(ns string, addr *net.UDPAddr) (*net.UDPConn, error) {
	runtime.LockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	defer self.Close()
	target, err := os.Open("/var/run/netns/" + ns)
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("setns %s: %w", ns, err)
	}
	conn, lerr := net.ListenUDP("udp4", addr)
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread stays locked: it dies with this goroutine, not reused elsewhere.
		return nil, errors.Join(lerr, fmt.Errorf("setns back: %w", err))
	}
	runtime.UnlockOSThread()
	return conn, lerr
}

func clientMAC(i int) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0x4b, 0x49, byte(i >> 16), byte(i >> 8), byte(i)}
}

func (c *relayClient) send(t *testing.T, typ dhcpv4.MessageType, mac net.HardwareAddr, xid uint32, mods ...dhcpv4.Modifier) {
	var id dhcpv4.TransactionID
	id[0], id[1], id[2], id[3] = byte(xid>>24), byte(xid>>16), byte(xid>>8), byte(xid)
	mods = append([]dhcpv4.Modifier{dhcpv4.WithHwAddr(mac), dhcpv4.WithMessageType(typ), dhcpv4.WithTransactionID(id), dhcpv4.WithRelay(c.giaddr)}, mods...)
	p, err := dhcpv4.New(mods...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.conn.WriteToUDP(p.ToBytes(), c.server); err != nil {
		t.Fatal(err)
	}
}

// waitServing sends a DISCOVER every 200 ms until one is answered.
func (c *relayClient) waitServing(t *testing.T, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	probe := clientMAC(0xffffff)
	for {
		c.send(t, dhcpv4.MessageTypeDiscover, probe, 0x7fffffff)
		select {
		case p := <-c.replies:
			if p.MessageType() == dhcpv4.MessageTypeOffer {
				return
			}
		case <-tick.C:
		case <-deadline:
			t.Fatalf("no DHCP answer after %s", timeout)
		}
	}
}

// stormAndKill runs DORA for up to n clients, perMs DISCOVERs a millisecond,
// SIGKILLs cmd once killAfter ACKs are in, and keeps reading until the replies
// the appliance sent before dying are drained (1 s of silence). It returns the
// ACKed addresses by MAC, the REQUESTs unanswered at the end and the clients
// that had not sent their DISCOVER yet when the kill came.
func (c *relayClient) stormAndKill(t *testing.T, n, perMs, killAfter int, cmd *exec.Cmd) (acked map[string]netip.Addr, unanswered, unsent int) {
	t.Helper()
	acked = map[string]netip.Addr{}
	requested := map[uint32]bool{} // xid (= client index) of REQUESTs not yet answered
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	deadline := time.After(60 * time.Second)
	var quiet <-chan time.Time
	next, killed := 0, false
	for {
		select {
		case <-tick.C:
			for i := 0; i < perMs && next < n && !killed; i++ {
				c.send(t, dhcpv4.MessageTypeDiscover, clientMAC(next), uint32(next))
				next++
			}
		case p, ok := <-c.replies:
			if !ok {
				t.Fatal("relay socket closed")
			}
			xid := uint32(p.TransactionID[0])<<24 | uint32(p.TransactionID[1])<<16 | uint32(p.TransactionID[2])<<8 | uint32(p.TransactionID[3])
			if int(xid) >= n {
				continue // a late answer to waitServing's probe
			}
			switch p.MessageType() {
			case dhcpv4.MessageTypeOffer:
				if !killed {
					c.send(t, dhcpv4.MessageTypeRequest, clientMAC(int(xid)), xid,
						dhcpv4.WithOption(dhcpv4.OptServerIdentifier(p.ServerIdentifier())), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(p.YourIPAddr)))
					requested[xid] = true
				}
			case dhcpv4.MessageTypeAck:
				ip, _ := netip.AddrFromSlice(p.YourIPAddr.To4())
				acked[clientMAC(int(xid)).String()] = ip
				delete(requested, xid)
			case dhcpv4.MessageTypeNak:
				delete(requested, xid)
			}
			if killed {
				quiet = time.After(time.Second)
			}
		case <-quiet:
			return acked, len(requested), n - next
		case <-deadline:
			t.Fatalf("storm: %d ACKed after 60s, killed %t", len(acked), killed)
		}
		if !killed && len(acked) >= killAfter {
			cmd.Process.Kill() // SIGKILL: no shutdown, etcd stops mid-write
			cmd.Wait()
			killed = true
			quiet = time.After(time.Second)
		}
	}
}

// discoverAll sends a DISCOVER for each MAC of want (2 a millisecond, again
// every 2 s for those unanswered) and returns the addresses offered.
func (c *relayClient) discoverAll(t *testing.T, want map[string]netip.Addr, timeout time.Duration) map[string]netip.Addr {
	t.Helper()
	const base = 1 << 30 // xids apart from the storm's
	var macs []net.HardwareAddr
	for m := range want {
		hw, _ := net.ParseMAC(m)
		macs = append(macs, hw)
	}
	offered := map[string]netip.Addr{}
	deadline := time.After(timeout)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	next := 0
	var again <-chan time.Time
	for len(offered) < len(macs) {
		select {
		case <-tick.C:
			for i := 0; i < 2 && next < len(macs); i++ {
				if _, ok := offered[macs[next].String()]; !ok {
					c.send(t, dhcpv4.MessageTypeDiscover, macs[next], uint32(base+next))
				}
				next++
			}
			if next == len(macs) && again == nil {
				again = time.After(2 * time.Second)
			}
		case <-again:
			next, again = 0, nil
		case p := <-c.replies:
			xid := int(uint32(p.TransactionID[0])<<24 | uint32(p.TransactionID[1])<<16 | uint32(p.TransactionID[2])<<8 | uint32(p.TransactionID[3]))
			if p.MessageType() == dhcpv4.MessageTypeOffer && xid >= base && xid < base+len(macs) {
				ip, _ := netip.AddrFromSlice(p.YourIPAddr.To4())
				offered[macs[xid-base].String()] = ip
			}
		case <-deadline:
			t.Fatalf("after the restart %d of %d MACs offered an address in %s", len(offered), len(macs), timeout)
		}
	}
	return offered
}
