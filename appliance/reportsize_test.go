package appliance_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/store/storetest"
)

// bigServer is a large server's report as the agent sends it (contract.Hardware,
// json.Marshal): 2 sockets x 64 cores x 2 threads, 12 NVMe and 12 SAS disks with the
// partitions of a previous install, 8 NICs, every identity field filled at real
// lengths, 12 PCI devices without a driver (8 GPUs, 4 accelerators). The 32 DIMMs
// and the GPUs' details are not in the contract (memory is one total), so they cost
// nothing. extraSAS adds disks behind a JBOD (a storage node).
func bigServer(mac string, extraSAS int) contract.Hardware {
	hw := contract.Hardware{
		Hostname: "compute-rack42-u17.dc1.example.net", Firmware: "uefi",
		CPU:          contract.CPU{Model: "AMD EPYC 9554 64-Core Processor", Sockets: 2, Cores: 128, Threads: 256},
		Memory:       contract.Memory{TotalBytes: 32 * 64 << 30, UsableBytes: 32*64<<30 - 3<<30},
		System:       contract.System{Vendor: "Dell Inc.", Product: "PowerEdge R7625", Serial: "7XK2QH3", UUID: "4c4c4544-0058-4b10-8032-b7c04f514833", BIOS: "1.8.3"},
		AgentVersion: "v1.4.2-17-g0123abcd",
	}
	for i := range 12 {
		name := fmt.Sprintf("nvme%dn1", i)
		d := contract.Disk{Name: name, Path: "/dev/" + name, SizeBytes: 7_681_501_126_656, Model: "SAMSUNG MZQL27T6HBLA-00A07", Vendor: "Samsung",
			Serial: fmt.Sprintf("S6CKNE0W%06d", 100000+i), WWN: fmt.Sprintf("eui.36344730526%05d0025384500000001", i), ByPath: fmt.Sprintf("pci-0000:%02x:00.0-nvme-1", 0xc1+i),
			Controller: "nvme", StorageType: "ssd", PartTable: "gpt"}
		for p, part := range []contract.Partition{
			{Type: "c12a7328-f81f-11d2-ba4b-00a0c93ec93b", Filesystem: "vfat", Label: "EFI System Partition", MountPoint: "/boot/efi", SizeBytes: 1 << 30},
			{Type: "0fc63daf-8483-4772-8e79-3d69d8477de4", Filesystem: "ext4", Label: "boot", MountPoint: "/boot", SizeBytes: 2 << 30},
			{Type: "e6d6d379-f507-44c2-a23c-238f2a3df928", Filesystem: "LVM2_member", Label: "", SizeBytes: 7_600_000_000_000},
			{Type: "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f", Filesystem: "swap", Label: "swap", SizeBytes: 64 << 30},
		} {
			part.Name = fmt.Sprintf("%sp%d", name, p+1)
			d.Partitions = append(d.Partitions, part)
		}
		hw.Disks = append(hw.Disks, d)
	}
	for i := range 12 + extraSAS {
		name := "sd" + sdName(i)
		d := contract.Disk{Name: name, Path: "/dev/" + name, SizeBytes: 16_000_900_661_248, Model: "ST16000NM004J", Vendor: "SEAGATE",
			Serial: fmt.Sprintf("ZL2%05dX0000C%04dBJZ", i, i), WWN: fmt.Sprintf("0x5000c500d%07x", i),
			ByPath:     fmt.Sprintf("pci-0000:41:00.0-sas-exp0x500304801f3a9a3f-phy%d-lun-0", i),
			Rotational: true, Controller: "scsi", StorageType: "hdd", PartTable: "gpt"}
		for p, part := range []contract.Partition{
			{Type: "4fbd7e29-9d25-41b8-afd0-062c0ceff05d", Filesystem: "xfs", Label: "ceph data", SizeBytes: 100 << 20},
			{Type: "45b0969e-9b03-4f30-b4c6-b4b80ceff106", Label: "ceph block", SizeBytes: 16_000_000_000_000},
		} {
			part.Name = fmt.Sprintf("%s%d", name, p+1)
			d.Partitions = append(d.Partitions, part)
		}
		hw.Disks = append(hw.Disks, d)
	}
	for i := range 8 {
		n := contract.NIC{Name: fmt.Sprintf("ens%df%dnp%d", 1+i/2, i%2, i%2), MAC: fmt.Sprintf("b8:3f:d2:%02x:%02x:%02x", 0x10+i, 0x20+i, 0x30+i),
			Driver: "mlx5_core", Link: i < 2, SpeedMb: 100000, PCI: fmt.Sprintf("0000:%02x:00.%d", 0x41+i/2, i%2)}
		if i == 0 {
			n.MAC = mac
		}
		hw.NICs = append(hw.NICs, n)
	}
	for i := range 12 {
		hw.MissingDrivers = append(hw.MissingDrivers, contract.PCIDevice{Address: fmt.Sprintf("0000:%02x:00.0", 0x81+i), Vendor: "10de", Device: "2330",
			Class: "030200", Name: "NVIDIA Corporation GH100 [H100 SXM5 80GB]"})
	}
	return hw
}

