package boot

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"lpmos.dev/lpmos/agent-initramfs/kmod"
)

// Kernel command line parameters the agent reads. The iPXE script of the appliance
// writes them; BOOTIF is the PXE convention (pxelinux "IPAPPEND 2", iPXE
// "BOOTIF=01-${netX/mac:hexhyp}") naming the NIC the machine booted from.
const (
	ParamURL         = "lpmos.url"
	ParamTask        = "lpmos.task"
	ParamToken       = "lpmos.token"
	ParamRebootDelay = "lpmos.reboot_delay"
	ParamDebug       = "lpmos.debug"
	ParamBootIF      = "BOOTIF"
)

// DefaultRebootDelay is how long a failed agent shows its reason on the console before
// it reboots, when lpmos.reboot_delay does not say: long enough to read, short enough
// that a rack of failed machines comes back by itself.
const DefaultRebootDelay = 5 * time.Minute

// ErrNoURL means the kernel command line does not say where the regional API is.
var ErrNoURL = errors.New(ParamURL + "= missing from the kernel command line")

// Settings is what the agent needs from the boot environment.
type Settings struct {
	RegionalURL string        // lpmos.url=
	TaskID      string        // lpmos.task=, "" when the appliance did not say
	AgentToken  string        // lpmos.token=: the task's agent token (approved or installing tasks only)
	MAC         string        // the boot NIC's MAC, aa:bb:cc:dd:ee:ff
	Interface   string        // the boot NIC's name, eth0
	RebootDelay time.Duration // after a fatal error (DefaultRebootDelay unless set); 0 halts
	Debug       bool          // lpmos.debug=1: a fatal error opens a rescue shell instead
	BootDisk    string        // disk the agent booted from; "" for netboot (the usual case)
	Drivers     kmod.Report   // modules loaded and PCI devices left without a driver
}

// ParseCmdline reads the agent's parameters from a kernel command line (/proc/cmdline).
// Settings come back filled as far as they parsed, so a caller can honour
// lpmos.reboot_delay even when lpmos.url is missing.
func ParseCmdline(r io.Reader) (Settings, error) {
	b, err := io.ReadAll(io.LimitReader(r, 64<<10))
	if err != nil {
		return Settings{}, fmt.Errorf("read kernel command line: %w", err)
	}
	s := Settings{RebootDelay: DefaultRebootDelay}
	var errs []error
	for _, f := range splitCmdline(string(b)) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case ParamURL:
			s.RegionalURL = v
		case ParamTask:
			s.TaskID = v
		case ParamToken:
			s.AgentToken = v
		case ParamRebootDelay:
			d, err := parseDelay(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", ParamRebootDelay, v, err))
				continue // keep the default
			}
			s.RebootDelay = d
		case ParamDebug:
			s.Debug = v == "1" || v == "true" || v == "yes"
		case ParamBootIF:
			mac, err := parseBootIF(v)
			if err != nil {
				errs = append(errs, err)
			}
			s.MAC = mac
		}
	}
	if s.RegionalURL == "" {
		errs = append(errs, ErrNoURL)
	}
	return s, errors.Join(errs...)
}

// splitCmdline splits on spaces outside double quotes and drops the quotes, as the
// kernel does for param="a b".
func splitCmdline(s string) []string {
	var out []string
	var cur strings.Builder
	quoted, have := false, false
	for _, r := range s {
		switch {
		case r == '"':
			quoted = !quoted
			have = true
		case !quoted && (r == ' ' || r == '\t' || r == '\n'):
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}

// parseDelay accepts a Go duration ("90s", "5m") or plain seconds ("90").
func parseDelay(v string) (time.Duration, error) {
	if n, err := strconv.Atoi(v); err == nil && n >= 0 {
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("want seconds or a duration like 90s")
	}
	return d, nil
}

// parseBootIF turns "01-aa-bb-cc-dd-ee-ff" (ARP type 1, Ethernet, then the MAC) into
// "aa:bb:cc:dd:ee:ff".
func parseBootIF(v string) (string, error) {
	typ, rest, ok := strings.Cut(v, "-")
	if !ok || typ != "01" {
		return "", fmt.Errorf("%s=%q: want 01-aa-bb-cc-dd-ee-ff", ParamBootIF, v)
	}
	mac, err := net.ParseMAC(rest)
	if err != nil || len(mac) != 6 {
		return "", fmt.Errorf("%s=%q: want 01-aa-bb-cc-dd-ee-ff", ParamBootIF, v)
	}
	return mac.String(), nil
}
