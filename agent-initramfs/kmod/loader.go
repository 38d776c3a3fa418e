package kmod

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Loader inserts modules from an Index into the running kernel, dependencies first,
// each at most once.
type Loader struct {
	Index   *Index
	Log     *slog.Logger
	SysRoot string // "/sys"; tests point it at a fake tree

	// Params are module parameters by module name, e.g. {"scsi_mod": "scan=sync"}.
	Params map[string]string

	// Insert loads one module file into the kernel with its parameters. Nil means
	// finit_module(2) for plain .ko files and init_module(2) on the decompressed image
	// otherwise. An error wrapping unix.EEXIST counts as success.
	Insert func(path, params string) error

	done   map[string]error // outcome per module this loader tried
	loaded []string
}

// NewLoader returns a loader over ix that logs to log.
func NewLoader(ix *Index, log *slog.Logger) *Loader {
	return &Loader{Index: ix, Log: log, SysRoot: "/sys"}
}

// Report says what LoadForDevices did, for the console and the hardware report.
type Report struct {
	Loaded    []string          `json:"loaded"`              // modules inserted, in order
	Failed    map[string]string `json:"failed,omitempty"`    // module -> error
	Unclaimed []Unclaimed       `json:"unclaimed,omitempty"` // PCI devices still without a driver
}

// Load inserts the named modules with their dependencies. Modules already in the kernel
// (seen in /sys/module) are skipped. It returns the first error but tries every name.
func (l *Loader) Load(names ...string) error {
	var first error
	for _, name := range names {
		if err := l.load(name); err != nil && first == nil {
			first = err
		}
	}
	return first
}

func (l *Loader) load(name string) error {
	if l.done == nil {
		l.done = map[string]error{}
	}
	name = Normalize(name)
	if err, ok := l.done[name]; ok {
		return err
	}
	order, err := l.Index.Closure(name)
	if err != nil {
		l.done[name] = err
		return err
	}
	for _, m := range order {
		if err, ok := l.done[m]; ok {
			if err != nil {
				l.done[name] = fmt.Errorf("%s: dependency %w", name, err)
				return l.done[name]
			}
			continue
		}
		err := l.insert(m)
		l.done[m] = err
		if err != nil {
			if m != name {
				l.done[name] = fmt.Errorf("%s: dependency %w", name, err)
				return l.done[name]
			}
			return err
		}
	}
	return nil
}

func (l *Loader) insert(name string) error {
	if _, err := os.Stat(filepath.Join(l.SysRoot, "module", name)); err == nil {
		return nil // loaded before us, or built in with parameters
	}
	p, err := l.Index.Path(name)
	if err != nil {
		return err
	}
	insert := l.Insert
	if insert == nil {
		insert = insertModule
	}
	if err := insert(p, l.Params[name]); err != nil && !errors.Is(err, unix.EEXIST) {
		l.Log.Warn("module load failed", "module", name, "err", err)
		return fmt.Errorf("load module %s: %w", name, err)
	}
	l.Log.Debug("module loaded", "module", name)
	l.loaded = append(l.loaded, name)
	return nil
}

// insertModule loads a module file into the running kernel.
func insertModule(path, params string) error {
	if strings.HasSuffix(path, ".ko") {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		return unix.FinitModule(int(f.Fd()), params, 0)
	}
	// Compressed: the kernel may lack in-kernel decompression, so hand it the image.
	image, err := readModule(path)
	if err != nil {
		return err
	}
	return unix.InitModule(image, params)
}

// Loaded returns the modules this loader inserted, in order.
func (l *Loader) Loaded() []string { return append([]string(nil), l.loaded...) }

// maxRounds bounds the device scan: loading a bus driver (virtio_pci) creates devices
// on a new bus (virtio), whose drivers are matched in the next round.
const maxRounds = 8

// LoadForDevices loads the modules matching every device's modalias until a round loads
// nothing new, then reports the PCI devices still without a driver. Load failures are
// in the report, not errors: one broken driver must not stop the boot.
func (l *Loader) LoadForDevices(ctx context.Context) (Report, error) {
	start := len(l.loaded)
	tried := map[string]bool{}
	for round := 0; round < maxRounds; round++ {
		if err := ctx.Err(); err != nil {
			return Report{}, err
		}
		devs, err := Devices(l.SysRoot)
		if err != nil {
			return Report{}, fmt.Errorf("list devices: %w", err)
		}
		var want []string
		for _, d := range devs {
			if d.Driver != "" {
				continue
			}
			for _, m := range l.Index.Match(d.Modalias) {
				if !tried[m] {
					tried[m] = true
					want = append(want, m)
				}
			}
		}
		if len(want) == 0 {
			break
		}
		l.Log.Debug("loading modules for devices", "round", round, "modules", want)
		_ = l.Load(want...) // recorded in l.done, reported below
	}
	// Rescan: the last round's drivers have bound their devices by now (probing is
	// synchronous in module init for the drivers we ship).
	devs, err := Devices(l.SysRoot)
	if err != nil {
		return Report{}, fmt.Errorf("list devices: %w", err)
	}
	rep := Report{Loaded: append([]string(nil), l.loaded[start:]...), Unclaimed: UnclaimedPCI(devs)}
	for m, err := range l.done {
		if err != nil {
			if rep.Failed == nil {
				rep.Failed = map[string]string{}
			}
			rep.Failed[m] = err.Error()
		}
	}
	return rep, nil
}
