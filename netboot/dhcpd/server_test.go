package dhcpd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"lpmos.dev/lpmos/netboot"
)

var (
	macKnown   = net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	macUnknown = net.HardwareAddr{0x52, 0x54, 0x00, 0xff, 0xff, 0xff}
	macBroken  = net.HardwareAddr{0x52, 0x54, 0x00, 0xee, 0xee, 0xee}
	guid       = append([]byte{0}, bytes.Repeat([]byte{0xab}, 16)...)
	loopback   = netip.MustParseAddr("127.0.0.1")
)

// testBooter knows macKnown, fails for macBroken; with bootUnknown it also
// boots every other machine (the appliance's --boot-unknown).
type testBooter struct {
	bootUnknown bool
	mu          sync.Mutex
	calls       []netboot.Machine
}

func (b *testBooter) Boot(ctx context.Context, m netboot.Machine) (*netboot.Plan, error) {
	b.mu.Lock()
	b.calls = append(b.calls, m)
	b.mu.Unlock()
	switch {
	case bytes.Equal(m.MAC, macBroken):
		return nil, errors.New("store unavailable")
	case bytes.Equal(m.MAC, macKnown), b.bootUnknown:
		return &netboot.Plan{Kernel: "vmlinuz"}, nil
	}
	return nil, nil
}

func (b *testBooter) last() netboot.Machine {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.calls[len(b.calls)-1]
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

type harness struct {
	t      *testing.T
	server *net.UDPAddr
	client *net.UDPConn
	relay  *net.UDPConn
}

// startServer runs a Server on a loopback port; replies to relays go to the
// harness's relay socket.
func startServer(t *testing.T, cfg Config) *harness {
	t.Helper()
	relay, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { relay.Close() })
	cfg.ServerPort = relay.LocalAddr().(*net.UDPAddr).Port
	if cfg.HTTPPort == 0 {
		cfg.HTTPPort = 8081
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	pc, err := Listen(ctx, "127.0.0.1:0", "")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, pc) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after cancel")
		}
	})
	client, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return &harness{t: t, server: pc.LocalAddr().(*net.UDPAddr), client: client, relay: relay}
}

func (h *harness) send(b []byte) {
	h.t.Helper()
	if _, err := h.client.WriteToUDP(b, h.server); err != nil {
		h.t.Fatal(err)
	}
}

// recv waits for the reply with xid on c, skipping others; nil on timeout.
func recv(t *testing.T, c *net.UDPConn, xid dhcpv4.TransactionID, wait time.Duration) *dhcpv4.DHCPv4 {
	t.Helper()
	deadline := time.Now().Add(wait)
	buf := make([]byte, 1500)
	for {
		c.SetReadDeadline(deadline)
		n, _, err := c.ReadFromUDP(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return nil
			}
			t.Fatal(err)
		}
		p, err := dhcpv4.FromBytes(buf[:n])
		if err != nil {
			t.Fatalf("server sent an unparsable packet: %v", err)
		}
		if p.TransactionID == xid {
			return p
		}
	}
}

var xidSeq uint32

func nextXID() dhcpv4.TransactionID {
	xidSeq++
	return dhcpv4.TransactionID{0x10, 0x20, byte(xidSeq >> 8), byte(xidSeq)}
}

func packet(t *testing.T, mac net.HardwareAddr, typ dhcpv4.MessageType, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	all := append([]dhcpv4.Modifier{dhcpv4.WithTransactionID(nextXID()), dhcpv4.WithMessageType(typ)}, mods...)
	d, err := dhcpv4.New(append(all, dhcpv4.WithHwAddr(mac))...)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func pxe(arch iana.Arch) []dhcpv4.Modifier {
	return []dhcpv4.Modifier{
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier(fmt.Sprintf("PXEClient:Arch:%05d:UNDI:002001", arch))),
		dhcpv4.WithOption(dhcpv4.OptClientArch(arch)),
		dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, guid),
	}
}

func ipxeClient() []dhcpv4.Modifier {
	return []dhcpv4.Modifier{
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC)),
		dhcpv4.WithGeneric(dhcpv4.OptionUserClassInformation, []byte("iPXE")),
		dhcpv4.WithGeneric(dhcpv4.OptionEtherboot, []byte{0xb1, 0x05, 0x01, 0x10, 0xec, 0x81, 0x39}),
	}
}

