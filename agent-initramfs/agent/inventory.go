package agent

import (
	"bytes"
	"cmp"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/jaypipes/ghw"

	"lpmos.dev/lpmos/contract"
)

// Inventory collects the machine's hardware with ghw, plus the few facts ghw lacks that
// an operator needs before approving a wipe (by-path names, partition tables, link
// state, firmware type). Missing facts are left empty rather than failing the report.
func Inventory() (contract.Hardware, error) {
	var hw contract.Hardware
	opt := ghw.WithDisableWarnings()
	if h, _ := os.Hostname(); h != "(none)" { // the kernel's placeholder in an initramfs
		hw.Hostname = h
	}
	hw.Firmware = "bios"
	if _, err := os.Stat("/sys/firmware/efi"); err == nil {
		hw.Firmware = "uefi"
	}
	if c, err := ghw.CPU(opt); err == nil {
		hw.CPU.Sockets = len(c.Processors)
		hw.CPU.Cores = int(c.TotalCores)
		hw.CPU.Threads = int(c.TotalHardwareThreads)
		if len(c.Processors) > 0 {
			hw.CPU.Model = c.Processors[0].Model
		}
	}
	if m, err := ghw.Memory(opt); err == nil {
		hw.Memory.TotalBytes = m.TotalPhysicalBytes
		hw.Memory.UsableBytes = m.TotalUsableBytes
		if hw.Memory.TotalBytes <= 0 {
			hw.Memory.TotalBytes = m.TotalUsableBytes
		}
	}
	byPath := byPathNames("/dev/disk/by-path")
	if b, err := ghw.Block(opt); err == nil {
		for _, d := range b.Disks {
			if skipDisk(d.Name) {
				continue
			}
			disk := contract.Disk{
				Name: d.Name, Path: "/dev/" + d.Name, SizeBytes: int64(d.SizeBytes),
				Model: clean(d.Model), Vendor: clean(d.Vendor), Serial: cmp.Or(clean(d.SerialNumber), sysfsSerial(d.Name)), WWN: clean(d.WWN),
				ByPath: byPath[d.Name], Removable: d.IsRemovable,
				Rotational: d.DriveType.String() == "HDD", Controller: strings.ToLower(d.StorageController.String()),
				StorageType: strings.ToLower(d.DriveType.String()),
				PartTable:   partitionTable("/dev/" + d.Name),
			}
			for _, p := range d.Partitions {
				disk.Partitions = append(disk.Partitions, contract.Partition{
					Name: p.Name, SizeBytes: int64(p.SizeBytes), Type: p.Type, Label: p.FilesystemLabel, MountPoint: p.MountPoint,
				})
			}
			hw.Disks = append(hw.Disks, disk)
		}
	}
	hw.NICs = nics()
	if p, err := ghw.Product(opt); err == nil {
		hw.System = contract.System{Vendor: clean(p.Vendor), Product: clean(p.Name), Serial: clean(p.SerialNumber), UUID: clean(p.UUID)}
	}
	if bi, err := ghw.BIOS(opt); err == nil {
		hw.System.BIOS = clean(bi.Version)
	}
	return hw, nil
}

// sysfsSerial is the disk's serial from sysfs (virtio-blk: block/X/serial; NVMe:
// block/X/device/serial), for when ghw finds none: it reads udev's database, and an
// initramfs runs no udev.
func sysfsSerial(name string) string {
	for _, p := range []string{"/sys/block/" + name + "/serial", "/sys/block/" + name + "/device/serial"} {
		if b, err := os.ReadFile(p); err == nil {
			if s := clean(string(b)); s != "" {
				return s
			}
		}
	}
	return ""
}

// skipDisk drops devices that are never install targets nor real disks.
func skipDisk(name string) bool {
	for _, p := range []string{"loop", "ram", "zram", "dm-", "md", "sr", "nbd"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

func clean(s string) string {
	if s == "unknown" || s == "None" {
		return ""
	}
	return strings.TrimSpace(s)
}

func byPathNames(dir string) map[string]string {
	out := map[string]string{}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), "-part") {
			continue
		}
		target, err := filepath.EvalSymlinks(filepath.Join(dir, e.Name()))
		if err == nil {
			out[filepath.Base(target)] = e.Name()
		}
	}
	return out
}

// partitionTable reads the first two sectors: "gpt" (EFI PART at LBA 1), "mbr"
// (0x55AA boot signature), "" (blank or unreadable).
func partitionTable(dev string) string {
	f, err := os.Open(dev)
	if err != nil {
		return ""
	}
	defer f.Close()
	buf := make([]byte, 1024)
	if n, _ := f.ReadAt(buf, 0); n < 1024 {
		return ""
	}
	switch {
	case bytes.Equal(buf[512:520], []byte("EFI PART")):
		return "gpt"
	case buf[510] == 0x55 && buf[511] == 0xAA:
		return "mbr"
	}
	return ""
}

func nics() []contract.NIC {
	ifs, _ := net.Interfaces()
	var out []contract.NIC
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagLoopback != 0 || len(ifc.HardwareAddr) != 6 {
			continue
		}
		sys := "/sys/class/net/" + ifc.Name
		n := contract.NIC{Name: ifc.Name, MAC: ifc.HardwareAddr.String()}
		if b, err := os.ReadFile(sys + "/carrier"); err == nil {
			n.Link = strings.TrimSpace(string(b)) == "1"
		}
		if drv, err := os.Readlink(sys + "/device/driver"); err == nil {
			n.Driver = filepath.Base(drv)
		}
		if dev, err := os.Readlink(sys + "/device"); err == nil {
			n.PCI = filepath.Base(dev)
		} else {
			n.Virtual = true // no backing device: bridge, veth, tap...
		}
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// PrimaryMAC picks the MAC to report: the first physical NIC with a link, else the
// first physical NIC, else the first NIC.
func PrimaryMAC(n []contract.NIC) string {
	for _, pass := range []func(contract.NIC) bool{
		func(c contract.NIC) bool { return !c.Virtual && c.Link },
		func(c contract.NIC) bool { return !c.Virtual },
		func(c contract.NIC) bool { return true },
	} {
		for _, c := range n {
			if pass(c) {
				return c.MAC
			}
		}
	}
	return ""
}
