// Package dhcpd answers DHCP for network boot: proxy-DHCP beside a site's
// own DHCP server (boot information only, never an address), or full DHCP
// with an address pool for isolated labs. What a machine boots is asked of a
// netboot.Booter.
package dhcpd

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"golang.org/x/sync/errgroup"

	"lpmos.dev/lpmos/netboot"
)

// Mode is --dhcp-mode.
type Mode string

const (
	ModeProxy Mode = "proxy" // boot information only; the site's DHCP gives addresses
	ModeFull  Mode = "full"  // addresses from Pool as well
)

// Standard ports (RFC 2131 4.1) and PXE's proxyDHCP port (PXE 2.1 spec 2.2.4).
const (
	PortServer = 67
	PortClient = 68
	PortPXE    = 4011
)

// Config configures a Server.
type Config struct {
	Mode   Mode
	Booter netboot.Booter
	// ServerIP is advertised to clients (siaddr, option 54, TFTP and HTTP
	// host): --boot-server-ip. Invalid (zero): the address of the interface
	// the request came in on.
	ServerIP netip.Addr
	// HTTPPort is the appliance's HTTP port, where ipxe.Handler is mounted.
	HTTPPort int
	// Binaries are the iPXE binaries offered over TFTP/HTTP; a first stage
	// missing from it is logged and the client left alone. Nil: assume all.
	Binaries fs.FS
	// Pool and Leases are required in ModeFull.
	Pool   *Pool
	Leases LeaseStore
	Logger *slog.Logger
	// Now is the clock (tests inject one); nil: time.Now.
	Now func() time.Time
	// ServerPort and ClientPort are where replies go: the relay's server
	// port (RFC 1542) and the client's port for broadcasts. Zero: 67, 68.
	ServerPort, ClientPort int
	// Observe, if set, is told what became of every packet received: its DHCP
	// message type (dhcpv4's name: "DISCOVER", "REQUEST", ...; "malformed" for a
	// packet that does not parse) and the outcome. The appliance counts them
	// (Prometheus); netboot knows nothing of metrics.
	Observe func(msgType string, outcome Outcome)
}

// Outcome is what became of a received packet.
type Outcome string

const (
	OutcomeAnswered Outcome = "answered" // a reply was sent
	OutcomeIgnored  Outcome = "ignored"  // silence on purpose: not ours, not a boot client, malformed
	OutcomeError    Outcome = "error"    // silence because something failed (Booter, lease store, send)
)

// packetObs gathers, while one packet is handled, what Config.Observe is told.
type packetObs struct {
	typ      string
	failed   bool
	deferred bool // the answer goes out later, through request.later
}

// fail marks the packet's handling as failed (nil-safe: tests call respond bare).
func (r request) fail() {
	if r.obs != nil {
		r.obs.failed = true
	}
}

// Server is a DHCP server; run it with Serve.
type Server struct {
	cfg    Config
	log    *slog.Logger
	leases *leases
	now    func() time.Time

	ifMu    sync.Mutex
	ifAddrs map[int]ifAddr // ifindex -> IPv4 address, cached

	deferred atomic.Int64 // ACKs waiting for their lease to be stored
}

type ifAddr struct {
	ip      netip.Addr
	name    string
	fetched time.Time
}

// New checks cfg and returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Booter == nil {
		return nil, errors.New("dhcpd: config needs a Booter")
	}
	if cfg.ServerIP.IsValid() && !cfg.ServerIP.Is4() {
		return nil, fmt.Errorf("dhcpd: boot server IP %v is not IPv4", cfg.ServerIP)
	}
	if cfg.HTTPPort <= 0 || cfg.HTTPPort > 65535 {
		return nil, fmt.Errorf("dhcpd: HTTP port %d out of range", cfg.HTTPPort)
	}
	s := &Server{cfg: cfg, now: cfg.Now, ifAddrs: map[int]ifAddr{}}
	if cfg.Logger == nil {
		s.log = slog.New(slog.DiscardHandler)
	} else {
		s.log = slog.New(&lazyAttrs{h: cfg.Logger.Handler()})
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.cfg.ServerPort == 0 {
		s.cfg.ServerPort = PortServer
	}
	if s.cfg.ClientPort == 0 {
		s.cfg.ClientPort = PortClient
	}
	switch cfg.Mode {
	case ModeProxy:
	case ModeFull:
		if cfg.Pool == nil || cfg.Leases == nil {
			return nil, errors.New("dhcpd: full mode needs a Pool and a LeaseStore")
		}
		p := *cfg.Pool
		if err := p.validate(); err != nil {
			return nil, err
		}
		s.cfg.Pool = &p
		s.leases = newLeases(&p, cfg.Leases)
	default:
		return nil, fmt.Errorf("dhcpd: unknown mode %q", cfg.Mode)
	}
	return s, nil
}