type want struct {
	typ      dhcpv4.MessageType
	file     string
	siaddr   string
	vendor   string
	opt43    []byte
	guid     bool
	stage    netboot.Stage
	arch     string
	firmware string
}

func checkReply(t *testing.T, r *dhcpv4.DHCPv4, w want) {
	t.Helper()
	if r.OpCode != dhcpv4.OpcodeBootReply || r.MessageType() != w.typ {
		t.Errorf("reply %v/%v, want %v", r.OpCode, r.MessageType(), w.typ)
	}
	if !r.YourIPAddr.IsUnspecified() {
		t.Errorf("proxy reply offers address %v", r.YourIPAddr)
	}
	if r.BootFileName != w.file {
		t.Errorf("file %q, want %q", r.BootFileName, w.file)
	}
	if opt := r.BootFileNameOption(); strings.Contains(w.file, "://") && opt != w.file {
		t.Errorf("option 67 %q, want the URL %q", opt, w.file)
	}
	if got := r.ServerIPAddr.String(); w.siaddr != "" && got != w.siaddr {
		t.Errorf("siaddr %s, want %s", got, w.siaddr)
	}
	if got := r.ClassIdentifier(); got != w.vendor {
		t.Errorf("option 60 %q, want %q", got, w.vendor)
	}
	if got := r.GetOneOption(dhcpv4.OptionVendorSpecificInformation); !bytes.Equal(got, w.opt43) {
		t.Errorf("option 43 % x, want % x", got, w.opt43)
	}
	if got := r.GetOneOption(dhcpv4.OptionClientMachineIdentifier); w.guid != bytes.Equal(got, guid) {
		t.Errorf("option 97 % x, copy wanted: %v", got, w.guid)
	}
	if sid := r.ServerIdentifier(); !sid.Equal(net.IPv4(127, 0, 0, 1)) {
		t.Errorf("option 54 %v", sid)
	}
}

