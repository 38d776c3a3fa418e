package kmod

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Device is a device the kernel announced on a bus, with its modalias.
type Device struct {
	Path     string // sysfs directory, e.g. /sys/bus/pci/devices/0000:00:03.0
	Bus      string // "pci", "virtio", ...
	Modalias string
	Driver   string // bound driver, "" when none
}

// Devices lists every device under sysRoot/bus/*/devices that has a modalias.
func Devices(sysRoot string) ([]Device, error) {
	paths, err := filepath.Glob(filepath.Join(sysRoot, "bus", "*", "devices", "*", "modalias"))
	if err != nil {
		return nil, err
	}
	sort.Strings(paths)
	devs := make([]Device, 0, len(paths))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // devices come and go while drivers probe
		}
		dir := filepath.Dir(p)
		d := Device{
			Path:     dir,
			Bus:      filepath.Base(filepath.Dir(filepath.Dir(dir))),
			Modalias: strings.TrimSpace(string(b)),
		}
		if target, err := os.Readlink(filepath.Join(dir, "driver")); err == nil {
			d.Driver = filepath.Base(target)
		}
		if d.Modalias != "" {
			devs = append(devs, d)
		}
	}
	return devs, nil
}

// Unclaimed is a PCI device no driver has bound, for the hardware report: an operator
// sees "8086:1592 (class 0200) has no driver" instead of a machine without its NIC.
type Unclaimed struct {
	Address string `json:"address"` // PCI address, 0000:00:03.0
	ID      string `json:"id"`      // vendor:device, lower-case hex, as lspci -n prints it
	Class   string `json:"class"`   // base class + subclass, e.g. "0200" (Ethernet)
}

// pciID parses vendor, device and class out of a PCI modalias
// ("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00").
func pciID(modalias string) (id, class string, err error) {
	var ven, dev, sv, sd uint32
	var bc, sc, pi uint8
	_, err = fmt.Sscanf(modalias, "pci:v%08Xd%08Xsv%08Xsd%08Xbc%02Xsc%02Xi%02X", &ven, &dev, &sv, &sd, &bc, &sc, &pi)
	if err != nil {
		return "", "", fmt.Errorf("parse PCI modalias %q: %w", modalias, err)
	}
	return fmt.Sprintf("%04x:%04x", ven, dev), fmt.Sprintf("%02x%02x", bc, sc), nil
}

// UnclaimedPCI returns the PCI devices without a bound driver. Bridges (class 06) are
// left out: host, ISA and PCI bridges usually have no driver and need none.
func UnclaimedPCI(devs []Device) []Unclaimed {
	var out []Unclaimed
	for _, d := range devs {
		if d.Bus != "pci" || d.Driver != "" {
			continue
		}
		id, class, err := pciID(d.Modalias)
		if err != nil || strings.HasPrefix(class, "06") {
			continue
		}
		out = append(out, Unclaimed{Address: filepath.Base(d.Path), ID: id, Class: class})
	}
	return out
}
