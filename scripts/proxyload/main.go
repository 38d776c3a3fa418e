// Command proxyload drives a proxy-DHCP server with PXE DISCOVERs (option 60
// "PXEClient:Arch:00000:UNDI:002001", 93 arch 0, 94, 97 GUID) from -clients
// distinct MACs at -rate per second for -seconds, as a relay (giaddr = -relay,
// replies unicast to -relay:67), and counts OFFERs that match a sent xid.
// Used by scripts/bench-sidebyside.sh; it sends only to -server.
// Output: "sent N offers M".
package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"log"
	"net"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

func main() {
	server := flag.String("server", "", "server address")
	relay := flag.String("relay", "", "our address (giaddr); we listen on it, port 67")
	rate := flag.Int("rate", 1000, "DISCOVERs per second")
	secs := flag.Float64("seconds", 3, "sending period")
	clients := flag.Int("clients", 5000, "distinct MACs")
	wait := flag.Duration("wait", 2*time.Second, "wait for late OFFERs after sending")
	flag.Parse()
	gi := net.ParseIP(*relay).To4()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: gi, Port: 67})
	if err != nil {
		log.Fatal(err)
	}
	_ = conn.SetReadBuffer(8 << 20)
	dst := &net.UDPAddr{IP: net.ParseIP(*server), Port: 67}
	var mu sync.Mutex
	pending := map[uint32]bool{}
	offers := 0
	done := make(chan struct{})
	go func() {
		buf := make([]byte, 1500)
		for {
			n, _, err := conn.ReadFromUDP(buf)
			if err != nil {
				close(done)
				return
			}
			p, err := dhcpv4.FromBytes(buf[:n])
			if err != nil || p.MessageType() != dhcpv4.MessageTypeOffer {
				continue
			}
			x := binary.BigEndian.Uint32(p.TransactionID[:])
			mu.Lock()
			if pending[x] {
				delete(pending, x)
				offers++
			}
			mu.Unlock()
		}
	}()
	total := int(float64(*rate) * *secs)
	start := time.Now()
	for i := 0; i < total; i++ {
		if d := time.Until(start.Add(time.Duration(float64(i) / float64(*rate) * float64(time.Second)))); d > 0 {
			time.Sleep(d)
		}
		c := i % *clients
		mac := net.HardwareAddr{0x02, 0x5e, 0x10, byte(c >> 16), byte(c >> 8), byte(c)}
		xid := uint32(0x50000000) + uint32(i)
		guid := make([]byte, 17)
		copy(guid[11:], mac)
		p, err := dhcpv4.New(
			dhcpv4.WithHwAddr(mac),
			dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover),
			dhcpv4.WithTransactionID(dhcpv4.TransactionID{byte(xid >> 24), byte(xid >> 16), byte(xid >> 8), byte(xid)}),
			dhcpv4.WithGatewayIP(gi),
			dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
			dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC)),
			dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionClientNetworkInterfaceIdentifier, []byte{1, 2, 1})),
			dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionClientMachineIdentifier, guid)),
			dhcpv4.WithRequestedOptions(dhcpv4.OptionBootfileName, dhcpv4.OptionTFTPServerName, dhcpv4.OptionVendorSpecificInformation),
		)
		if err != nil {
			log.Fatal(err)
		}
		mu.Lock()
		pending[xid] = true
		mu.Unlock()
		if _, err := conn.WriteToUDP(p.ToBytes(), dst); err != nil {
			log.Fatal(err)
		}
	}
	time.Sleep(*wait)
	conn.Close()
	<-done
	mu.Lock()
	fmt.Printf("sent %d offers %d\n", total, offers)
	mu.Unlock()
}
