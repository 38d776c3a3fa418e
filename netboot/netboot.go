// Package netboot holds what the boot protocols (netboot/dhcpd, netboot/tftpd,
// netboot/ipxe) share: the machine a request came from, the plan for it, and
// the Booter that decides between the two. It knows nothing of etcd or tasks:
// the appliance implements Booter on top of its store.
package netboot

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"unicode/utf8"
)

// Stage says which step of the boot path asked. Booters may log it; most
// should answer the same way at every stage.
type Stage string

const (
	StageFirmware Stage = "firmware" // the NIC's PXE/HTTP-boot ROM, first DHCP
	StageIPXE     Stage = "ipxe"     // iPXE's own DHCP (user class iPXE)
	StageScript   Stage = "script"   // iPXE fetching its per-machine script over HTTP
)

// Firmware kinds, spelled like iPXE's ${platform}.
const (
	FirmwareBIOS = "pcbios"
	FirmwareEFI  = "efi"
)

// Machine is what the boot protocols know about a client.
type Machine struct {
	MAC net.HardwareAddr
	// Arch is iPXE's ${buildarch} spelling: "i386", "x86_64", "arm64", or ""
	// when the client did not say (DHCP option 93 absent).
	Arch string
	// Firmware is FirmwareBIOS, FirmwareEFI or "" when unknown.
	Firmware string
	Stage    Stage
}

// Plan is what a machine boots. A Plan with LocalDisk set boots the machine's
// own disk (its task is completed); otherwise Kernel is required.
type Plan struct {
	// LocalDisk makes the script hand the machine back to its firmware's next
	// boot device, so a server left PXE-first does not loop into the installer.
	LocalDisk bool

	// Kernel and Initrds are names of files the HTTP handler serves
	// (ipxe.Config.Files) or absolute http(s) URLs.
	Kernel  string
	Initrds []string

	// RegionalURL and TaskID go on the kernel command line as lpmos.url= and
	// lpmos.task= for the agent.
	RegionalURL string
	TaskID      string
	// AgentToken goes on the kernel command line as lpmos.token=: the task's agent
	// token, for an agent that restarted after its first report. Only set at
	// StageScript (the DHCP stages never render the plan).
	AgentToken string
	// Args are extra kernel arguments, each "key" or "key=value".
	Args []string
}

// A Booter decides what a machine boots.
//
// Boot protocols are stateless and clients retry, so Boot is called several
// times per boot attempt (firmware DHCP on 67 and again on 4011, iPXE's DHCP,
// the HTTP script request): keep it cheap and idempotent, and do not count
// calls as boots. A nil Plan with a nil error means "not ours": the DHCP
// server stays silent (so another server may answer) and the HTTP handler
// answers 404. An error is logged and treated like silence: a broken store
// must not make machines boot something unexpected. Boot may be called
// concurrently.
//
// At the DHCP stages only "nil or not" matters (the reply carries the
// first stage or the script URL, never the plan); the script stage renders
// the plan, with one exception: a LocalDisk plan at StageFirmware makes DHCP
// hand the firmware to its next boot device directly (a boot file name that
// TFTP and HTTP refuse, so the firmware gives up at once). A machine whose task is completed should
// get a Plan with LocalDisk set, so a server left on PXE-first boot order
// boots its disk instead of looping into the installer. Machine.Arch and Firmware may be
// empty (a client that did not say).
type Booter interface {
	Boot(ctx context.Context, m Machine) (*Plan, error)
}

// BooterFunc adapts a function to Booter.
type BooterFunc func(context.Context, Machine) (*Plan, error)

// Boot calls f.
func (f BooterFunc) Boot(ctx context.Context, m Machine) (*Plan, error) { return f(ctx, m) }

// LocalDiskFile is the boot file offered to an installed machine's firmware. Nothing
// serves it: the firmware's download fails at once and it moves on to its disk.
const LocalDiskFile = "local-disk.efi"

// ErrUnsafeValue is returned for a value that would break out of the line it
// is written on (iPXE scripts, kernel command lines are line- and
// space-oriented).
var ErrUnsafeValue = errors.New("netboot: unsafe value")

// CheckValue refuses control characters (newline, NUL, DEL, Unicode line
// separators) and invalid UTF-8 in v. name says which field, for the error.
func CheckValue(name, v string) error {
	if !utf8.ValidString(v) {
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrUnsafeValue, name)
	}
	for i, r := range v {
		if r < 0x20 || r == 0x7f || r == 0x85 || r == 0x2028 || r == 0x2029 {
			return fmt.Errorf("%w: %s has control character %q at byte %d", ErrUnsafeValue, name, r, i)
		}
	}
	return nil
}

// CheckWord is CheckValue that also refuses spaces and empty values, for
// values that must stay one word (a kernel argument, a URL).
func CheckWord(name, v string) error {
	if v == "" {
		return fmt.Errorf("%w: %s is empty", ErrUnsafeValue, name)
	}
	if strings.ContainsAny(v, " \t") {
		return fmt.Errorf("%w: %s contains a space", ErrUnsafeValue, name)
	}
	return CheckValue(name, v)
}

// BootIF formats mac the way pxelinux and dracut read it on the kernel
// command line: "01-" (ARP hardware type 1, Ethernet) then the MAC in
// lower-case hex with dashes.
func BootIF(mac net.HardwareAddr) string {
	return "01-" + strings.ReplaceAll(mac.String(), ":", "-")
}

// ReceiveBuffer is the UDP receive queue DHCP and TFTP ask for. A boot storm (a row of
// racks powering on) arrives as one burst: 1,000 machines send a DISCOVER to 67 and a
// REQUEST to 4011 within a second or two, and the kernel charges each small datagram
// about 2 KiB of buffer, so 4 MiB holds some 2,000 of them instead of dropping DISCOVERs
// (dnsmasq's collapse near 10,000 machines is this queue overflowing, ipxe/ipxe#643).
const ReceiveBuffer = 4 << 20

// SizeReceiveBuffer sets ReceiveBuffer on a socket: SO_RCVBUFFORCE as root (past
// net.core.rmem_max, 208 KiB by default), else SO_RCVBUF (capped at rmem_max).
func SizeReceiveBuffer(fd uintptr) {
	if syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUFFORCE, ReceiveBuffer) != nil {
		syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, ReceiveBuffer)
	}
}