func TestProxy(t *testing.T) {
	arm := fstest.MapFS{"ipxe-arm64.efi": {Data: []byte("arm")}, "undionly.kpxe": {Data: []byte("x")}, "ipxe.efi": {Data: []byte("x")}}
	script := "http://127.0.0.1:8081/boot/52-54-00-12-34-56.ipxe?arch=${buildarch:uristring}&platform=${platform:uristring}"
	cases := []struct {
		name      string
		bins      fstestFS
		pkt       func(t *testing.T) *dhcpv4.DHCPv4
		relayed   bool
		want      *want // nil: silence
		unknownOK bool
	}{
		{name: "BIOS PXE", pkt: func(t *testing.T) *dhcpv4.DHCPv4 {
			return packet(t, macKnown, dhcpv4.MessageTypeDiscover, pxe(iana.INTEL_X86PC)...)
		},
			want: &want{typ: dhcpv4.MessageTypeOffer, file: "undionly.kpxe", siaddr: "127.0.0.1", vendor: "PXEClient", opt43: []byte{6, 1, 8, 255}, guid: true, stage: netboot.StageFirmware, arch: "i386", firmware: "pcbios"}},
		{name: "UEFI x64 (arch 7)", pkt: func(t *testing.T) *dhcpv4.DHCPv4 {
			return packet(t, macKnown, dhcpv4.MessageTypeDiscover, pxe(iana.EFI_X86_64)...)
		},
			want: &want{typ: dhcpv4.MessageTypeOffer, file: "ipxe.efi", siaddr: "127.0.0.1", vendor: "PXEClient", guid: true, stage: netboot.StageFirmware, arch: "x86_64", firmware: "efi"}},
		{name: "UEFI x64 (arch 9)", pkt: func(t *testing.T) *dhcpv4.DHCPv4 {
			return packet(t, macKnown, dhcpv4.MessageTypeDiscover, pxe(iana.EFI_BC)...)
		},
			want: &want{typ: dhcpv4.MessageTypeOffer, file: "ipxe.efi", siaddr: "127.0.0.1", vendor: "PXEClient", guid: true, stage: netboot.StageFirmware, arch: "x86_64", firmware: "efi"}},
		{name: "arm64 with a build", bins: fstestFS{arm}, pkt: func(t *testing.T) *dhcpv4.DHCPv4 {
			return packet(t, macKnown, dhcpv4.MessageTypeDiscover, pxe(iana.EFI_ARM64)...)
		},
			want: &want{typ: dhcpv4.MessageTypeOffer, file: "ipxe-arm64.efi", siaddr: "127.0.0.1", vendor: "PXEClient", guid: true, stage: netboot.StageFirmware, arch: "arm64", firmware: "efi"}},
		{name: "arm64 without a build: silence", bins: fstestFS{fstest.MapFS{"ipxe.efi": {Data: []byte("x")}, "undionly.kpxe": {Data: []byte("x")}}}, pkt: func(t *testing.T) *dhcpv4.DHCPv4 {
			return packet(t, macKnown, dhcpv4.MessageTypeDiscover, pxe(iana.EFI_ARM64)...)
		}},
		{name: "UEFI HTTP boot", pkt: func(t *testing.T) *dhcpv4.DHCPv4 {
			return packet(t, macKnown, dhcpv4.MessageTypeDiscover, dhcpv4.WithOption(dhcpv4.OptClassIdentifier("HTTPClient:Arch:00016:UNDI:003001")), dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64_HTTP)))
		}, want: &want{typ: dhcpv4.MessageTypeOffer, file: "http://127.0.0.1:8081/ipxe/ipxe.efi", siaddr: "127.0.0.1", vendor: "HTTPClient", stage: netboot.StageFirmware, arch: "x86_64", firmware: "efi"}},
		{name: "iPXE second DHCP", pkt: func(t *testing.T) *dhcpv4.DHCPv4 {
			return packet(t, macKnown, dhcpv4.MessageTypeDiscover, ipxeClient()...)
		},
			want: &want{typ: dhcpv4.MessageTypeOffer, file: script, siaddr: "127.0.0.1", vendor: "PXEClient", stage: netboot.StageIPXE, arch: "i386", firmware: "pcbios"}},
		{name: "iPXE user class only (no option 60)", pkt: func(t *testing.T) *dhcpv4.DHCPv4 {
			return packet(t, macKnown, dhcpv4.MessageTypeDiscover, dhcpv4.WithGeneric(dhcpv4.OptionUserClassInformation, []byte("iPXE")))
		}, want: &want{typ: dhcpv4.MessageTypeOffer, file: script, siaddr: "127.0.0.1", stage: netboot.StageIPXE}},
		{name: "proxy REQUEST on 4011 (unicast, no server id)", pkt: func(t *testing.T) *dhcpv4.DHCPv4 {
			return packet(t, macKnown, dhcpv4.MessageTypeRequest, append(pxe(iana.EFI_X86_64), dhcpv4.WithClientIP(net.IPv4(127, 0, 0, 1)))...)
		}, want: &want{typ: dhcpv4.MessageTypeAck, file: "ipxe.efi", siaddr: "127.0.0.1", vendor: "PXEClient", guid: true, stage: netboot.StageFirmware, arch: "x86_64", firmware: "efi"}},
		{name: "REQUEST for the site's server: silence", pkt: func(t *testing.T) *dhcpv4.DHCPv4 {
			return packet(t, macKnown, dhcpv4.MessageTypeRequest, append(pxe(iana.INTEL_X86PC), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 9, 9, 9))))...)
		}},
		{name: "relayed (giaddr)", relayed: true, pkt: func(t *testing.T) *dhcpv4.DHCPv4 {
			return packet(t, macKnown, dhcpv4.MessageTypeDiscover, append(pxe(iana.INTEL_X86PC), dhcpv4.WithRelay(net.IPv4(127, 0, 0, 1)))...)
		}, want: &want{typ: dhcpv4.MessageTypeOffer, file: "undionly.kpxe", siaddr: "127.0.0.1", vendor: "PXEClient", opt43: []byte{6, 1, 8, 255}, guid: true, stage: netboot.StageFirmware, arch: "i386", firmware: "pcbios"}},
		{name: "non-PXE client: silence", pkt: func(t *testing.T) *dhcpv4.DHCPv4 {
			return packet(t, macKnown, dhcpv4.MessageTypeDiscover, dhcpv4.WithOption(dhcpv4.OptClassIdentifier("udhcp 1.35.0")))
		}},
		{name: "unknown MAC, boot-unknown false: silence", pkt: func(t *testing.T) *dhcpv4.DHCPv4 {
			return packet(t, macUnknown, dhcpv4.MessageTypeDiscover, pxe(iana.INTEL_X86PC)...)
		}},
		{name: "unknown MAC, boot-unknown true", unknownOK: true, pkt: func(t *testing.T) *dhcpv4.DHCPv4 {
			return packet(t, macUnknown, dhcpv4.MessageTypeDiscover, pxe(iana.INTEL_X86PC)...)
		},
			want: &want{typ: dhcpv4.MessageTypeOffer, file: "undionly.kpxe", siaddr: "127.0.0.1", vendor: "PXEClient", opt43: []byte{6, 1, 8, 255}, guid: true, stage: netboot.StageFirmware, arch: "i386", firmware: "pcbios"}},
		{name: "booter error: silence", pkt: func(t *testing.T) *dhcpv4.DHCPv4 {
			return packet(t, macBroken, dhcpv4.MessageTypeDiscover, pxe(iana.INTEL_X86PC)...)
		}},
		{name: "RELEASE: silence", pkt: func(t *testing.T) *dhcpv4.DHCPv4 {
			return packet(t, macKnown, dhcpv4.MessageTypeRelease, pxe(iana.INTEL_X86PC)...)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			booter := &testBooter{bootUnknown: c.unknownOK}
			cfg := Config{Mode: ModeProxy, Booter: booter}
			if c.bins.FS != nil {
				cfg.Binaries = c.bins.FS
			}
			h := startServer(t, cfg)
			req := c.pkt(t)
			h.send(req.ToBytes())
			conn := h.client
			if c.relayed {
				conn = h.relay
			}
			if c.want == nil {
				// Silence, then proof the server is alive: a good request
				// sent after it is answered.
				probe := packet(t, macKnown, dhcpv4.MessageTypeDiscover, pxe(iana.INTEL_X86PC)...)
				h.send(probe.ToBytes())
				if recv(t, h.client, probe.TransactionID, 5*time.Second) == nil {
					t.Fatal("server did not answer the probe after the silent request")
				}
				if r := recv(t, conn, req.TransactionID, 200*time.Millisecond); r != nil {
					t.Fatalf("expected silence, got %s", r.Summary())
				}
				return
			}
			r := recv(t, conn, req.TransactionID, 5*time.Second)
			if r == nil {
				t.Fatal("no reply")
			}
			checkReply(t, r, *c.want)
			if c.relayed && !r.GatewayIPAddr.Equal(net.IPv4(127, 0, 0, 1)) {
				t.Errorf("giaddr not kept: %v", r.GatewayIPAddr)
			}
			m := booter.last()
			if m.Stage != c.want.stage || m.Arch != c.want.arch || m.Firmware != c.want.firmware || !bytes.Equal(m.MAC, req.ClientHWAddr) {
				t.Errorf("booter saw %+v", m)
			}
		})
	}
}

