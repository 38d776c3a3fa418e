// Package testos builds and boots the LPMOS test OS: a ~11 MiB raw disk image (BIOS and
// UEFI) whose init prints Marker on the serial console and powers off. End-to-end tests
// install it with the agent, then boot the written disk and look for the marker.
//
//	img := testos.Build(t)                      // build/testos/testos.img (skips if tools are missing)
//	res := testos.Boot(t, testos.BootConfig{Disk: copyOfImg, Firmware: qemu.UEFI})
//	t.Logf("booted in %v: %s", res.Elapsed, res.Line)
//
// The image layout is documented in scripts/build-testos.sh.
package testos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
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

// Marker starts the line the test OS's init prints once the kernel has run it.
const Marker = "LPMOS-TESTOS-BOOTED"

// Exit codes of scripts/build-testos.sh that mean "cannot build here" rather than a bug.
const (
	exitToolsMissing = 2
	exitNoKernel     = 3
)

var build struct {
	once sync.Once
	img  string
	skip string // non-empty: why this machine cannot build the image
	err  error
}

// Build runs scripts/build-testos.sh (once per test binary; the script itself skips work
// when its inputs are unchanged) and returns the raw image's path. The files next to it:
// testos.img.zst, .gz, .xz and .sha256. Treat the image as read-only: copy it before
// booting or writing it. Skips t when build tools are missing or the kernel cannot be
// fetched.
func Build(t testing.TB) string {
	t.Helper()
	build.once.Do(func() {
		root, err := repoRoot()
		if err != nil {
			build.err = err
			return
		}
		var stderr bytes.Buffer
		cmd := exec.Command("bash", filepath.Join(root, "scripts", "build-testos.sh"))
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		var ee *exec.ExitError
		switch {
		case errors.As(err, &ee) && (ee.ExitCode() == exitToolsMissing || ee.ExitCode() == exitNoKernel):
			build.skip = strings.TrimSpace(stderr.String())
		case err != nil:
			build.err = fmt.Errorf("build-testos.sh: %v\n%s", err, stderr.String())
		default:
			build.img = strings.TrimSpace(string(out))
		}
	})
	switch {
	case build.skip != "":
		t.Skipf("SKIP: cannot build the test OS image on this machine: %s", build.skip)
	case build.err != nil:
		t.Fatal(build.err)
	}
	return build.img
}

// repoRoot finds the module root from the working directory (go test runs in the
// package's directory), falling back to this source file's location.
func repoRoot() (string, error) {
	dirs := []string{}
	if wd, err := os.Getwd(); err == nil {
		dirs = append(dirs, wd)
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		dirs = append(dirs, filepath.Dir(file))
	}
	for _, d := range dirs {
		for ; ; d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "scripts", "build-testos.sh")); err == nil {
				return d, nil
			}
			if d == filepath.Dir(d) {
				break
			}
		}
	}
	return "", errors.New("testos: cannot find scripts/build-testos.sh above the working directory")
}

// BootConfig says what to boot and how.
type BootConfig struct {
	Disk      string        // raw disk image, attached read-write as a virtio disk
	Firmware  qemu.Firmware // qemu.BIOS (SeaBIOS, syslinux) or qemu.UEFI (OVMF on q35, systemd-boot)
	Timeout   time.Duration // until the marker must appear; default 3 minutes
	MemMiB    int           // default 512
	ExtraArgs []string      // appended to QEMU's arguments
}

// BootResult is what a successful boot showed.
type BootResult struct {
	Line    string        // the marker line: "LPMOS-TESTOS-BOOTED kernel=... firmware=... cmdline=..."
	Elapsed time.Duration // QEMU start to the marker on the serial log
	Log     string        // the serial log's path (in a t.TempDir)
}

// Boot starts QEMU (internal/qemu: TCG unless KVM works) on cfg.Disk, waits for the
// marker line with the expected firmware in it, and returns it. QEMU is killed by PID
// in t.Cleanup if still running. Fails t on timeout or if QEMU exits without the
// marker; skips t if QEMU or OVMF is missing.
func Boot(t testing.TB, cfg BootConfig) BootResult {
	t.Helper()
	if err := qemu.Installed(); err != nil {
		t.Skipf("SKIP: %v", err)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 3 * time.Minute
	}
	switch cfg.Firmware {
	case qemu.BIOS:
	case qemu.UEFI:
		if err := qemu.OVMFInstalled(); err != nil {
			t.Skipf("SKIP: %v", err)
		}
	default:
		t.Fatalf("testos.Boot: unknown firmware %q", cfg.Firmware)
	}
	vm, err := qemu.Start(qemu.Config{Dir: t.TempDir(), Firmware: cfg.Firmware, MemMiB: cfg.MemMiB,
		Disks: []qemu.Disk{{Path: cfg.Disk}}, NoReboot: true, Extra: cfg.ExtraArgs})
	if err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	t.Cleanup(vm.Kill) // harmless if QEMU already powered off

	ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
	defer cancel()
	line, err := vm.WaitSerial(ctx, Marker)
	elapsed := time.Since(vm.Started)
	if err != nil {
		t.Fatalf("%s boot of %s: %v after %v\nqemu: %s\nserial log tail:\n%s",
			cfg.Firmware, cfg.Disk, err, elapsed.Round(time.Millisecond), vm.Log(), tail(vm.SerialLog(), 3000))
	}
	if !strings.Contains(line, " firmware="+string(cfg.Firmware)+" ") {
		t.Fatalf("booted, but not through %s firmware: %q", cfg.Firmware, line)
	}
	return BootResult{Line: line, Elapsed: elapsed, Log: vm.Serial}
}

func tail(s string, n int) string {
	if len(s) > n {
		s = s[len(s)-n:]
	}
	return s
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// CopyImage copies the built image to a fresh file in a t.TempDir, for a VM to write to.
func CopyImage(t testing.TB, img string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "disk.raw")
	if err := copyFile(img, dst); err != nil {
		t.Fatal(err)
	}
	return dst
}
