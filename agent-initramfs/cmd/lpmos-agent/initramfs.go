package main

import (
	"context"
	"log/slog"
	"os"
	"strings"

	"lpmos.dev/lpmos/agent-initramfs/agent"
	"lpmos.dev/lpmos/agent-initramfs/boot"
	"lpmos.dev/lpmos/contract"
)

// initramfsFlag is how scripts/build-initramfs.sh starts the agent (u-root's init runs
// /bin/uinit with the arguments in /etc/uinit.flags).
const initramfsFlag = "--initramfs"

// runInitramfs is the agent as PID 1's child in the initramfs: it takes its settings
// from the kernel command line, not flags, and never returns (boot.Run).
func runInitramfs() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	boot.Run(context.Background(), log, func(ctx context.Context, s boot.Settings) error {
		return agent.Run(ctx, agent.Config{
			RegionalURL: s.RegionalURL,
			MAC:         s.MAC,
			AgentToken:  s.AgentToken,
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
