// Package vmtest boots the project's own kernel + initramfs in QEMU for tests: direct
// -kernel/-initrd boot, software emulation (LAB.md: this machine's KVM cannot run a
// guest kernel), user-mode networking (the guest reaches the host's 127.0.0.1 as
// 10.0.2.2, so test servers stay on loopback), a virtio-rng for entropy, and the
// serial console in a file.
package vmtest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// HostAddr is the host's loopback as user-mode networking shows it to the guest.
const HostAddr = "10.0.2.2"

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
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("VM test SKIPPED: qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")
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

// VM is a running QEMU.
type VM struct {
	Serial  string        // the serial console's log file
	Started time.Time     // when QEMU was started
	Exited  chan struct{} // closed when QEMU exits
	Err     error         // QEMU's exit status, once Exited is closed
	cmd     *exec.Cmd
}

// Start boots a VM; t.Cleanup kills it (by PID) and logs the console's tail when the
// test failed.
func Start(t *testing.T, c Config) *VM {
	t.Helper()
	if c.SMP == 0 {
		c.SMP = 2
	}
	if c.MemMiB == 0 {
		c.MemMiB = 1024
	}
	dir := t.TempDir()
	vm := &VM{Serial: filepath.Join(dir, "serial.log"), Exited: make(chan struct{})}
	args := []string{
		"-accel", "tcg", "-m", strconv.Itoa(c.MemMiB), "-smp", strconv.Itoa(c.SMP),
		"-display", "none", "-monitor", "none", "-no-reboot",
		"-serial", "file:" + vm.Serial,
		"-kernel", c.Kernel, "-initrd", c.Initramfs,
		"-append", strings.TrimSpace("console=ttyS0 " + c.Append),
		"-netdev", "user,id=n0",
		"-device", "virtio-net-pci,netdev=n0,mac=" + c.MAC + ",romfile=",
		"-device", "virtio-rng-pci",
	}
	if c.UEFI {
		code, vars := OVMF(t)
		varsCopy := filepath.Join(dir, "OVMF_VARS.fd")
		b, err := os.ReadFile(vars)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(varsCopy, b, 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, "-machine", "q35",
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+code,
			"-drive", "if=pflash,format=raw,unit=1,file="+varsCopy)
	}
	for i, d := range c.Disks {
		args = append(args, "-drive", fmt.Sprintf("file=%s,if=none,id=d%d,format=raw", d, i),
			"-device", fmt.Sprintf("virtio-blk-pci,drive=d%d", i))
	}
	args = append(args, c.Extra...)
	vm.cmd = exec.Command("qemu-system-x86_64", args...)
	var stderr bytes.Buffer
	vm.cmd.Stderr = &stderr
	vm.Started = time.Now()
	if err := vm.cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	go func() {
		vm.Err = vm.cmd.Wait()
		if stderr.Len() > 0 {
			vm.Err = fmt.Errorf("%v: %s", vm.Err, strings.TrimSpace(stderr.String()))
		}
		close(vm.Exited)
	}()
	t.Cleanup(func() {
		_ = vm.cmd.Process.Kill()
		<-vm.Exited
		if t.Failed() {
			t.Logf("serial console (tail):\n%s", vm.ConsoleTail(60))
		}
	})
	t.Logf("qemu pid %d (GOMAXPROCS %d): %s", vm.cmd.Process.Pid, runtime.GOMAXPROCS(0), strings.Join(args, " "))
	return vm
}

// OVMF returns Debian's OVMF code and variables template, skipping the test without them.
func OVMF(t *testing.T) (code, vars string) {
	code, vars = "/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"
	for _, f := range []string{code, vars} {
		if _, err := os.Stat(f); err != nil {
			t.Skipf("UEFI VM test SKIPPED: %s missing (apt-get install ovmf)", f)
		}
	}
	return code, vars
}

// ConsoleTail returns the last n lines of the serial console.
func (vm *VM) ConsoleTail(n int) string {
	b, _ := os.ReadFile(vm.Serial)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
