// Package testos builds and boots the LPMOS test OS: a ~11 MiB raw disk image (BIOS and
// UEFI) whose init prints Marker on the serial console and powers off. End-to-end tests
// install it with the agent, then boot the written disk and look for the marker.
//
//	img := testos.Build(t)                      // build/testos/testos.img (skips if tools are missing)
//	res := testos.Boot(t, testos.BootConfig{Disk: copyOfImg, Firmware: testos.UEFI})
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
)

// Marker starts the line the test OS's init prints once the kernel has run it.
const Marker = "LPMOS-TESTOS-BOOTED"

// Firmware selects how QEMU boots the disk.
type Firmware string

const (
	BIOS Firmware = "bios" // SeaBIOS, syslinux
	UEFI Firmware = "uefi" // OVMF on q35, systemd-boot
)

// OVMF firmware files (Debian's ovmf package). The vars file is copied per VM.
const (
	OVMFCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	OVMFVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

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
	Firmware  Firmware      // BIOS or UEFI
	Timeout   time.Duration // until the marker must appear; default 3 minutes
	Memory    string        // -m; default 512
	ExtraArgs []string      // appended to QEMU's arguments
}

// BootResult is what a successful boot showed.
type BootResult struct {
	Line    string        // the marker line: "LPMOS-TESTOS-BOOTED kernel=... firmware=... cmdline=..."
	Elapsed time.Duration // QEMU start to the marker on the serial log
	Log     string        // the serial log's path (in a t.TempDir)
}

// Boot starts QEMU (TCG: see LAB.md) on cfg.Disk, waits for the marker line with the
// expected firmware in it, and returns it. QEMU is killed in t.Cleanup if still running.
// Fails t on timeout or if QEMU exits without the marker; skips t if QEMU or OVMF is
// missing.
func Boot(t testing.TB, cfg BootConfig) BootResult {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("SKIP: qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 3 * time.Minute
	}
	if cfg.Memory == "" {
		cfg.Memory = "512"
	}
	dir := t.TempDir()
	serial := filepath.Join(dir, "serial.log")
	args := []string{"-accel", "tcg", "-m", cfg.Memory, "-nographic", "-no-reboot", "-monitor", "none",
		"-drive", "file=" + cfg.Disk + ",format=raw,if=virtio", "-serial", "file:" + serial}
	switch cfg.Firmware {
	case BIOS:
	case UEFI:
		if _, err := os.Stat(OVMFCode); err != nil {
			t.Skipf("SKIP: %s missing (apt-get install ovmf)", OVMFCode)
		}
		vars := filepath.Join(dir, "OVMF_VARS.fd")
		if err := copyFile(OVMFVars, vars); err != nil {
			t.Skipf("SKIP: OVMF vars: %v", err)
		}
		args = append(args, "-machine", "q35",
			"-drive", "if=pflash,format=raw,readonly=on,file="+OVMFCode,
			"-drive", "if=pflash,format=raw,file="+vars)
	default:
		t.Fatalf("testos.Boot: unknown firmware %q", cfg.Firmware)
	}
	args = append(args, cfg.ExtraArgs...)

	var out bytes.Buffer
	cmd := exec.Command("qemu-system-x86_64", args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill() // by PID; harmless if QEMU already powered off
		<-exited
	})

	ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
	defer cancel()
	line, err := WaitForMarker(ctx, serial, exited)
	elapsed := time.Since(start)
	if err != nil {
		log, _ := os.ReadFile(serial)
		t.Fatalf("%s boot of %s: %v after %v\nqemu: %s\nserial log tail:\n%s",
			cfg.Firmware, cfg.Disk, err, elapsed.Round(time.Millisecond), out.String(), tail(log, 3000))
	}
	if !strings.Contains(line, " firmware="+string(cfg.Firmware)+" ") {
		t.Fatalf("booted, but not through %s firmware: %q", cfg.Firmware, line)
	}
	return BootResult{Line: line, Elapsed: elapsed, Log: serial}
}

// WaitForMarker polls the serial log at logPath until a line containing Marker appears
// and returns that line. It gives up when ctx ends or exited (if non-nil) is closed and a
// last read still lacks the marker, e.g. QEMU exited after a kernel panic.
func WaitForMarker(ctx context.Context, logPath string, exited <-chan struct{}) (string, error) {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		if line, ok := findMarker(logPath); ok {
			return line, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("no %s line on the serial console: %w", Marker, ctx.Err())
		case <-exited:
			if line, ok := findMarker(logPath); ok {
				return line, nil
			}
			return "", fmt.Errorf("QEMU exited without a %s line on the serial console", Marker)
		case <-tick.C:
		}
	}
}

// findMarker returns the first complete marker line in the log.
func findMarker(logPath string) (string, bool) {
	b, err := os.ReadFile(logPath)
	if err != nil {
		return "", false
	}
	i := bytes.Index(b, []byte(Marker))
	if i < 0 {
		return "", false
	}
	end := bytes.IndexByte(b[i:], '\n')
	if end < 0 {
		return "", false // still being written
	}
	return strings.TrimRight(string(b[i:i+end]), "\r"), true
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
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
