// Package qemu builds and starts the QEMU machines of the project's tests and lab: the
// machine type and firmware (SeaBIOS, or OVMF on q35 with a per-machine copy of its
// variables), the accelerator, NICs on a tap or on user-mode networking (with or
// without the NIC's iPXE option ROM), raw disks, a virtio-rng, direct kernel boot, and
// the serial console in a file. Machines run on the host or in a network namespace
// and are ended by PID (package proc). It imports nothing of the project.
//
// # Accelerator
//
// docs/lab.md: KVM when /dev/kvm works, plain emulation (TCG) otherwise. "Exists" is not
// "works": on the project's machines (docs/lab.md) /dev/kvm is a paravirtual KVM nested in
// a microVM whose CPU has no vmx/svm; a stock Debian kernel under -accel kvm never
// leaves its decompressor, so a test would hang until its timeout, not fail. A real
// boot probe would cost a VM boot per test binary and, when KVM is broken, a timeout.
// So Accel decides cheaply: LPMOS_QEMU_ACCEL (kvm or tcg, passed to -accel as is) when
// set; otherwise kvm only when /dev/kvm opens read-write, answers KVM_GET_API_VERSION
// with 12, and /proc/cpuinfo shows hardware virtualisation (vmx or svm), the one thing
// the broken case lacks; tcg in every other case. Tests must pass under TCG.
package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"lpmos.dev/lpmos/internal/proc"
)

// Binary is the QEMU system emulator the machines run in.
const Binary = "qemu-system-x86_64"

// Installed says how to install QEMU when it is missing.
func Installed() error {
	if _, err := exec.LookPath(Binary); err != nil {
		return errors.New(Binary + " not installed (apt-get install qemu-system-x86)")
	}
	return nil
}

// Firmware of a machine.
type Firmware string

const (
	BIOS Firmware = "bios" // SeaBIOS on i440fx; QEMU's NICs carry an iPXE ROM
	UEFI Firmware = "uefi" // OVMF on q35
)

// OVMF files of Debian's ovmf package; each machine gets its own copy of the variables.
const (
	OVMFCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	OVMFVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// OVMFInstalled says how to install OVMF when it is missing.
func OVMFInstalled() error {
	for _, f := range []string{OVMFCode, OVMFVars} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("%s missing (apt-get install ovmf)", f)
		}
	}
	return nil
}

// AccelEnv overrides the accelerator choice: kvm or tcg.
const AccelEnv = "LPMOS_QEMU_ACCEL"

var probe struct {
	once  sync.Once
	accel string
}

// Accel is the -accel value for this host; see the package comment.
func Accel() string {
	if a := os.Getenv(AccelEnv); a != "" {
		return a
	}
	probe.once.Do(func() {
		probe.accel = "tcg"
		if kvmWorks() {
			probe.accel = "kvm"
		}
	})
	return probe.accel
}

func kvmWorks() bool {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	const kvmGetAPIVersion = 0xAE00 // _IO(KVMIO, 0x00)
	if v, err := unix.IoctlRetInt(int(f.Fd()), kvmGetAPIVersion); err != nil || v != 12 {
		return false
	}
	cpuinfo, err := os.ReadFile("/proc/cpuinfo")
	return err == nil && hardwareVirt(cpuinfo)
}

// hardwareVirt: a "flags" line of /proc/cpuinfo has vmx (Intel) or svm (AMD).
func hardwareVirt(cpuinfo []byte) bool {
	for _, line := range bytes.Split(cpuinfo, []byte("\n")) {
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok || string(bytes.TrimSpace(k)) != "flags" {
			continue
		}
		for _, f := range strings.Fields(string(v)) {
			if f == "vmx" || f == "svm" {
				return true
			}
		}
	}
	return false
}

// HostAddr is the host's loopback as user-mode networking shows it to the guest.
const HostAddr = "10.0.2.2"

// NIC is a virtio-net card.
type NIC struct {
	// Tap is a tap device (in Config.NetNS) the card is cabled to; "" is QEMU's
	// user-mode networking, where the guest reaches the host's 127.0.0.1 as HostAddr.
	Tap string
	MAC string // "" = QEMU's
	// NoROM removes the card's option ROM (romfile=): no iPXE; under UEFI, OVMF's own
	// PXE then boots from it (the path real UEFI servers take).
	NoROM     bool
	BootIndex int // bootindex=, 0 for none
}

// Disk is a raw disk image on virtio-blk.
type Disk struct {
	Path      string
	BootIndex int // bootindex=, 0 for none
	// Serial is the disk's serial number as the guest sees it (virtio-blk serial=,
	// at most 20 characters); "" for none.
	Serial string
}

// Config is one machine.
type Config struct {
	Name  string // its files in Dir: <Name>.serial (console), <Name>.log (QEMU's output), <Name>.vars.fd
	Dir   string
	NetNS string // run QEMU in this network namespace ("": on the host)

	Firmware Firmware // BIOS when ""
	Accel    string   // -accel; Accel() when ""
	CPUs     int      // 1 when 0
	MemMiB   int      // 512 when 0

	NICs  []NIC // none: QEMU's default NIC
	Disks []Disk
	Boot  string // -boot, e.g. "n" (network first); "" for none

	// Direct boot: -kernel, -initrd and -append, when Kernel is set.
	Kernel, Initrd, Append string

	RNG      bool // a virtio-rng: without it a TCG guest's crypto/rand blocked for minutes (docs/lab.md, pitfall 1)
	NoReboot bool // -no-reboot: a guest's reboot ends QEMU
	// NoIPv6NetBoot turns OVMF's IPv6 network boot (PXE and HTTP) off, as IPv4 boot
	// networks usually have it: a machine the boot server stays silent for reaches its
	// disk without waiting out DHCPv6 attempts nobody answers (UEFI only).
	NoIPv6NetBoot bool
	Extra         []string // more arguments, last
}

