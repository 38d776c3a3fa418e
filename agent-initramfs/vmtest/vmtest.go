// Package vmtest boots the project's own kernel + initramfs in QEMU for tests: direct
// -kernel/-initrd boot, the accelerator of internal/qemu (TCG unless KVM works),
// user-mode networking (the guest reaches the host's 127.0.0.1 as qemu.HostAddr, so
// test servers stay on loopback), a virtio-rng for entropy, and the serial console in
// a file.
package vmtest

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"lpmos.dev/lpmos/internal/qemu"
)

// HostAddr is the host's loopback as user-mode networking shows it to the guest.
const HostAddr = qemu.HostAddr

// Images are the kernel and initramfs to boot.
type Images struct {
	Kernel, Initramfs string
}

// BuildImages runs scripts/build-initramfs.sh (cached: seconds unless go.sum changed)
// so the VM boots the code under test, not a stale build. It skips the test, loudly,
// without QEMU, in -short mode, or when LPMOS_SKIP_VM is set.
func BuildImages(t *testing.T) Images {
	t.Helper()
	if testing.Short() {
		t.Skip("VM test skipped in -short mode")
	}
	if os.Getenv("LPMOS_SKIP_VM") != "" {
		t.Skip("VM test skipped: LPMOS_SKIP_VM is set")
	}
	if err := qemu.Installed(); err != nil {
		t.Skipf("VM test SKIPPED: %v", err)
	}
	build.once.Do(func() { build.images, build.log, build.err = buildImages(repoRoot(t)) })
	if build.err != nil {
		if strings.Contains(build.log, "cannot resolve linux-image-amd64") {
			t.Skipf("VM test SKIPPED: no kernel available:\n%s", build.log)
		}
		t.Fatalf("build-initramfs: %v\n%s", build.err, build.log)
	}
	t.Logf("initramfs: %s", lastLine(build.log))
	return build.images
}

// build is the one initramfs build of this test binary.
var build struct {
	once   sync.Once
	images Images
	log    string
	err    error
}

func buildImages(top string) (Images, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(top, "scripts", "build-initramfs.sh"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return Images{}, out.String(), err
	}
	dir := filepath.Join(top, "build", "initramfs")
	return Images{Kernel: filepath.Join(dir, "vmlinuz"), Initramfs: filepath.Join(dir, "initramfs.cpio.gz")}, out.String(), nil
}

func repoRoot(t *testing.T) string {
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	return s[strings.LastIndexByte(s, '\n')+1:]
}

// Config is one VM.
type Config struct {
	Images
	Append string   // kernel command line after "console=ttyS0"
	MAC    string   // the virtio NIC's MAC
	SMP    int      // vCPUs; 2 when 0
	MemMiB int      // 1024 when 0
	Disks  []string // raw files attached as virtio-blk disks
	UEFI   bool     // OVMF on q35 instead of SeaBIOS on i440fx; see OVMF
	Extra  []string // more QEMU arguments
}

// Start boots a VM (its files in a t.TempDir, no option ROM on the NIC, -no-reboot);
// t.Cleanup kills it by PID and logs the console's tail when the test failed.
func Start(t *testing.T, c Config) *qemu.VM {
	t.Helper()
	if c.SMP == 0 {
		c.SMP = 2
	}
	if c.MemMiB == 0 {
		c.MemMiB = 1024
	}
	fw := qemu.BIOS
	if c.UEFI {
		OVMF(t)
		fw = qemu.UEFI
	}
	cfg := qemu.Config{Dir: t.TempDir(), Firmware: fw, CPUs: c.SMP, MemMiB: c.MemMiB,
		Kernel: c.Kernel, Initrd: c.Initramfs, Append: strings.TrimSpace("console=ttyS0 " + c.Append),
		NICs: []qemu.NIC{{MAC: c.MAC, NoROM: true}}, RNG: true, NoReboot: true, Extra: c.Extra}
	for _, d := range c.Disks {
		cfg.Disks = append(cfg.Disks, qemu.Disk{Path: d})
	}
	vm, err := qemu.Start(cfg)
	if err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	t.Cleanup(func() {
		vm.Kill()
		if t.Failed() {
			t.Logf("qemu output:\n%s\nserial console (tail):\n%s", vm.Log(), vm.SerialTail(60))
		}
	})
	t.Logf("qemu pid %d (GOMAXPROCS %d): %s", vm.Pid(), runtime.GOMAXPROCS(0), strings.Join(cfg.Args(), " "))
	return vm
}

// OVMF returns Debian's OVMF code and variables template, skipping the test without them.
func OVMF(t *testing.T) (code, vars string) {
	if err := qemu.OVMFInstalled(); err != nil {
		t.Skipf("UEFI VM test SKIPPED: %v", err)
	}
	return qemu.OVMFCode, qemu.OVMFVars
}
