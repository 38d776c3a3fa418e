package dhcpd

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"lpmos.dev/lpmos/netboot"
	"lpmos.dev/lpmos/netboot/ipxe"
)

// kind is a client's kind, from options 60, 77 and 175.
type kind int

const (
	kindOther kind = iota // not a network-boot client
	kindPXE               // firmware PXE ROM: option 60 "PXEClient..."
	kindHTTP              // UEFI HTTP boot: option 60 "HTTPClient..."
	kindIPXE              // iPXE itself: user class "iPXE" or option 175
)

func classify(p *dhcpv4.DHCPv4) kind {
	// iPXE sends option 77 as the bare string "iPXE" (not RFC 3004
	// length-prefixed) and always sends option 175 (Etherboot encapsulated).
	if bytes.Contains(p.GetOneOption(dhcpv4.OptionUserClassInformation), []byte("iPXE")) ||
		p.Options.Has(dhcpv4.OptionEtherboot) {
		return kindIPXE
	}
	vc := p.ClassIdentifier()
	switch {
	case strings.HasPrefix(vc, "PXEClient"):
		return kindPXE
	case strings.HasPrefix(vc, "HTTPClient"):
		return kindHTTP
	}
	return kindOther
}

// clientArch reads option 93 (RFC 4578 2.1), falling back to the
// "PXEClient:Arch:00007" form of option 60 that some ROMs send alone.
func clientArch(p *dhcpv4.DHCPv4) (iana.Arch, bool) {
	if a := p.ClientArch(); len(a) > 0 {
		return a[0], true
	}
	parts := strings.Split(p.ClassIdentifier(), ":")
	if len(parts) >= 3 && parts[1] == "Arch" {
		if n, err := strconv.ParseUint(parts[2], 10, 16); err == nil {
			return iana.Arch(n), true
		}
	}
	return 0, false
}

// archInfo maps option 93 to iPXE's ${buildarch}/${platform} spelling and
// the first-stage file. The IANA registry calls 7 "EFI BC" and 9
// "EFI x86-64"; x86-64 firmware sends either.
type archInfo struct {
	arch, firmware string
	file           string // first stage over TFTP (PXE) or HTTP; "" = none we can serve
}

func archOf(a iana.Arch) (archInfo, bool) {
	switch a {
	case iana.INTEL_X86PC:
		return archInfo{"i386", netboot.FirmwareBIOS, ipxe.FileBIOS}, true
	case iana.EFI_X86_64, iana.EFI_BC, iana.EFI_X86_64_HTTP, iana.EFI_BC_HTTP:
		return archInfo{"x86_64", netboot.FirmwareEFI, ipxe.FileEFIx64}, true
	case iana.EFI_ARM64, iana.EFI_ARM64_HTTP:
		return archInfo{"arm64", netboot.FirmwareEFI, ipxe.FileEFIARM64}, true
	case iana.EFI_IA32, iana.EFI_X86_HTTP:
		return archInfo{"i386", netboot.FirmwareEFI, ""}, true
	}
	return archInfo{}, false
}

// bootInfo is the boot part of a reply.
type bootInfo struct {
	stage    netboot.Stage
	arch     string
	file     string // BOOTP file field: TFTP name or URL
	siaddr   netip.Addr
	vendor   string // option 60 echoed: "PXEClient" or "HTTPClient"
	pxeMenu  bool   // option 43 "boot the file, skip discovery"
	guid     []byte // option 97, copied
	tftpName string // option 66
}

func (b *bootInfo) apply(r *dhcpv4.DHCPv4) {
	r.BootFileName = b.file
	if strings.Contains(b.file, "://") {
		// The header's file field holds 127 bytes; a URL also goes in
		// option 67 (RFC 2132 9.5), which iPXE and UEFI HTTP boot read.
		r.UpdateOption(dhcpv4.OptBootFileName(b.file))
	}
	if b.siaddr.IsValid() {
		r.ServerIPAddr = b.siaddr.AsSlice()
	}
	if b.vendor != "" {
		r.UpdateOption(dhcpv4.OptClassIdentifier(b.vendor))
	}
	if b.pxeMenu {
		// PXE 2.1 spec table 2-1: PXE_DISCOVERY_CONTROL (6) = 8: with a
		// boot file in this offer, download it without boot server
		// discovery. BIOS ROMs wait for discovery otherwise; EDK2 treats a
		// PXE vendor option as a boot menu, so UEFI gets none.
		r.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionVendorSpecificInformation, []byte{6, 1, 8, 255}))
	}
	if b.guid != nil {
		// PXE 2.1 spec 2.2.5: the client machine identifier goes back as sent.
		r.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionClientMachineIdentifier, b.guid))
	}
	if b.tftpName != "" {
		r.UpdateOption(dhcpv4.OptTFTPServerName(b.tftpName))
	}
}