func (c Config) name() string {
	if c.Name == "" {
		return "vm"
	}
	return c.Name
}

// SerialPath is the serial console's log file.
func (c Config) SerialPath() string { return filepath.Join(c.Dir, c.name()+".serial") }

// VarsPath is the machine's copy of the OVMF variables (UEFI).
func (c Config) VarsPath() string { return filepath.Join(c.Dir, c.name()+".vars.fd") }

// Args is QEMU's command line (without the binary).
func (c Config) Args() []string {
	accel, cpus, mem := c.Accel, c.CPUs, c.MemMiB
	if accel == "" {
		accel = Accel()
	}
	if cpus == 0 {
		cpus = 1
	}
	if mem == 0 {
		mem = 512
	}
	a := []string{"-accel", accel, "-m", strconv.Itoa(mem), "-smp", strconv.Itoa(cpus),
		"-nographic", "-monitor", "none", "-serial", "file:" + c.SerialPath()}
	if c.NoReboot {
		a = append(a, "-no-reboot")
	}
	if c.Firmware == UEFI {
		a = append(a, "-machine", "q35",
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+OVMFCode,
			"-drive", "if=pflash,format=raw,unit=1,file="+c.VarsPath())
		if c.NoIPv6NetBoot {
			a = append(a, "-fw_cfg", "name=opt/org.tianocore/IPv6Support,string=no")
		}
	}
	if c.Boot != "" {
		a = append(a, "-boot", c.Boot)
	}
	if c.Kernel != "" {
		a = append(a, "-kernel", c.Kernel)
		if c.Initrd != "" {
			a = append(a, "-initrd", c.Initrd)
		}
		if c.Append != "" {
			a = append(a, "-append", c.Append)
		}
	}
	for i, n := range c.NICs {
		id := "n" + strconv.Itoa(i)
		if n.Tap != "" {
			a = append(a, "-netdev", "tap,id="+id+",ifname="+n.Tap+",script=no,downscript=no")
		} else {
			a = append(a, "-netdev", "user,id="+id)
		}
		dev := "virtio-net-pci,netdev=" + id
		if n.MAC != "" {
			dev += ",mac=" + n.MAC
		}
		if n.BootIndex > 0 {
			dev += ",bootindex=" + strconv.Itoa(n.BootIndex)
		}
		if n.NoROM {
			dev += ",romfile="
		}
		a = append(a, "-device", dev)
	}
	for i, d := range c.Disks {
		id := "d" + strconv.Itoa(i)
		dev := "virtio-blk-pci,drive=" + id
		if d.BootIndex > 0 {
			dev += ",bootindex=" + strconv.Itoa(d.BootIndex)
		}
		if d.Serial != "" {
			dev += ",serial=" + d.Serial
		}
		a = append(a, "-drive", "file="+d.Path+",if=none,id="+id+",format=raw", "-device", dev)
	}
	if c.RNG {
		a = append(a, "-device", "virtio-rng-pci")
	}
	return append(a, c.Extra...)
}

// VM is a running machine.
type VM struct {
	*proc.Proc // QEMU: Done, Err, Stop, Kill, Log (its own output)
	Config     Config
	Serial     string    // the serial console's log file
	Started    time.Time // when QEMU was started
}

// Start powers a machine on: it creates Dir, removes a stale serial log, copies the OVMF
// variables (UEFI) and starts QEMU, its output in <Dir>/<Name>.log.
func Start(c Config) (*VM, error) {
	if err := Installed(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return nil, err
	}
	if c.Firmware == UEFI {
		b, err := os.ReadFile(OVMFVars) // 4 MiB
		if err == nil {
			err = os.WriteFile(c.VarsPath(), b, 0o644)
		}
		if err != nil {
			return nil, fmt.Errorf("OVMF vars (apt-get install ovmf): %w", err)
		}
	}
	vm := &VM{Config: c, Serial: c.SerialPath()}
	os.Remove(vm.Serial)
	vm.Started = time.Now()
	p, err := proc.Start(c.name(), append([]string{Binary}, c.Args()...),
		proc.Options{NetNS: c.NetNS, Log: filepath.Join(c.Dir, c.name()+".log")})
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

// SerialTail returns the last n lines of the serial console.
func (vm *VM) SerialTail(n int) string { return proc.Tail(vm.SerialLog(), n) }

// WaitSerial waits for a complete line containing s on the serial console and returns
// it from s on. It fails when ctx ends, or at once when QEMU exits without it.
func (vm *VM) WaitSerial(ctx context.Context, s string) (string, error) {
	line, err := proc.WaitFileLine(ctx, vm.Serial, s, vm.Done())
	if err == nil {
		return line, nil
	}
	select {
	case <-vm.Done():
		return "", fmt.Errorf("%s: QEMU exited (%v) without %q on the serial console", vm.Name, vm.Err(), s)
	default:
		return "", fmt.Errorf("%s: no %q on the serial console: %w", vm.Name, s, ctx.Err())
	}
}