type fstestFS struct{ FS fstest.MapFS }

func TestMalformedThenAnswered(t *testing.T) {
	type observed struct {
		typ     string
		outcome Outcome
	}
	seen := make(chan observed, 16)
	h := startServer(t, Config{Mode: ModeProxy, Booter: &testBooter{}, Observe: func(typ string, o Outcome) { seen <- observed{typ, o} }})
	good := packet(t, macKnown, dhcpv4.MessageTypeDiscover, pxe(iana.INTEL_X86PC)...)
	raw := good.ToBytes()
	bad := [][]byte{
		{},
		{1},
		raw[:100],     // truncated header
		raw[:240],     // header and cookie, no options
		raw[:241:241], // option code without length
		bytes.Repeat([]byte{0xff}, 600),
		append(append([]byte{}, raw[:len(raw)-4]...), 53, 200), // option length past the end
	}
	for _, b := range bad {
		h.send(b)
	}
	h.send(raw)
	r := recv(t, h.client, good.TransactionID, 5*time.Second)
	if r == nil {
		t.Fatal("server did not answer after malformed packets")
	}
	// Nothing else may have arrived: every reply above was for good's xid.
	h.client.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, _, err := h.client.ReadFromUDP(make([]byte, 1500)); err == nil {
		t.Fatalf("unexpected extra packet of %d bytes", n)
	}
	// Every packet was observed: the good DISCOVER answered, the rest ignored.
	counts := map[observed]int{}
	deadline := time.After(5 * time.Second)
	for range len(bad) + 1 {
		select {
		case o := <-seen:
			counts[o]++
		case <-deadline:
			t.Fatalf("observed only %v", counts)
		}
	}
	answered := observed{dhcpv4.MessageTypeDiscover.String(), OutcomeAnswered}
	ignored := 0
	for o, n := range counts {
		if o.outcome == OutcomeIgnored {
			ignored += n
		}
	}
	if counts[answered] != 1 || ignored != len(bad) || counts[observed{"malformed", OutcomeIgnored}] == 0 {
		t.Fatalf("observed %v", counts)
	}
}

