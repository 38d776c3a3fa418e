package main

import (
	"context"
	"log/slog"
	"os"
	"slices"
	"strings"

	"lpmos.dev/lpmos/agent-initramfs/agent"
	"lpmos.dev/lpmos/agent-initramfs/boot"
	"lpmos.dev/lpmos/contract"
)

// initramfsFlag is how scripts/build-initramfs.sh starts the agent (u-root's init runs
// /bin/uinit with the arguments in /etc/uinit.flags).
const initramfsFlag = "--initramfs"

// In the initramfs the agent is PID 1's child: it takes its settings from the kernel
// command line, not flags, and must never exit (boot.Run). Checked in init so main's
// flag parsing stays the host-mode path.
func init() {
	// Anywhere in the arguments: init puts uroot.uinitargs= from the kernel command
	// line before the flags file's.
	if !slices.Contains(os.Args[1:], initramfsFlag) {
		return
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	boot.Run(context.Background(), log, func(ctx context.Context, s boot.Settings) error {
		return agent.Run(ctx, agent.Config{
			RegionalURL: s.RegionalURL,
			MAC:         s.MAC,
			Inventory:   func() (contract.Hardware, error) { return bootInventory(s) },
			Log:         log,
		})
	})
}

// bootInventory adds what only the boot knows to the agent's inventory: devices left
// without a driver, and the disk the agent booted from.
func bootInventory(s boot.Settings) (contract.Hardware, error) {
	hw, err := agent.Inventory()
	if err != nil {
		return hw, err
	}
	for _, u := range s.Drivers.Unclaimed {
		vendor, device, _ := strings.Cut(u.ID, ":")
		hw.MissingDrivers = append(hw.MissingDrivers, contract.PCIDevice{Address: u.Address, Vendor: vendor, Device: device, Class: u.Class})
	}
	if s.BootDisk != "" {
		hw.BootDisk = s.BootDisk
	}
	return hw, nil
}
