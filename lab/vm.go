package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"lpmos.dev/lpmos/internal/netlab"
	"lpmos.dev/lpmos/internal/qemu"
)

// VMConfig describes one PXE-booting machine with a blank disk.
type VMConfig struct {
	Name     string
	MAC      string
	Firmware qemu.Firmware
	// NoNICROM removes the NIC's option ROM (UEFI): OVMF's own PXE then fetches
	// ipxe.efi over the appliance's TFTP, the path real UEFI servers take.
	NoNICROM bool
	DiskMiB  int
	// DiskSerial is the disk's serial number ("" for none, as before).
	DiskSerial string
	CPUs       int
	MemMiB     int
}

// VM is a running lab machine.
type VM struct {
	*qemu.VM
	Cfg  VMConfig
	Disk string // raw disk image
}

// StartVM creates the machine's tap on the bridge and its blank disk, and powers it
// on: network first, then disk (so after the install the appliance decides: a
// completed machine is told to boot its disk). It reboots like a server (no
// -no-reboot); Close ends it.
func (l *Lab) StartVM(ctx context.Context, c VMConfig) (*VM, error) {
	if err := qemu.Installed(); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
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
	if err := netlab.AddTap(ctx, l.NS, tap, Bridge); err != nil {
		return nil, err
	}
	disk := filepath.Join(l.cfg.Dir, c.Name+".disk")
	if err := os.WriteFile(disk, nil, 0o644); err != nil {
		return nil, err
	}
	if err := os.Truncate(disk, int64(c.DiskMiB)<<20); err != nil {
		return nil, err
	}
	v, err := qemu.Start(qemu.Config{Name: c.Name, Dir: l.cfg.Dir, NetNS: l.NS,
		Firmware: c.Firmware, CPUs: c.CPUs, MemMiB: c.MemMiB,
		NICs:  []qemu.NIC{{Tap: tap, MAC: c.MAC, NoROM: c.NoNICROM, BootIndex: 1}},
		Disks: []qemu.Disk{{Path: disk, BootIndex: 2, Serial: c.DiskSerial}},
		RNG:   true,
		// No IPv6 network boot under UEFI: once the appliance stays silent for an
		// installed machine, OVMF reaches its disk without waiting out DHCPv6. (Its
		// HTTPv4 boot attempt still costs about a minute; OVMF has no switch for it.)
		NoIPv6NetBoot: true,
	})
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	l.track(v.Proc)
	return &VM{VM: v, Cfg: c, Disk: disk}, nil
}
