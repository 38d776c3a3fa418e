// Package boot is what the agent does as u-root's uinit inside the initramfs, before
// its real work: mount what init left out, load drivers, wait for entropy, read the
// kernel command line and bring up the boot NIC. It also owns the end of the road: a
// fatal error is shown on the console and the process never returns to init.
package boot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"lpmos.dev/lpmos/agent-initramfs/kmod"
)

// ModulesRoot holds the initramfs's modules as ModulesRoot/<kernel release>/, with a
// modules.alias. Deliberately not /lib/modules: u-root's init would try to load every
// .ko there, in no order.
const ModulesRoot = "/lpmos/modules"

// AlwaysLoad are modules no device's modalias asks for but the agent needs:
// virtio_rng feeds the kernel's entropy pool in VMs (Go's crypto/rand otherwise blocks
// for minutes under emulation; absent hardware makes it a no-op), sd_mod makes
// SCSI/SATA/SAS disks block devices. On UEFI machines efivarfs is loaded too.
var AlwaysLoad = []string{"virtio_rng", "sd_mod"}

// moduleParams make probing synchronous where the kernel defaults to async, so disks
// exist when the inventory runs.
var moduleParams = map[string]string{"scsi_mod": "scan=sync"}

// Prepare readies the initramfs for the agent and returns its settings. cmdline is the
// kernel command line; nil reads /proc/cmdline. On error the returned Settings still
// carry what was parsed (RebootDelay above all) for Fatal.
func Prepare(ctx context.Context, log *slog.Logger, cmdline io.Reader) (Settings, error) {
	start := time.Now()
	if err := mountEssentials(); err != nil {
		return Settings{RebootDelay: DefaultRebootDelay}, err
	}
	if cmdline == nil {
		b, err := os.ReadFile("/proc/cmdline")
		if err != nil {
			return Settings{RebootDelay: DefaultRebootDelay}, fmt.Errorf("read kernel command line: %w", err)
		}
		cmdline = bytes.NewReader(b)
	}
	s, parseErr := ParseCmdline(cmdline)

	// Drivers before judging the command line: even a misconfigured boot wants its
	// disks and keyboard for the rescue shell.
	rep, err := loadDrivers(ctx, log)
	if err != nil {
		return s, err
	}
	s.Drivers = rep
	if err := mountEFIVars(); err != nil {
		log.Warn("efivarfs not mounted", "err", err)
	}
	if parseErr != nil {
		return s, parseErr
	}
	if err := waitEntropy(ctx, log); err != nil {
		return s, err
	}
	settleBlockDevices(ctx, "/sys")

	n, err := bringUpNIC(ctx, log, "/sys", s.MAC)
	if err != nil {
		return s, fmt.Errorf("boot network: %w", err)
	}
	s.MAC, s.Interface = n.MAC, n.Name
	log.Info("initramfs ready", "regional_url", s.RegionalURL, "task", s.TaskID, "mac", s.MAC,
		"nic", s.Interface, "modules", len(rep.Loaded), "took", time.Since(start).Round(time.Millisecond))
	return s, nil
}

// Run is the whole life of the agent as uinit: Prepare, then agent, then a reboot
// into whatever the agent installed. It never returns; errors go through Fatal.
func Run(ctx context.Context, log *slog.Logger, agent func(context.Context, Settings) error) {
	s, err := Prepare(ctx, log, nil)
	if err != nil {
		Fatal(log, err, s)
	}
	if err := agent(ctx, s); err != nil {
		Fatal(log, err, s)
	}
	log.Info("agent done: rebooting")
	Reboot()
}

func loadDrivers(ctx context.Context, log *slog.Logger) (kmod.Report, error) {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return kmod.Report{}, fmt.Errorf("uname: %w", err)
	}
	release := unix.ByteSliceToString(uts.Release[:])
	dir := filepath.Join(ModulesRoot, release)
	ix, err := kmod.Open(dir)
	if err != nil {
		return kmod.Report{}, fmt.Errorf("kernel %s: modules: %w (initramfs built for another kernel?)", release, err)
	}
	l := kmod.NewLoader(ix, log)
	l.Params = moduleParams
	always := AlwaysLoad
	if _, err := os.Stat("/sys/firmware/efi"); err == nil {
		always = append(always[:len(always):len(always)], "efivarfs") // ENODEV on BIOS
	}
	for _, m := range always {
		if err := l.Load(m); err != nil {
			log.Warn("module not loaded", "module", m, "err", err)
		}
	}
	rep, err := l.LoadForDevices(ctx)
	if err != nil {
		return rep, err
	}
	rep.Loaded = l.Loaded() // with AlwaysLoad's
	log.Info("drivers loaded", "modules", rep.Loaded)
	for m, e := range rep.Failed {
		log.Warn("driver failed", "module", m, "err", e)
	}
	for _, u := range rep.Unclaimed {
		log.Warn("device without driver", "pci", u.Address, "id", u.ID, "class", u.Class)
	}
	return rep, nil
}

// mountEssentials mounts /proc, /sys and /dev unless something (u-root's init does)
// already has. The filesystem magic tells a mount apart from an empty directory.
func mountEssentials() error {
	for _, m := range []struct {
		fstype, target string
		magic          int64
	}{
		{"proc", "/proc", unix.PROC_SUPER_MAGIC},
		{"sysfs", "/sys", unix.SYSFS_MAGIC},
		{"devtmpfs", "/dev", unix.TMPFS_MAGIC},
	} {
		var st unix.Statfs_t
		if err := unix.Statfs(m.target, &st); err == nil && st.Type == m.magic {
			continue
		}
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.fstype, m.target, m.fstype, 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
		}
	}
	return nil
}

// mountEFIVars mounts the UEFI variables, which u-root's init tried before efivarfs
// was loaded. Nothing to do on BIOS machines.
func mountEFIVars() error {
	const dir = "/sys/firmware/efi/efivars"
	if _, err := os.Stat(dir); err != nil {
		return nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err == nil && st.Type == unix.EFIVARFS_MAGIC {
		return nil
	}
	if err := unix.Mount("efivarfs", dir, "efivarfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount efivarfs: %w", err)
	}
	return nil
}

// waitEntropy blocks until the kernel's random pool is initialised: the DHCP client's
// transaction IDs and TLS need it, and waiting here gives one clear console line
// instead of a silent hang later.
func waitEntropy(ctx context.Context, log *slog.Logger) error {
	done := make(chan error, 1)
	go func() {
		var b [1]byte
		_, err := unix.Getrandom(b[:], 0)
		done <- err
	}()
	warn := time.NewTicker(10 * time.Second)
	defer warn.Stop()
	start := time.Now()
	for {
		select {
		case err := <-done:
			if err != nil {
				return fmt.Errorf("getrandom: %w", err)
			}
			if d := time.Since(start); d > time.Second {
				log.Info("entropy ready", "waited", d.Round(time.Millisecond))
			}
			return nil
		case <-warn.C:
			log.Warn("waiting for entropy: give VMs -device virtio-rng-pci", "waited", time.Since(start).Round(time.Second))
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// settleBlockDevices waits until the set of block devices has been stable for a
// second (at most 10 s), like udevadm settle: NVMe scans namespaces asynchronously.
func settleBlockDevices(ctx context.Context, sysRoot string) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	last, stableSince := "", time.Now()
	for {
		names, _ := filepath.Glob(filepath.Join(sysRoot, "block", "*"))
		if cur := fmt.Sprint(names); cur != last {
			last, stableSince = cur, time.Now()
		} else if time.Since(stableSince) >= time.Second {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
