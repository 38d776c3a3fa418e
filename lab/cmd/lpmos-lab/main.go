// Command lpmos-lab is `make demo`: the VM lab for a person. It brings up the boot
// network (site DHCP, the appliance with proxy-DHCP, the control plane), creates a
// task for one PXE-booting VM, forwards the UI to http://localhost:8080, and waits:
// watch the machine report its hardware, approve it in the UI, watch the progress
// bar, and see the installed OS print its marker. Ctrl-C tears everything down.
// The logic is lab.Demo.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

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
