package contract

import (
	"errors"
	"strings"
	"testing"
)

const gib = 1 << 30

// Recorded shapes of real inventories: a 2-disk server with a USB stick, a box with
// two identical SSDs, a VM.
var (
	nvmeSmall = Disk{Name: "nvme0n1", Path: "/dev/nvme0n1", SizeBytes: 480 * gib, Model: "SAMSUNG MZ7LH480", Serial: "S45NNA0M", WWN: "0x5002538e40a1b2c3", ByPath: "pci-0000:01:00.0-nvme-1", Controller: "nvme"}
	sataBig   = Disk{Name: "sda", Path: "/dev/sda", SizeBytes: 4000 * gib, Model: "ST4000NM", Serial: "ZC1ABCD", WWN: "0x5000c500a1b2c3d4", ByPath: "pci-0000:00:17.0-ata-1", Controller: "scsi"}
	usbStick  = Disk{Name: "sdb", Path: "/dev/sdb", SizeBytes: 32 * gib, Model: "Cruzer", Removable: true, ByPath: "pci-0000:00:14.0-usb-0:1:1.0-scsi-0:0:0:0", Controller: "scsi"}
	usbFixed  = Disk{Name: "sdc", Path: "/dev/sdc", SizeBytes: 240 * gib, Model: "USB SSD", ByPath: "pci-0000:00:14.0-usb-0:2:1.0-scsi-0:0:0:0", Controller: "scsi"}
	ssdA      = Disk{Name: "sda", SizeBytes: 960 * gib, Serial: "A1", Controller: "scsi"}
	ssdB      = Disk{Name: "sdb", SizeBytes: 960 * gib, Serial: "B2", Controller: "scsi"}
	vmDisk    = Disk{Name: "vda", Path: "/dev/vda", SizeBytes: 64 << 20, Controller: "virtio"}
)

func TestChooseDisk(t *testing.T) {
	for _, c := range []struct {
		name      string
		disks     []Disk
		hint      *DiskHint
		image     int64
		boot      string
		want      string // disk name, or "" for a refusal
		errSubstr string
	}{
		{name: "smallest fixed disk wins, USB ignored", disks: []Disk{sataBig, usbStick, nvmeSmall, usbFixed}, image: 10 * gib, want: "nvme0n1"},
		{name: "too small skipped", disks: []Disk{vmDisk, nvmeSmall}, image: 1 * gib, want: "nvme0n1"},
		{name: "VM disk", disks: []Disk{vmDisk}, image: 11 << 20, want: "vda"},
		{name: "two identical smallest: ambiguous", disks: []Disk{ssdA, ssdB, sataBig}, image: gib, errSubstr: "ambiguous"},
		{name: "hint by serial resolves ambiguity", disks: []Disk{ssdA, ssdB}, hint: &DiskHint{Serial: "B2"}, image: gib, want: "sdb"},
		{name: "hint by WWN, any case and prefix", disks: []Disk{nvmeSmall, sataBig}, hint: &DiskHint{WWN: "5000C500A1B2C3D4"}, image: gib, want: "sda"},
		{name: "hint by by-path", disks: []Disk{nvmeSmall, sataBig}, hint: &DiskHint{ByPath: "/dev/disk/by-path/pci-0000:00:17.0-ata-1"}, image: gib, want: "sda"},
		{name: "hint by size range", disks: []Disk{nvmeSmall, sataBig}, hint: &DiskHint{MinBytes: 1000 * gib}, image: gib, want: "sda"},
		{name: "hint matching two disks", disks: []Disk{ssdA, ssdB}, hint: &DiskHint{MinBytes: 900 * gib}, image: gib, errSubstr: "matches 2 disks"},
		{name: "hint naming a removable disk is refused", disks: []Disk{usbStick, nvmeSmall}, hint: &DiskHint{ByPath: usbStick.ByPath}, image: gib, errSubstr: "sdb (32.0 GiB Cruzer): removable"},
		{name: "hint matching nothing", disks: []Disk{nvmeSmall}, hint: &DiskHint{Serial: "nope"}, image: gib, errSubstr: "does not match"},
		{name: "the boot disk is never chosen", disks: []Disk{nvmeSmall, sataBig}, boot: "nvme0n1", image: gib, want: "sda"},
		{name: "only removable disks", disks: []Disk{usbStick, usbFixed}, image: gib, errSubstr: "no disk qualifies"},
		{name: "image larger than every disk", disks: []Disk{vmDisk}, image: gib, errSubstr: "too small"},
		{name: "no disks", image: gib, errSubstr: "no disk qualifies (0 seen)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := ChooseDisk(c.disks, c.hint, c.image, c.boot)
			if c.want != "" {
				if err != nil || got.Name != c.want {
					t.Fatalf("got %q, %v; want %s", got.Name, err, c.want)
				}
				return
			}
			if !errors.Is(err, ErrNoDisk) || !strings.Contains(err.Error(), c.errSubstr) {
				t.Fatalf("got %q, %v; want ErrNoDisk containing %q", got.Name, err, c.errSubstr)
			}
		})
	}
}
