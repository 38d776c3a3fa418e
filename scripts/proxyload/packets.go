package main

import (
	"encoding/binary"
	"net"
	"sync"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// discover is the PXE DISCOVER of client c (a BIOS UNDI ROM: options 60, 93, 94 and 97)
// relayed through gi.
func discover(c int, xid uint32, gi net.IP) (*dhcpv4.DHCPv4, error) {
	mac := net.HardwareAddr{0x02, 0x5e, 0x10, byte(c >> 16), byte(c >> 8), byte(c)}
	guid := make([]byte, 17)
	copy(guid[11:], mac)
	return dhcpv4.New(
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
}

// counter matches OFFERs to the DISCOVERs sent, by xid.
type counter struct {
	mu      sync.Mutex
	pending map[uint32]bool
	offers  int
	done    chan struct{}
}

func (c *counter) sent(xid uint32) { c.mu.Lock(); c.pending[xid] = true; c.mu.Unlock() }

func (c *counter) count() int { c.mu.Lock(); defer c.mu.Unlock(); return c.offers }

// read counts OFFERs until conn is closed, then closes done.
func (c *counter) read(conn *net.UDPConn) {
	defer close(c.done)
	buf := make([]byte, 1500)
	for {
		n, _, err := conn.ReadFromUDP(buf)
		if err != nil {
			return
		}
		p, err := dhcpv4.FromBytes(buf[:n])
		if err != nil || p.MessageType() != dhcpv4.MessageTypeOffer {
			continue
		}
		x := binary.BigEndian.Uint32(p.TransactionID[:])
		c.mu.Lock()
		if c.pending[x] {
			delete(c.pending, x)
			c.offers++
		}
		c.mu.Unlock()
	}
}
