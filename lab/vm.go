package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Firmware of a lab machine.
type Firmware string

const (
	BIOS Firmware = "bios" // SeaBIOS + QEMU's iPXE NIC ROM
	UEFI Firmware = "uefi" // OVMF on q35
)

// OVMF files from Debian's ovmf package; the vars file is copied per machine.
const (
	ovmfCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	ovmfVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// VMConfig describes one PXE-booting machine with a blank disk.
type VMConfig struct {
	Name     string
	MAC      string
	Firmware Firmware
	// NoNICROM removes the NIC's option ROM (UEFI): OVMF's own PXE then fetches
	// ipxe.efi over the appliance's TFTP, the path real UEFI servers take.
	NoNICROM bool
	DiskMiB  int
	CPUs     int
	MemMiB   int
}

// VM is a running lab machine.
type VM struct {
	*Proc
	Cfg    VMConfig
	Serial string // serial console log
	Disk   string // raw disk image
}

// StartVM creates the machine's tap on the bridge and its blank disk, and powers it
// on: network first, then disk (so after the install the appliance decides: a
// completed machine is told to boot its disk). Software emulation (TCG): /dev/kvm here
// cannot boot a stock kernel (LAB.md).
func (l *Lab) StartVM(ctx context.Context, c VMConfig) (*VM, error) {
	if _, err := os.Stat("/usr/bin/qemu-system-x86_64"); err != nil {
		return nil, errors.New("lab: qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")
	}
	if c.CPUs == 0 {
		c.CPUs = 2
	}
	if c.MemMiB == 0 {
		c.MemMiB = 1024
	}
	if c.DiskMiB == 0 {
		c.DiskMiB = 64
	}
	l.mu.Lock()
	l.taps++
	tap := fmt.Sprintf("tap%d", l.taps)
	l.mu.Unlock()
	for _, s := range [][]string{
		{"ip", "-n", l.NS, "tuntap", "add", "dev", tap, "mode", "tap"},
		{"ip", "-n", l.NS, "link", "set", tap, "master", Bridge},
		{"ip", "-n", l.NS, "link", "set", tap, "up"},
	} {
		if err := run(ctx, s...); err != nil {
			return nil, err
		}
	}
	vm := &VM{Cfg: c, Serial: filepath.Join(l.cfg.Dir, c.Name+".serial"), Disk: filepath.Join(l.cfg.Dir, c.Name+".disk")}
	os.Remove(vm.Serial)
	if err := os.WriteFile(vm.Disk, nil, 0o644); err != nil {
		return nil, err
	}
	if err := os.Truncate(vm.Disk, int64(c.DiskMiB)<<20); err != nil {
		return nil, err
	}
	nic := "virtio-net-pci,netdev=n0,mac=" + c.MAC + ",bootindex=1"
	if c.NoNICROM {
		nic += ",romfile="
	}
	args := []string{"qemu-system-x86_64", "-accel", "tcg", "-m", strconv.Itoa(c.MemMiB), "-smp", strconv.Itoa(c.CPUs),
		"-nographic", "-serial", "file:" + vm.Serial, "-monitor", "none",
		"-netdev", "tap,id=n0,ifname=" + tap + ",script=no,downscript=no", "-device", nic,
		"-drive", "file=" + vm.Disk + ",if=none,id=d0,format=raw", "-device", "virtio-blk-pci,drive=d0,bootindex=2",
		// Entropy: without it the agent's DHCP xid read blocked for minutes (LAB.md).
		"-device", "virtio-rng-pci",
	}
	if c.Firmware == UEFI {
		vars := filepath.Join(l.cfg.Dir, c.Name+".vars.fd")
		b, err := os.ReadFile(ovmfVars) // 4 MiB: each machine gets its own writable copy
		if err == nil {
			err = os.WriteFile(vars, b, 0o644)
		}
		if err != nil {
			return nil, fmt.Errorf("lab: OVMF vars (apt-get install ovmf): %w", err)
		}
		args = append(args, "-machine", "q35",
			"-drive", "if=pflash,format=raw,readonly=on,file="+ovmfCode,
			"-drive", "if=pflash,format=raw,file="+vars,
			// No IPv6 network boot (PXE or HTTP), as IPv4 boot networks usually have
			// it off: once the appliance stays silent for an installed machine, OVMF
			// reaches its disk without waiting out DHCPv6 attempts nobody answers.
			// (Its HTTPv4 boot attempt still costs about a minute; OVMF has no
			// switch for it alone.)
			"-fw_cfg", "name=opt/org.tianocore/IPv6Support,string=no")
	}
	p, err := l.Start(c.Name, args...)
	if err != nil {
		return nil, err
	}
	vm.Proc = p
	return vm, nil
}

// SerialLog returns the serial console so far.
func (vm *VM) SerialLog() string {
	b, _ := os.ReadFile(vm.Serial)
	return string(b)
}

// WaitSerial waits for a line containing s on the serial console and returns it.
func (vm *VM) WaitSerial(ctx context.Context, s string) (string, error) {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		b, _ := os.ReadFile(vm.Serial)
		if i := bytes.Index(b, []byte(s)); i >= 0 {
			if end := bytes.IndexByte(b[i:], '\n'); end >= 0 {
				return strings.TrimRight(string(b[i:i+end]), "\r"), nil
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%s: no %q on the serial console: %w", vm.Cfg.Name, s, ctx.Err())
		case <-vm.Done():
			b, _ := os.ReadFile(vm.Serial)
			if i := bytes.Index(b, []byte(s)); i >= 0 {
				line, _, _ := strings.Cut(string(b[i:]), "\n")
				return strings.TrimRight(line, "\r"), nil
			}
			return "", fmt.Errorf("%s: QEMU exited (%v) without %q on the serial console", vm.Cfg.Name, vm.Err(), s)
		case <-tick.C:
		}
	}
}
