// Package vagrantlab boots the Vagrant/libvirt lab for real: `vagrant up` of one BIOS
// and one UEFI machine through the appliance to their installed OS (lab.Vagrant, what
// `make vagrant-lab` runs). It holds this test only.
package vagrantlab

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"lpmos.dev/lpmos/agent-initramfs/vmtest"
	"lpmos.dev/lpmos/images/testos"
	"lpmos.dev/lpmos/lab"
	"lpmos.dev/lpmos/lab/labtest"
)

func TestVagrantUp(t *testing.T) {
	if testing.Short() {
		t.Skip("Vagrant lab skipped in -short mode")
	}
	if os.Geteuid() != 0 {
		t.Skip("VAGRANT LAB SKIPPED: needs root (libvirtd in a network namespace, DHCP ports); CI runs make test as root")
	}
	for _, b := range []string{"vagrant", "libvirtd", "virsh", "qemu-img"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("VAGRANT LAB SKIPPED: %s not installed (.ci/run installs vagrant, vagrant-libvirt, libvirt-daemon-system, qemu-utils)", b)
		}
	}
	boot := vmtest.BuildImages(t)
	img := testos.Build(t)
	dir := t.TempDir()
	bin := labtest.BuildBinaries(t, filepath.Join(dir, "bin"), "./appliance/cmd/lpmos-appliance", "./control/cmd/lpmos-control", "./images/cmd/lpmos-image")
	repo, _ := filepath.Abs("../..")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	ms, err := lab.Vagrant(ctx, lab.VagrantConfig{Repo: repo, Dir: filepath.Join(dir, "lab"), Bin: bin,
		Kernel: boot.Kernel, Initramfs: boot.Initramfs, Image: img + ".zst", VMs: 2, Firmware: "mixed", Out: testWriter{t}})
	if errors.Is(err, lab.ErrLibvirtRunning) {
		t.Skipf("VAGRANT LAB SKIPPED: %v", err)
	}
	table := lab.VagrantTimings(ms) + "whole Vagrant run: " + time.Since(start).Round(time.Second).String() + "\n"
	t.Log(table)
	if f := os.Getenv("LPMOS_TIMINGS_FILE"); f != "" {
		if fh, ferr := os.OpenFile(f, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); ferr == nil {
			fh.WriteString(table)
			fh.Close()
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.MarkerLine == "" {
			t.Errorf("%s never booted its installed OS", m.Name)
		}
		// The target: UEFI approval -> installed OS within 60 s under TCG.
		if d := m.At["marker"].Sub(m.At["approved"]); d > 60*time.Second {
			t.Errorf("%s: approval -> installed OS took %.0f s (target 60 s)", m.Name, d.Seconds())
		}
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Logf("%s", p); return len(p), nil }