// An installed machine (LocalDisk plan): its firmware's PXE gets a TFTP name and its
// UEFI HTTP boot a URL that both fail at once, and iPXE still its script (which
// boots the disk).
func TestInstalledMachine(t *testing.T) {
	booter := netboot.BooterFunc(func(ctx context.Context, m netboot.Machine) (*netboot.Plan, error) {
		return &netboot.Plan{LocalDisk: true, TaskID: "done"}, nil
	})
	h := startServer(t, Config{Mode: ModeProxy, Booter: booter})
	for _, c := range []struct {
		name string
		pkt  *dhcpv4.DHCPv4
		file string // "" = silence
	}{
		{"BIOS PXE", packet(t, macKnown, dhcpv4.MessageTypeDiscover, pxe(iana.INTEL_X86PC)...), LocalDiskFile},
		{"UEFI PXE", packet(t, macKnown, dhcpv4.MessageTypeDiscover, pxe(iana.EFI_X86_64)...), LocalDiskFile},
		{"UEFI HTTP boot", packet(t, macKnown, dhcpv4.MessageTypeDiscover, dhcpv4.WithOption(dhcpv4.OptClassIdentifier("HTTPClient:Arch:00016:UNDI:003001")), dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64_HTTP))), "http://127.0.0.1:8081" + LocalDiskPath},
		{"iPXE", packet(t, macKnown, dhcpv4.MessageTypeDiscover, ipxeClient()...), "http://127.0.0.1:8081/boot/52-54-00-12-34-56.ipxe?arch=${buildarch:uristring}&platform=${platform:uristring}"},
	} {
		t.Run(c.name, func(t *testing.T) {
			h.send(c.pkt.ToBytes())
			wait := 5 * time.Second
			if c.file == "" {
				wait = 300 * time.Millisecond
			}
			r := recv(t, h.client, c.pkt.TransactionID, wait)
			switch {
			case c.file == "" && r != nil:
				t.Fatalf("expected no offer, got %s", r.Summary())
			case c.file != "" && (r == nil || r.BootFileName != c.file):
				t.Fatalf("want file %q, got %v", c.file, r)
			}
		})
	}
}

// The packet's attributes reach a line written through the lazy With
// (formatted then, not per packet), before the line's own, and a level that
// filters the line formats nothing.
func TestLogAttrsOnLinesWritten(t *testing.T) {
	var out strings.Builder
	s, err := New(Config{Mode: ModeFull, Booter: &testBooter{}, HTTPPort: 8081, ServerIP: loopback,
		Logger: slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Pool:   testPool("10.77.0.2", "10.77.0.254"), Leases: &MemLeases{}})
	if err != nil {
		t.Fatal(err)
	}
	req := request{dst: net.IPv4bcast, src: &net.UDPAddr{IP: net.IPv4(10, 77, 0, 1), Port: 67}}
	d, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(7)), dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover), dhcpv4.WithRelay(net.IPv4(10, 77, 0, 1)))
	if o, _, _ := s.respond(context.Background(), d.ToBytes(), req); o == nil {
		t.Fatal("no offer")
	}
	if out.Len() != 0 {
		t.Fatalf("an offer logs at debug only, got %q", out.String())
	}
	r, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(7)), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithRelay(net.IPv4(10, 77, 0, 1)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(127, 0, 0, 1))), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 77, 0, 2))))
	if a, _, _ := s.respond(context.Background(), r.ToBytes(), req); a == nil {
		t.Fatal("no ack")
	}
	line := out.String()
	want := "msg=\"DHCP: lease\" mac=" + mac(7).String() + " xid=" + r.TransactionID.String() + " type=REQUEST relay=10.77.0.1 ip=10.77.0.2 "
	if !strings.Contains(line, want) {
		t.Fatalf("lease line %q, want it to contain %q", line, want)
	}
}