// bootOptions decides the boot part of the reply, or nil for silence: not
// a boot client, an architecture we have no first stage for, or the Booter
// says the machine is not ours.
func (s *Server) bootOptions(ctx context.Context, log *slog.Logger, req request, serverIP netip.Addr) *bootInfo {
	p := req.pkt
	k := classify(p)
	if k == kindOther {
		log.Debug("DHCP: not a PXE, HTTP-boot or iPXE client")
		return nil
	}
	a, hasArch := clientArch(p)
	if !hasArch && k == kindPXE {
		a, hasArch = iana.INTEL_X86PC, true // PXE 2.1 predates option 93: BIOS
	}
	var info archInfo
	known := false
	if hasArch {
		info, known = archOf(a)
	}
	if hasArch && !known && k != kindIPXE {
		log.Info("DHCP: no first stage for this client architecture", "arch", a.String())
		return nil
	}
	m := netboot.Machine{MAC: p.ClientHWAddr, Arch: info.arch, Firmware: info.firmware, Stage: netboot.StageFirmware}
	// siaddr for every kind: iPXE accepts a proxy reply only with a
	// next-server and a file (dhcp_has_pxeopts), even when the file is a URL.
	b := &bootInfo{arch: info.arch, siaddr: serverIP, guid: p.GetOneOption(dhcpv4.OptionClientMachineIdentifier)}
	base := fmt.Sprintf("http://%s", netip.AddrPortFrom(serverIP, uint16(s.cfg.HTTPPort)))
	switch k {
	case kindIPXE:
		// Second DHCP: iPXE fetches its script over HTTP itself.
		m.Stage = netboot.StageIPXE
		b.file = ipxe.ScriptURL(base, p.ClientHWAddr) + ipxe.FactsQuery
		// iPXE takes a ProxyDHCP offer or ACK only with "PXE options": a boot
		// file AND a next-server (siaddr) (dhcp_has_pxeopts in iPXE's dhcp.c);
		// without siaddr it ignores the answer and boots nothing.
		b.siaddr = serverIP
		if s.cfg.Mode == ModeProxy && strings.HasPrefix(p.ClassIdentifier(), "PXEClient") {
			b.vendor = "PXEClient" // iPXE takes a proxy offer only with it
		}
	case kindHTTP:
		if !s.haveFirstStage(log, info) {
			return nil
		}
		// UEFI 2.x 24.7.2: an HTTP-boot offer echoes "HTTPClient" and
		// carries a URL in the file field.
		b.file = ipxe.BinaryURL(base, info.file)
		b.vendor = "HTTPClient"
	case kindPXE:
		if !s.haveFirstStage(log, info) {
			return nil
		}
		b.file = info.file
		b.tftpName = serverIP.String()
		b.vendor = "PXEClient"
		b.pxeMenu = info.firmware == netboot.FirmwareBIOS
	}
	b.stage = m.Stage
	plan, err := s.cfg.Booter.Boot(ctx, m)
	if err != nil {
		log.Error("DHCP: booter failed, staying silent", "err", err)
		req.fail()
		return nil
	}
	if plan == nil {
		log.Info("DHCP: machine not ours, staying silent", "stage", m.Stage)
		return nil
	}
	if plan.LocalDisk && m.Stage == netboot.StageFirmware {
		// An installed machine's firmware goes straight to its next boot device
		// instead of through iPXE, which would only exit back (and Debian's
		// ipxe.efi hangs doing that under OVMF). Silence would work too, but a
		// firmware waits out its DHCP retries first (OVMF: PXE about 40 s, HTTP
		// boot about 100 s); a boot file that does not exist fails at once.
		if k == kindHTTP {
			b.file = base + LocalDiskPath
		} else {
			b.file = LocalDiskFile
		}
		log.Info("DHCP: installed machine: offering a boot file that fails, so its firmware moves on to its disk", "stage", m.Stage, "file", b.file)
	}
	return b
}

// An installed machine's firmware is offered these names, which TFTP and the HTTP
// boot handler refuse (not found), so it moves on to its disk at once.
const (
	LocalDiskFile = netboot.LocalDiskFile
	LocalDiskPath = "/boot/" + netboot.LocalDiskFile
)

func (s *Server) haveFirstStage(log *slog.Logger, info archInfo) bool {
	if info.file == "" {
		log.Warn("DHCP: no iPXE build for this architecture", "arch", info.arch, "firmware", info.firmware)
		return false
	}
	if s.cfg.Binaries != nil && !ipxe.HasBinary(s.cfg.Binaries, info.file) {
		log.Warn("DHCP: first-stage iPXE binary missing: add it to --ipxe-dir (scripts/fetch-ipxe.sh)", "file", info.file, "arch", info.arch)
		return false
	}
	return true
}
