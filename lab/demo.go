package lab

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"lpmos.dev/lpmos/internal/qemu"
)

// DemoConfig is `make demo`'s lab (bin/lpmos-lab's flags).
type DemoConfig struct {
	Dir      string        // lab state: logs, disks, etcd (emptied first)
	Bin      string        // directory with lpmos-appliance, lpmos-control, lpmos-image
	Firmware qemu.Firmware // the machine's; UEFI boots through OVMF's own PXE and TFTP
	MAC      string
	NoTask   bool   // create no task: the machine shows up as an unmatched report
	UI       string // host address the control plane's UI is forwarded to
}

// The demo's boot files and OS image, as `make initramfs testos` leaves them.
const (
	demoKernel    = "build/initramfs/vmlinuz"
	demoInitramfs = "build/initramfs/initramfs.cpio.gz"
	demoImage     = "build/testos/testos.img.zst"
)

// Demo brings up the boot network (site DHCP, the appliance with proxy-DHCP, the
// control plane), creates a task for one PXE-booting VM, forwards the UI, prints the
// machine's console lines that matter, and waits for ctx to end; then it tears
// everything down. Run it from the repository root.
func Demo(ctx context.Context, c DemoConfig, out io.Writer) error {
	if c.Firmware != qemu.BIOS && c.Firmware != qemu.UEFI {
		return fmt.Errorf("--firmware %q: want bios or uefi", c.Firmware)
	}
	for _, f := range []string{demoKernel, demoInitramfs, demoImage} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("%s missing: run `make demo` (it builds it) from the repository root", f)
		}
	}
	os.RemoveAll(c.Dir)
	bin, _ := filepath.Abs(c.Bin)
	l, err := New(ctx, Config{Dir: c.Dir, Bin: bin, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(out, "\nTearing down the lab...")
		l.Close()
	}()
	images := filepath.Join(c.Dir, "images")
	os.MkdirAll(images, 0o755)
	if b, err := exec.Command(filepath.Join(bin, "lpmos-image"), "add", "--dir", images, "--os-type", "testos", "--os-version", "1", demoImage).CombinedOutput(); err != nil {
		return fmt.Errorf("lpmos-image add: %v: %s", err, b)
	}
	if _, err := l.StartAppliance(ctx, ApplianceConfig{Kernel: demoKernel, Initramfs: demoInitramfs, ImagesDir: images}); err != nil {
		return err
	}
	if _, err := l.StartControl(ctx); err != nil {
		return err
	}
	if _, err := l.Forward(ctx, c.UI, fmt.Sprintf("127.0.0.1:%d", ControlPort)); err != nil {
		return fmt.Errorf("--ui %s: %w", c.UI, err)
	}
	taskMsg := "no task (it will appear under unmatched reports; create a task for it there)"
	if !c.NoTask {
		var t map[string]any
		code, err := l.API(ctx, "POST", ControlURL()+"/api/v1/tasks", map[string]string{"region_id": "dc1", "target_mac": c.MAC, "os_type": "testos", "os_version": "1"}, &t)
		if err != nil || code != 201 {
			return fmt.Errorf("create task: %d %v %v", code, t, err)
		}
		taskMsg = fmt.Sprintf("task %v (testos 1)", t["task_id"])
	}
	vm, err := l.StartVM(ctx, VMConfig{Name: "demo", MAC: c.MAC, Firmware: c.Firmware, NoNICROM: c.Firmware == qemu.UEFI, DiskMiB: 64})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, `
  LPMOS lab is up.
    Control plane UI:  http://%s/   (approve the machine there once its hardware shows)
    Log in as:         admin, password in %s/admin-password (API token: %s/admin-token)
    Machine:           %s (%s), %s
    Logs:              %s/{appliance,control,dnsmasq}.log, serial console %s
  The machine's console lines with LPMOS in them are shown below. Ctrl-C tears it all down.

`, c.UI, c.Dir, c.Dir, c.MAC, c.Firmware, taskMsg, c.Dir, vm.Serial)
	go followSerial(ctx, vm.Serial, out)
	select {
	case <-ctx.Done():
	case <-vm.Done():
		fmt.Fprintln(out, "\nThe machine powered off (the installed test OS does that after its marker). Ctrl-C to tear down.")
		<-ctx.Done()
	}
	return nil
}

// followSerial prints the console lines a person wants to see, like tail -f.
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
