package boot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/u-root/u-root/pkg/dhclient"
	"github.com/vishvananda/netlink"
)

// nic is what choosing the boot NIC looks at.
type nic struct {
	Name    string
	MAC     string
	Carrier bool
}

// pickNIC returns the NIC named by BOOTIF's MAC when given, else the first with a
// carrier. With BOOTIF set, no other NIC is a fallback: reporting another NIC's MAC
// would match the wrong task, or none.
func pickNIC(nics []nic, bootMAC string) (nic, error) {
	if bootMAC != "" {
		for _, n := range nics {
			if strings.EqualFold(n.MAC, bootMAC) {
				return n, nil
			}
		}
		return nic{}, fmt.Errorf("no NIC with the BOOTIF MAC %s (have %s)", bootMAC, describeNICs(nics))
	}
	for _, n := range nics {
		if n.Carrier {
			return n, nil
		}
	}
	return nic{}, fmt.Errorf("no NIC has a link (have %s)", describeNICs(nics))
}

func describeNICs(nics []nic) string {
	if len(nics) == 0 {
		return "no Ethernet NICs: is the driver missing?"
	}
	var s []string
	for _, n := range nics {
		state := "no carrier"
		if n.Carrier {
			state = "carrier"
		}
		s = append(s, fmt.Sprintf("%s %s %s", n.Name, n.MAC, state))
	}
	return strings.Join(s, ", ")
}

// ethernetLinks returns the physical Ethernet links: a 6-byte MAC and a device behind
// them in sysfs (which leaves out lo, bridges, bonds and other virtual links).
func ethernetLinks(sysRoot string) ([]netlink.Link, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []netlink.Link
	for _, l := range links {
		a := l.Attrs()
		if len(a.HardwareAddr) != 6 {
			continue
		}
		if _, err := os.Stat(filepath.Join(sysRoot, "class", "net", a.Name, "device")); err != nil {
			continue
		}
		out = append(out, l)
	}
	return out, nil
}

func carrier(sysRoot, name string) bool {
	b, err := os.ReadFile(filepath.Join(sysRoot, "class", "net", name, "carrier"))
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

// linkWait bounds how long NICs get to come up and report a carrier: real switch
// ports with spanning tree can take tens of seconds.
const linkWait = 60 * time.Second

// bringUpNIC sets every Ethernet link up (carrier is only known on an up link), picks
// the boot NIC and configures it with DHCPv4.
func bringUpNIC(ctx context.Context, log *slog.Logger, sysRoot, bootMAC string) (nic, error) {
	links, err := ethernetLinks(sysRoot)
	if err != nil {
		return nic{}, err
	}
	for _, l := range links {
		if err := netlink.LinkSetUp(l); err != nil {
			log.Warn("link up failed", "nic", l.Attrs().Name, "err", err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, linkWait)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var chosen nic
	var link netlink.Link
	for {
		var nics []nic
		for _, l := range links {
			a := l.Attrs()
			nics = append(nics, nic{Name: a.Name, MAC: a.HardwareAddr.String(), Carrier: carrier(sysRoot, a.Name)})
		}
		chosen, err = pickNIC(nics, bootMAC)
		if err == nil && chosen.Carrier {
			for _, l := range links {
				if l.Attrs().Name == chosen.Name {
					link = l
				}
			}
			break
		}
		if err == nil {
			err = fmt.Errorf("boot NIC %s (%s) has no link", chosen.Name, chosen.MAC)
		}
		select {
		case <-ctx.Done():
			return nic{}, fmt.Errorf("after %v: %w", linkWait, err)
		case <-tick.C:
		}
	}
	log.Info("boot NIC", "nic", chosen.Name, "mac", chosen.MAC)
	if err := dhcp(ctx, log, link); err != nil {
		return chosen, err
	}
	return chosen, nil
}

// dhcp gets and applies an IPv4 lease on link. IPv4 only: the regional URL the
// appliance writes is an IPv4 address, and DHCPv6 without a server would only delay.
func dhcp(ctx context.Context, log *slog.Logger, link netlink.Link) error {
	cfg := dhclient.Config{
		Timeout: 5 * time.Second,
		Retries: 6,
		// The vendor class names us in the site DHCP server's logs (u-root says "PXE UROOT").
		Modifiers4:   []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("lpmos-agent"))},
		V4ServerAddr: &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ServerPort},
	}
	var errs []error
	for r := range dhclient.SendRequests(ctx, []netlink.Link{link}, true, false, cfg, linkWait) {
		if r.Err != nil {
			errs = append(errs, r.Err)
			continue
		}
		if err := r.Lease.Configure(); err != nil {
			return fmt.Errorf("configure %s: %w", link.Attrs().Name, err)
		}
		log.Info("DHCP lease", "nic", link.Attrs().Name, "lease", r.Lease.String())
		return nil
	}
	if len(errs) == 0 {
		errs = append(errs, errors.New("link did not come up"))
	}
	return fmt.Errorf("DHCP on %s: %w", link.Attrs().Name, errors.Join(errs...))
}
