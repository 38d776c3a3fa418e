package dhcpd

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// full is a plain DHCP server (RFC 2131 4.3) over Pool, adding boot
// information for boot clients the Booter accepts. Non-boot clients get an
// address too: in an isolated lab we are the only DHCP server.
func (s *Server) full(ctx context.Context, log *slog.Logger, req request, serverIP netip.Addr) *dhcpv4.DHCPv4 {
	p := req.pkt
	mac := p.ClientHWAddr.String()
	now := s.now()
	if gw := addr(p.GatewayIPAddr); gw.IsValid() && !gw.IsUnspecified() && !s.cfg.Pool.Subnet.Contains(gw) {
		// RFC 2131 4.3.1: the relay's address picks the subnet; ours is
		// the only pool, so a relay elsewhere is not ours to answer.
		log.Debug("DHCP: relay outside the pool's subnet, staying silent")
		return nil
	}
	switch p.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		requested, _ := netip.AddrFromSlice(p.RequestedIPAddress().To4())
		ip, err := s.leases.offer(ctx, mac, requested, now)
		if err != nil {
			log.Warn("DHCP: no address to offer", "err", err)
			req.fail()
			return nil
		}
		r := s.addressReply(ctx, log, req, dhcpv4.MessageTypeOffer, serverIP, ip)
		log.Debug("DHCP: offer", "ip", ip)
		return r

	case dhcpv4.MessageTypeRequest:
		return s.fullRequest(ctx, log, req, serverIP, mac, now)

	case dhcpv4.MessageTypeRelease:
		ip, _ := netip.AddrFromSlice(p.ClientIPAddr.To4())
		if err := s.leases.release(ctx, mac, ip); err != nil && !errors.Is(err, errNoBinding) {
			log.Error("DHCP: release", "err", err)
			req.fail()
		} else if err == nil {
			log.Info("DHCP: lease released", "ip", ip)
		}
		return nil // RFC 2131 4.3.4: no reply

	case dhcpv4.MessageTypeDecline:
		ip, _ := netip.AddrFromSlice(p.RequestedIPAddress().To4())
		if err := s.leases.decline(ctx, mac, ip, now); err != nil {
			log.Error("DHCP: decline", "err", err)
			req.fail()
		}
		log.Warn("DHCP: client declined address (in use on the wire)", "ip", ip)
		return nil

	case dhcpv4.MessageTypeInform:
		// RFC 2131 4.3.5: configuration only, no lease, no yiaddr.
		r := newReply(p, dhcpv4.MessageTypeAck, serverIP)
		s.poolOptions(r, serverIP, false)
		if b := s.bootOptions(ctx, log, req, serverIP); b != nil {
			b.apply(r)
		}
		return r
	}
	return nil
}

