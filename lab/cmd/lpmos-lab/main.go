// Command lpmos-lab is `make demo`: the VM lab for a person. It brings up the boot
// network (site DHCP, the appliance with proxy-DHCP, the control plane), creates a
// task for one PXE-booting VM, forwards the UI to http://localhost:8080, and waits:
// watch the machine report its hardware, approve it in the UI, watch the progress
// bar, and see the installed OS print its marker. Ctrl-C tears everything down.
// The logic is lab.Demo.
//
// `lpmos-lab vagrant` is `make vagrant-lab`: the Vagrant/libvirt lab run once, end to
// end, exactly as its CI test runs it (lab.Vagrant; docs/vagrant.md).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"lpmos.dev/lpmos/internal/qemu"
	"lpmos.dev/lpmos/lab"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "lpmos-lab:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	if len(args) > 0 && args[0] == "vagrant" {
		return runVagrant(ctx, args[1:])
	}
	fs := flag.NewFlagSet("lpmos-lab", flag.ContinueOnError)
	dir := fs.String("dir", "run/demo", "lab state: logs, disks, etcd")
	bin := fs.String("bin", "bin", "directory with lpmos-appliance, lpmos-control, lpmos-image")
	fw := fs.String("firmware", "bios", "the VM's firmware: bios or uefi (uefi boots through OVMF's own PXE and TFTP)")
	mac := fs.String("mac", "52:54:00:de:00:01", "the VM's MAC")
	noTask := fs.Bool("no-task", false, "create no task: the machine shows up as an unmatched report (match it in the UI)")
	ui := fs.String("ui", "127.0.0.1:8080", "host address for the control plane UI")
	if err := fs.Parse(args); err != nil {
		return err
	}
	return lab.Demo(ctx, lab.DemoConfig{Dir: *dir, Bin: *bin, Firmware: qemu.Firmware(*fw), MAC: *mac, NoTask: *noTask, UI: *ui}, os.Stdout)
}

func runVagrant(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("lpmos-lab vagrant", flag.ContinueOnError)
	dir := fs.String("dir", "run/vagrant", "state: logs, etcd, serial consoles (emptied first)")
	bin := fs.String("bin", "bin", "directory with lpmos-appliance, lpmos-control, lpmos-image")
	vms := fs.Int("vms", 2, "machines (LPMOS_LAB_VMS)")
	fw := fs.String("firmware", "mixed", "mixed (odd BIOS, even UEFI), bios or uefi (LPMOS_LAB_FIRMWARE)")
	driver := fs.String("driver", "", "kvm or qemu (LPMOS_LAB_DRIVER); default: kvm when usable")
	timeout := fs.Duration("timeout", 15*time.Minute, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	repo, err := os.Getwd()
	if err != nil {
		return err
	}
	if _, err := os.Stat("Vagrantfile"); err != nil {
		return errors.New("run it from the repository root (no Vagrantfile here)")
	}
	os.RemoveAll(*dir)
	abs := func(p string) string { a, _ := filepath.Abs(p); return a }
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	start := time.Now()
	ms, err := lab.Vagrant(ctx, lab.VagrantConfig{Repo: repo, Dir: abs(*dir), Bin: abs(*bin),
		Kernel: abs("build/initramfs/vmlinuz"), Initramfs: abs("build/initramfs/initramfs.cpio.gz"), Image: abs("build/testos/testos.img.zst"),
		VMs: *vms, Firmware: *fw, Driver: *driver, Out: os.Stdout})
	fmt.Print(lab.VagrantTimings(ms))
	fmt.Printf("whole Vagrant run: %s\n", time.Since(start).Round(time.Second))
	return err
}
