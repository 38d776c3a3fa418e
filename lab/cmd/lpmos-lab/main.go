// Command lpmos-lab is `make demo`: the VM lab for a person. It brings up the boot
// network (site DHCP, the appliance with proxy-DHCP, the control plane), creates a
// task for one PXE-booting VM, forwards the UI to http://localhost:8080, and waits:
// watch the machine report its hardware, approve it in the UI, watch the progress
// bar, and see the installed OS print its marker. Ctrl-C tears everything down.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"lpmos.dev/lpmos/lab"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "lpmos-lab:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) error {
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
	for _, f := range []string{"build/initramfs/vmlinuz", "build/initramfs/initramfs.cpio.gz", "build/testos/testos.img.zst"} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("%s missing: run `make demo` (it builds it) from the repository root", f)
		}
	}
	os.RemoveAll(*dir)
	absBin, _ := filepath.Abs(*bin)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	l, err := lab.New(ctx, lab.Config{Dir: *dir, Bin: absBin, Log: log})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(out, "\nTearing down the lab...")
		l.Close()
	}()
	images := filepath.Join(*dir, "images")
	os.MkdirAll(images, 0o755)
	if b, err := exec.Command(filepath.Join(absBin, "lpmos-image"), "add", "--dir", images, "--os-type", "testos", "--os-version", "1", "build/testos/testos.img.zst").CombinedOutput(); err != nil {
		return fmt.Errorf("lpmos-image add: %v: %s", err, b)
	}
	if _, err := l.StartAppliance(ctx, lab.ApplianceConfig{Kernel: "build/initramfs/vmlinuz", Initramfs: "build/initramfs/initramfs.cpio.gz", ImagesDir: images}); err != nil {
		return err
	}
	if _, err := l.StartControl(ctx); err != nil {
		return err
	}
	if _, err := l.Forward(ctx, *ui, fmt.Sprintf("127.0.0.1:%d", lab.ControlPort)); err != nil {
		return fmt.Errorf("--ui %s: %w", *ui, err)
	}
	taskMsg := "no task (it will appear under unmatched reports; create a task for it there)"
	if !*noTask {
		var t map[string]any
		code, err := l.API(ctx, "POST", lab.ControlURL()+"/api/v1/tasks", map[string]string{"region_id": "dc1", "target_mac": *mac, "os_type": "testos", "os_version": "1"}, &t)
		if err != nil || code != 201 {
			return fmt.Errorf("create task: %d %v %v", code, t, err)
		}
		taskMsg = fmt.Sprintf("task %v (testos 1)", t["task_id"])
	}
	vm, err := l.StartVM(ctx, lab.VMConfig{Name: "demo", MAC: *mac, Firmware: lab.Firmware(*fw), NoNICROM: *fw == "uefi", DiskMiB: 64})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, `
  LPMOS lab is up.
    Control plane UI:  http://%s/   (approve the machine there once its hardware shows)
    Machine:           %s (%s), %s
    Logs:              %s/{appliance,control,dnsmasq}.log, serial console %s
  The machine's console lines with LPMOS in them are shown below. Ctrl-C tears it all down.

`, *ui, *mac, *fw, taskMsg, *dir, vm.Serial)
	go followSerial(ctx, vm.Serial, out)
	select {
	case <-ctx.Done():
	case <-vm.Done():
		fmt.Fprintln(out, "\nThe machine powered off (the installed test OS does that after its marker). Ctrl-C to tear down.")
		<-ctx.Done()
	}
	return nil
}

// followSerial prints the console lines a person wants to see.
func followSerial(ctx context.Context, path string, out io.Writer) {
	var f *os.File
	for f == nil {
		f, _ = os.Open(path)
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
	defer f.Close()
	r := bufio.NewReader(f)
	var partial string
	for ctx.Err() == nil {
		line, err := r.ReadString('\n')
		partial += line
		if err != nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
			continue
		}
		// iPXE's and the test OS's LPMOS lines, and the agent's own log lines.
		if s := strings.TrimSpace(partial); strings.Contains(s, "LPMOS") || strings.Contains(s, " msg=") {
			fmt.Fprintln(out, "  [console]", s)
		}
		partial = ""
	}
}
