// Command proxyload drives a proxy-DHCP server with PXE DISCOVERs (option 60
// "PXEClient:Arch:00000:UNDI:002001", 93 arch 0, 94, 97 GUID) from -clients
// distinct MACs at -rate per second for -seconds, as a relay (giaddr = -relay,
// replies unicast to -relay:67), and counts OFFERs that match a sent xid.
// Used by scripts/bench-sidebyside.sh; it sends only to -server.
// Output: "sent N offers M".
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"time"
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
	c := &counter{pending: map[uint32]bool{}, done: make(chan struct{})}
	go c.read(conn)
	total := int(float64(*rate) * *secs)
	start := time.Now()
	for i := 0; i < total; i++ {
		if d := time.Until(start.Add(time.Duration(float64(i) / float64(*rate) * float64(time.Second)))); d > 0 {
			time.Sleep(d)
		}
		xid := uint32(0x50000000) + uint32(i)
		p, err := discover(i%*clients, xid, gi)
		if err != nil {
			log.Fatal(err)
		}
		c.sent(xid)
		if _, err := conn.WriteToUDP(p.ToBytes(), dst); err != nil {
			log.Fatal(err)
		}
	}
	time.Sleep(*wait)
	conn.Close()
	<-c.done
	fmt.Printf("sent %d offers %d\n", total, c.count())
}
