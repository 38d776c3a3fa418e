package qemu

import (
	"strings"
	"testing"
)

func TestArgs(t *testing.T) {
	c := Config{Name: "bios", Dir: "/run/x", Accel: "tcg", CPUs: 2, MemMiB: 1024,
		NICs:  []NIC{{Tap: "tap1", MAC: "52:54:00:12:34:56", BootIndex: 1}},
		Disks: []Disk{{Path: "/run/x/bios.disk", BootIndex: 2}}, RNG: true}
	want := "-accel tcg -m 1024 -smp 2 -nographic -monitor none -serial file:/run/x/bios.serial " +
		"-netdev tap,id=n0,ifname=tap1,script=no,downscript=no -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,bootindex=1 " +
		"-drive file=/run/x/bios.disk,if=none,id=d0,format=raw -device virtio-blk-pci,drive=d0,bootindex=2 -device virtio-rng-pci"
	if got := strings.Join(c.Args(), " "); got != want {
		t.Errorf("BIOS lab machine:\n got %s\nwant %s", got, want)
	}

	c = Config{Dir: "/d", Accel: "kvm", Firmware: UEFI, NoIPv6NetBoot: true, NoReboot: true,
		Kernel: "/k", Initrd: "/i", Append: "console=ttyS0", NICs: []NIC{{NoROM: true}}, Extra: []string{"-s"}}
	want = "-accel kvm -m 512 -smp 1 -nographic -monitor none -serial file:/d/vm.serial -no-reboot -machine q35 " +
		"-drive if=pflash,format=raw,unit=0,readonly=on,file=" + OVMFCode + " -drive if=pflash,format=raw,unit=1,file=/d/vm.vars.fd " +
		"-fw_cfg name=opt/org.tianocore/IPv6Support,string=no -kernel /k -initrd /i -append console=ttyS0 " +
		"-netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile= -s"
	if got := strings.Join(c.Args(), " "); got != want {
		t.Errorf("UEFI direct boot:\n got %s\nwant %s", got, want)
	}
}

func TestAccel(t *testing.T) {
	t.Setenv(AccelEnv, "tcg")
	if a := Accel(); a != "tcg" {
		t.Fatalf("Accel() = %q with %s=tcg", a, AccelEnv)
	}
	t.Setenv(AccelEnv, "")
	t.Logf("probed accelerator on this host: %s", Accel())
	for in, want := range map[string]bool{
		"processor\t: 0\nflags\t\t: fpu vme hypervisor lahf_lm\n": false, // docs/lab.md's machine
		"flags\t\t: fpu vmx ept\n":                                true,
		"flags\t\t: fpu svm npt\n":                                true,
		"bugs\t\t: vmx\n":                                         false,
	} {
		if hardwareVirt([]byte(in)) != want {
			t.Errorf("hardwareVirt(%q) = %v", in, !want)
		}
	}
}