// fullRequest handles the REQUEST states of RFC 2131 4.3.2: SELECTING
// (server id set), INIT-REBOOT (requested IP, no ciaddr), RENEWING and
// REBINDING (ciaddr set).
func (s *Server) fullRequest(ctx context.Context, log *slog.Logger, req request, serverIP netip.Addr, mac string, now time.Time) *dhcpv4.DHCPv4 {
	p := req.pkt
	var ip netip.Addr
	if sid := p.ServerIdentifier(); sid != nil {
		if !sid.Equal(serverIP.AsSlice()) {
			// The client took another server's offer: free ours.
			s.leases.release(ctx, mac, netip.Addr{})
			return nil
		}
		ip, _ = netip.AddrFromSlice(p.RequestedIPAddress().To4())
		if !ip.IsValid() {
			ip, _ = netip.AddrFromSlice(p.ClientIPAddr.To4())
		}
	} else if ci, _ := netip.AddrFromSlice(p.ClientIPAddr.To4()); ci.IsValid() && !ci.IsUnspecified() {
		ip = ci
		if l, ok := s.leases.lookup(mac); !ok || l.IP != ip {
			if !s.cfg.Pool.contains(ip) {
				return nil // RFC 2131 4.3.2: not ours to answer
			}
		}
	} else {
		ip, _ = netip.AddrFromSlice(p.RequestedIPAddress().To4())
		if !ip.IsValid() {
			return nil
		}
		if !s.cfg.Pool.Subnet.Contains(ip) {
			// INIT-REBOOT on the wrong network: NAK so it starts over.
			log.Info("DHCP: NAK, requested address not on this network", "ip", ip)
			return s.nak(req, serverIP, "wrong network")
		}
		if _, ok := s.leases.lookup(mac); !ok && !s.cfg.Pool.contains(ip) {
			return nil // RFC 2131 4.3.2: no record, stay silent
		}
	}
	ack := func(lease Lease, err error) *dhcpv4.DHCPv4 {
		switch {
		case errors.Is(err, errHeld), errors.Is(err, errNotOurs):
			log.Info("DHCP: NAK", "ip", ip, "err", err)
			return s.nak(req, serverIP, err.Error())
		case err != nil:
			log.Error("DHCP: lease not stored, no ACK", "ip", ip, "err", err)
			req.fail()
			return nil
		}
		log.Info("DHCP: lease", "ip", lease.IP, "until", lease.Expiry.Format(time.RFC3339))
		return s.addressReply(ctx, log, req, dhcpv4.MessageTypeAck, serverIP, lease.IP)
	}
	if req.later == nil {
		return ack(s.leases.commit(ctx, mac, ip, hostname(p), now))
	}
	// The ACK leaves once the lease is stored, without a goroutine waiting.
	req.obs.deferred = true
	s.deferred.Add(1)
	s.leases.commitThen(ctx, mac, ip, hostname(p), now, func(l Lease, err error) {
		req.later(ack(l, err), log)
		s.deferred.Add(-1)
	})
	return nil
}

func (s *Server) nak(req request, serverIP netip.Addr, msg string) *dhcpv4.DHCPv4 {
	r := newReply(req.pkt, dhcpv4.MessageTypeNak, serverIP)
	r.ClientIPAddr = net.IPv4zero
	r.UpdateOption(dhcpv4.OptMessage(msg))
	// RFC 2131 4.1: a NAK without relay is broadcast.
	if r.GatewayIPAddr.IsUnspecified() {
		r.SetBroadcast()
	}
	return r
}

func (s *Server) addressReply(ctx context.Context, log *slog.Logger, req request, typ dhcpv4.MessageType, serverIP, ip netip.Addr) *dhcpv4.DHCPv4 {
	r := newReply(req.pkt, typ, serverIP)
	r.YourIPAddr = ip.AsSlice()
	s.poolOptions(r, serverIP, true)
	if b := s.bootOptions(ctx, log, req, serverIP); b != nil {
		b.apply(r)
	}
	return r
}

func (s *Server) poolOptions(r *dhcpv4.DHCPv4, serverIP netip.Addr, lease bool) {
	p := s.cfg.Pool
	r.UpdateOption(dhcpv4.OptSubnetMask(net.CIDRMask(p.Subnet.Bits(), 32)))
	if p.Router.IsValid() {
		r.UpdateOption(dhcpv4.OptRouter(p.Router.AsSlice()))
	}
	if len(p.DNS) > 0 {
		dns := make([]net.IP, len(p.DNS))
		for i, a := range p.DNS {
			dns[i] = a.AsSlice()
		}
		r.UpdateOption(dhcpv4.OptDNS(dns...))
	}
	if lease {
		// RFC 2131 4.4.5: T1 = 0.5, T2 = 0.875 of the lease.
		r.UpdateOption(dhcpv4.OptIPAddressLeaseTime(p.LeaseTime))
		r.UpdateOption(dhcpv4.OptRenewTimeValue(p.LeaseTime / 2))
		r.UpdateOption(dhcpv4.OptRebindingTimeValue(p.LeaseTime * 7 / 8))
	}
}