// sdName is the kernel's name for the i-th SCSI disk: a..z, aa..zz, aaa...
func sdName(i int) string {
	s := ""
	for i++; i > 0; i = (i - 1) / 26 {
		s = string(rune('a'+(i-1)%26)) + s
	}
	return s
}

// The report cap (contract.MaxHardwareBytes) against measured reports: the large
// server goes through, a report over the cap gets 413 and etcd is unchanged.
func TestHardwareReportCap(t *testing.T) {
	sys := startSystem(t, "dc1")
	dc1 := sys.regions["dc1"].URL()
	size := func(hw contract.Hardware) int { b, _ := json.Marshal(hw); return len(b) }
	big := size(bigServer("52:54:00:00:90:01", 0))
	perDisk := (size(bigServer("", 100)) - size(bigServer("", 0))) / 100
	t.Logf("large server: %d bytes; each further JBOD disk: %d bytes; the cap of %d bytes holds the large server %.0f times, or it and %d JBOD disks",
		big, perDisk, contract.MaxHardwareBytes, float64(contract.MaxHardwareBytes)/float64(big), (contract.MaxHardwareBytes-big)/perDisk)
	if big*16 > contract.MaxHardwareBytes || size(bigServer("", 400)) > contract.MaxHardwareBytes {
		t.Fatalf("the cap (%d) no longer holds 16 large servers' reports (%d each) or a 424-disk storage node (%d)", contract.MaxHardwareBytes, big, size(bigServer("", 400)))
	}

	// Unmatched (no task) is the path that stores the report too.
	for _, hw := range []contract.Hardware{bigServer("52:54:00:00:90:01", 0), bigServer("52:54:00:00:90:02", 400)} {
		if code, body := call(t, "POST", dc1+"/api/report", contract.ReportRequest{MACAddress: hw.NICs[0].MAC, Hardware: mustMarshal(hw)}); code != 404 || body["retry_after"] == nil {
			t.Fatalf("a %d-byte report: %d %v, want it stored as unmatched (404)", size(hw), code, body)
		}
	}
	before, _ := state(t, sys)
	over := bigServer("52:54:00:00:90:03", 0)
	over.Hostname = strings.Repeat("x", contract.MaxHardwareBytes-size(over)+len(over.Hostname)+1)
	if n := size(over); n != contract.MaxHardwareBytes+1 {
		t.Fatalf("built %d bytes, want the cap + 1", n)
	}
	code, body := call(t, "POST", dc1+"/api/report", contract.ReportRequest{MACAddress: "52:54:00:00:90:03", Hardware: mustMarshal(over)})
	if msg, _ := body["message"].(string); code != 413 || !strings.Contains(msg, "over the") {
		t.Fatalf("a report 1 byte over the cap: %d %v, want 413", code, body)
	}
	after, _ := state(t, sys)
	storetest.AssertSame(t, before, after)
	if code, h := call(t, "GET", dc1+"/api/health", nil); code != 200 || h["status"] != "ok" {
		t.Fatalf("health: %d %v", code, h)
	}
}

func mustMarshal(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