// Listen opens a UDP socket for DHCP on addr (":67", ":4011"): broadcast
// allowed, address reusable so a proxy on 4011 may share the host with
// other software. ifname, when set, binds it to one interface
// (SO_BINDTODEVICE) so a multi-homed appliance serves only its boot network.
func Listen(ctx context.Context, addr, ifname string) (net.PacketConn, error) {
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_BROADCAST, 1); serr != nil {
				return
			}
			if serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1); serr != nil {
				return
			}
			// IP_PKTINFO from the first datagram on: the receiving interface
			// picks the reply's interface and our address on it, the
			// destination tells broadcast from unicast.
			if serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_PKTINFO, 1); serr != nil {
				return
			}
			netboot.SizeReceiveBuffer(fd)
			if ifname != "" {
				serr = syscall.BindToDevice(int(fd), ifname)
			}
		})
		return errors.Join(err, serr)
	}}
	pc, err := lc.ListenPacket(ctx, "udp4", addr)
	if err != nil {
		return nil, fmt.Errorf("dhcpd: listen %s: %w", addr, err)
	}
	return pc, nil
}

// Serve answers on every conn (typically :67 and :4011) until ctx ends,
// then closes them. In full mode it first loads the stored leases.
func (s *Server) Serve(ctx context.Context, conns ...net.PacketConn) error {
	if len(conns) == 0 {
		return errors.New("dhcpd: Serve without a socket")
	}
	if s.leases != nil {
		if err := s.leases.load(ctx); err != nil {
			return err
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, c := range conns {
		g.Go(func() error {
			<-gctx.Done()
			return c.Close()
		})
		g.Go(func() error {
			err := s.serveConn(gctx, c)
			if gctx.Err() != nil {
				return nil
			}
			return err
		})
	}
	s.log.Info("DHCP server started", "mode", s.cfg.Mode, "sockets", len(conns))
	err := g.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// maxInFlight bounds concurrent handlers so a flood cannot exhaust memory
// while a slow Booter (etcd) answers.
const maxInFlight = 64

// maxDeferred bounds the ACKs waiting for a group-committed store (memory:
// a closure and a packet each); past it REQUESTs wait on goroutines, at most
// maxInFlight, and then the reading stops: the kernel's buffer takes the rest.
// 4096 is half a second at 8000 DORA/s, more than the slowest fsync measured.
const maxDeferred = 4096

// maxPacket is the largest datagram read; longer ones arrive truncated and
// fail to parse.
const maxPacket = 1500

// serveConn reads c into one reused buffer and answers on the reading
// goroutine whatever is answered from memory; a packet whose answer waits
// (on the Booter, or on a group-committed lease store) gets a goroutine, at
// most maxInFlight at once. Handing every packet to a goroutine cost more
// CPU in thread wake-ups than the DHCP logic itself.
func (s *Server) serveConn(ctx context.Context, c net.PacketConn) error {
	uc, err := newUDPConn(c)
	if err != nil {
		return err
	}
	sem := make(chan struct{}, maxInFlight)
	var wg sync.WaitGroup
	defer wg.Wait()
	buf := make([]byte, maxPacket)
	for {
		n, pi, err := uc.read(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("dhcpd: read: %w", err)
		}
		req := request{ifIndex: pi.ifIndex, src: net.UDPAddrFromAddrPort(pi.src), obs: &packetObs{typ: "malformed"}}
		if pi.dst.IsValid() {
			req.dst = pi.dst.AsSlice()
		}
		pkt := s.parse(buf[:n], req)
		if pkt != nil && s.defersAck(pkt) {
			req.pkt = pkt
			req.later = func(reply *dhcpv4.DHCPv4, log *slog.Logger) {
				var dst *net.UDPAddr
				if reply != nil {
					dst = s.destination(req)
				}
				s.send(uc, reply, dst, log, req)
			}
		}
		if pkt == nil || req.later != nil || !s.waits(pkt) {
			s.handle(ctx, uc, pkt, req)
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			s.handle(ctx, uc, pkt, req)
		}()
	}
}

// defersAck reports whether pkt is a REQUEST whose ACK the group-committing
// lease store sends once the lease is stored (request.later), rather than a
// goroutine waiting for it: every REQUEST of a client that is not a boot
// client (those wait on the Booter anyway), while fewer than maxDeferred wait.
func (s *Server) defersAck(pkt *dhcpv4.DHCPv4) bool {
	return s.leases != nil && s.leases.gc != nil && pkt.MessageType() == dhcpv4.MessageTypeRequest &&
		classify(pkt) == kindOther && s.deferred.Load() < maxDeferred
}

// waits reports whether answering pkt may wait on something slower than
// memory: the Booter (a boot client), or the lease store when it group-commits
// (a lease stored or removed is durable before the answer leaves). A DISCOVER
// never waits on the store (an offer is no promise; see leases.offer).
func (s *Server) waits(pkt *dhcpv4.DHCPv4) bool {
	if classify(pkt) != kindOther {
		return true
	}
	if s.leases == nil || s.leases.gc == nil {
		return false
	}
	switch pkt.MessageType() {
	case dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeRelease, dhcpv4.MessageTypeDecline:
		return true
	}
	return false
}

// request is one received packet with where it came from.
type request struct {
	pkt     *dhcpv4.DHCPv4
	ifIndex int
	dst     net.IP // destination address: broadcast or ours
	src     *net.UDPAddr
	obs     *packetObs // nil: nobody observes
	// later, when set, may send the reply after handle returned (the store
	// group-commits; see defersAck); obs.deferred says it will.
	later func(reply *dhcpv4.DHCPv4, log *slog.Logger)
}

// handle answers pkt (nil: it did not parse) and tells Config.Observe.
func (s *Server) handle(ctx context.Context, uc *udpConn, pkt *dhcpv4.DHCPv4, req request) {
	obs := req.obs
	var reply *dhcpv4.DHCPv4
	var dst *net.UDPAddr
	log := s.log
	if pkt != nil {
		reply, dst, log = s.answer(ctx, pkt, req)
	}
	if obs.deferred {
		return // req.later sends and observes
	}
	s.send(uc, reply, dst, log, req)
}

// send sends reply (nil: silence) to dst and tells Config.Observe.
func (s *Server) send(uc *udpConn, reply *dhcpv4.DHCPv4, dst *net.UDPAddr, log *slog.Logger, req request) {
	obs := req.obs
	outcome := OutcomeIgnored
	if reply != nil {
		to, _ := netip.AddrFromSlice(dst.IP.To4())
		if err := uc.write(reply.ToBytes(), netip.AddrPortFrom(to, uint16(dst.Port)), req.ifIndex); err != nil {
			log.Warn("DHCP reply not sent", "to", dst, "err", err)
			obs.failed = true
		} else {
			outcome = OutcomeAnswered
		}
	}
	if obs.failed {
		outcome = OutcomeError
	}
	if s.cfg.Observe != nil {
		s.cfg.Observe(obs.typ, outcome)
	}
}

// respond computes the reply to one packet and where to send it; a nil
// reply is silence. It is the whole protocol logic, without sockets (the
// fuzz target drives it directly).
func (s *Server) respond(ctx context.Context, b []byte, req request) (*dhcpv4.DHCPv4, *net.UDPAddr, *slog.Logger) {
	pkt := s.parse(b, req)
	if pkt == nil {
		return nil, nil, s.log
	}
	return s.answer(ctx, pkt, req)
}

// parse decodes b, or logs why not and returns nil.
func (s *Server) parse(b []byte, req request) *dhcpv4.DHCPv4 {
	pkt, err := dhcpv4.FromBytes(b)
	if err != nil {
		s.log.Debug("DHCP: dropping malformed packet", "from", req.src, "len", len(b), "err", err)
		return nil
	}
	return pkt
}

// answer is respond after parsing.
func (s *Server) answer(ctx context.Context, pkt *dhcpv4.DHCPv4, req request) (*dhcpv4.DHCPv4, *net.UDPAddr, *slog.Logger) {
	log := s.log
	if req.obs != nil {
		req.obs.typ = pkt.MessageType().String()
	}
	if pkt.OpCode != dhcpv4.OpcodeBootRequest || len(pkt.ClientHWAddr) != 6 {
		return nil, nil, log // only Ethernet clients boot from us
	}
	req.pkt = pkt
	// The packet's attributes are made only for the lines written (packetLog):
	// building them per packet cost more allocations than the DHCP logic.
	log = slog.New(&packetLog{h: log.Handler(), s: s, pkt: pkt, ifIndex: req.ifIndex})
	serverIP, ok := s.serverIP(req)
	if !ok {
		log.Warn("DHCP: no IPv4 address on the receiving interface; set the boot server IP")
		req.fail()
		return nil, nil, log
	}
	var reply *dhcpv4.DHCPv4
	switch s.cfg.Mode {
	case ModeProxy:
		reply = s.proxy(ctx, log, req, serverIP)
	case ModeFull:
		reply = s.full(ctx, log, req, serverIP)
	}
	if reply == nil {
		return nil, nil, log
	}
	return reply, s.destination(req), log
}

// destination follows RFC 2131 4.1: to the relay if there is one, to the
// sender if it has an address (renewals, PXE on 4011), else broadcast on the
// receiving interface (the client has no address to unicast to yet).
func (s *Server) destination(req request) *net.UDPAddr {
	if gw := req.pkt.GatewayIPAddr; gw != nil && !gw.IsUnspecified() {
		return &net.UDPAddr{IP: gw, Port: s.cfg.ServerPort}
	}
	if req.src != nil && req.src.IP != nil && !req.src.IP.IsUnspecified() && req.src.Port != 0 {
		return req.src
	}
	return &net.UDPAddr{IP: net.IPv4bcast, Port: s.cfg.ClientPort}
}

// serverIP is the address we advertise: configured, else the one the
// client unicast to, else the receiving interface's.
func (s *Server) serverIP(req request) (netip.Addr, bool) {
	if s.cfg.ServerIP.IsValid() {
		return s.cfg.ServerIP, true
	}
	if d, ok := netip.AddrFromSlice(req.dst); ok {
		d = d.Unmap()
		if d.Is4() && !d.IsUnspecified() && d != netip.AddrFrom4([4]byte{255, 255, 255, 255}) && !d.IsMulticast() {
			return d, true
		}
	}
	if req.ifIndex == 0 {
		return netip.Addr{}, false
	}
	a := s.ifAddr(req.ifIndex)
	return a.ip, a.ip.IsValid()
}

func (s *Server) ifName(idx int) string { return s.ifAddr(idx).name }

// packetLog adds one packet's attributes (mac, xid, type, iface, relay) to the
// lines written through it, made then and not per packet.
type packetLog struct {
	h       slog.Handler
	s       *Server
	pkt     *dhcpv4.DHCPv4
	ifIndex int
}

func (p *packetLog) attrs() []slog.Attr {
	a := make([]slog.Attr, 0, 5)
	a = append(a, slog.String("mac", p.pkt.ClientHWAddr.String()), slog.String("xid", p.pkt.TransactionID.String()), slog.String("type", p.pkt.MessageType().String()))
	if p.ifIndex != 0 {
		a = append(a, slog.String("iface", p.s.ifName(p.ifIndex)))
	}
	if gw := p.pkt.GatewayIPAddr; gw != nil && !gw.IsUnspecified() {
		a = append(a, slog.String("relay", gw.String()))
	}
	return a
}

func (p *packetLog) Enabled(ctx context.Context, lv slog.Level) bool { return p.h.Enabled(ctx, lv) }

func (p *packetLog) WithAttrs(as []slog.Attr) slog.Handler {
	return p.h.WithAttrs(append(p.attrs(), as...))
}

func (p *packetLog) WithGroup(name string) slog.Handler {
	return p.h.WithAttrs(p.attrs()).WithGroup(name)
}

func (p *packetLog) Handle(ctx context.Context, r slog.Record) error {
	nr := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	nr.AddAttrs(p.attrs()...)
	r.Attrs(func(a slog.Attr) bool { nr.AddAttrs(a); return true })
	return p.h.Handle(ctx, nr)
}

// lazyAttrs keeps a logger's With attributes aside and hands them to the
// handler only with a line actually written: slog's handlers (and applog's)
// format them at With time, which is every packet here.
type lazyAttrs struct {
	h     slog.Handler
	attrs []slog.Attr
}

func (l *lazyAttrs) Enabled(ctx context.Context, lv slog.Level) bool { return l.h.Enabled(ctx, lv) }

func (l *lazyAttrs) WithAttrs(as []slog.Attr) slog.Handler {
	return &lazyAttrs{h: l.h, attrs: append(l.attrs[:len(l.attrs):len(l.attrs)], as...)}
}

func (l *lazyAttrs) WithGroup(name string) slog.Handler {
	return l.h.WithAttrs(l.attrs).WithGroup(name)
}

func (l *lazyAttrs) Handle(ctx context.Context, r slog.Record) error {
	if len(l.attrs) == 0 {
		return l.h.Handle(ctx, r)
	}
	nr := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	nr.AddAttrs(l.attrs...)
	r.Attrs(func(a slog.Attr) bool { nr.AddAttrs(a); return true })
	return l.h.Handle(ctx, nr)
}

// ifAddr caches an interface's first IPv4 address for a few seconds:
// looking it up is a netlink dump, too slow for every packet.
func (s *Server) ifAddr(idx int) ifAddr {
	s.ifMu.Lock()
	defer s.ifMu.Unlock()
	now := time.Now()
	if a, ok := s.ifAddrs[idx]; ok && now.Sub(a.fetched) < 10*time.Second {
		return a
	}
	a := ifAddr{fetched: now}
	if ifi, err := net.InterfaceByIndex(idx); err == nil {
		a.name = ifi.Name
		addrs, _ := ifi.Addrs()
		for _, ad := range addrs {
			if ipn, ok := ad.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(ipn.IP.To4()); ok && ipn.IP.To4() != nil {
					a.ip = ip
					break
				}
			}
		}
	}
	s.ifAddrs[idx] = a
	return a
}

// proxy answers PXE and iPXE clients with boot information only
// (PXE 2.1 spec, proxyDHCP): DISCOVER -> OFFER from port 67; REQUEST or
// INFORM sent to us (port 4011, or with our server identifier) -> ACK.
// yiaddr stays 0.0.0.0: the site's DHCP server owns addresses.
func (s *Server) proxy(ctx context.Context, log *slog.Logger, req request, serverIP netip.Addr) *dhcpv4.DHCPv4 {
	var typ dhcpv4.MessageType
	switch req.pkt.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		typ = dhcpv4.MessageTypeOffer
	case dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeInform:
		if !s.addressedToUs(req, serverIP) {
			return nil // a REQUEST for the site's server
		}
		typ = dhcpv4.MessageTypeAck
	default:
		return nil
	}
	boot := s.bootOptions(ctx, log, req, serverIP)
	if boot == nil {
		return nil
	}
	reply := newReply(req.pkt, typ, serverIP)
	boot.apply(reply)
	log.Info("proxy-DHCP: boot information sent", "reply", typ.String(), "stage", boot.stage, "arch", boot.arch, "file", reply.BootFileName)
	return reply
}

func (s *Server) addressedToUs(req request, serverIP netip.Addr) bool {
	if sid := req.pkt.ServerIdentifier(); sid != nil {
		return sid.Equal(serverIP.AsSlice())
	}
	d, ok := netip.AddrFromSlice(req.dst)
	return ok && d.Unmap() == serverIP
}

// newReply builds a BOOTREPLY for req (RFC 2131 table 3) without the
// crypto/rand transaction id dhcpv4.New would draw.
func newReply(req *dhcpv4.DHCPv4, typ dhcpv4.MessageType, serverIP netip.Addr) *dhcpv4.DHCPv4 {
	r := &dhcpv4.DHCPv4{
		OpCode:        dhcpv4.OpcodeBootReply,
		HWType:        req.HWType,
		TransactionID: req.TransactionID,
		Flags:         req.Flags,
		ClientIPAddr:  net.IPv4zero,
		YourIPAddr:    net.IPv4zero,
		ServerIPAddr:  net.IPv4zero,
		GatewayIPAddr: req.GatewayIPAddr,
		ClientHWAddr:  req.ClientHWAddr,
		Options:       dhcpv4.Options{},
	}
	if r.GatewayIPAddr == nil {
		r.GatewayIPAddr = net.IPv4zero
	}
	if typ == dhcpv4.MessageTypeAck || typ == dhcpv4.MessageTypeNak {
		r.ClientIPAddr = req.ClientIPAddr
	}
	r.UpdateOption(dhcpv4.OptMessageType(typ))
	r.UpdateOption(dhcpv4.OptServerIdentifier(serverIP.AsSlice()))
	// RFC 3046: relay agent information goes back to the relay unchanged.
	if v := req.GetOneOption(dhcpv4.OptionRelayAgentInformation); v != nil {
		r.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionRelayAgentInformation, v))
	}
	// RFC 6842: echo the client identifier.
	if v := req.GetOneOption(dhcpv4.OptionClientIdentifier); v != nil {
		r.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionClientIdentifier, v))
	}
	return r
}

// hostname is option 12, trimmed to something a log line can carry.
func hostname(p *dhcpv4.DHCPv4) string {
	h := p.HostName()
	if len(h) > 63 || netboot.CheckWord("hostname", h) != nil {
		return ""
	}
	return strings.ToValidUTF8(h, "")
}
