package control

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/store"
)

const disksJSON = `{"disks": [
  {"name": "sda", "path": "/dev/sda", "size_bytes": 16000000000, "removable": true, "serial": "USB1"},
  {"name": "vda", "path": "/dev/vda", "size_bytes": 8000000000, "serial": "BOOT"},
  {"name": "nvme0n1", "path": "/dev/nvme0n1", "size_bytes": 480000000000, "serial": "NV1", "model": "SSD"},
  {"name": "sdb", "path": "/dev/sdb", "size_bytes": 4000000000000, "serial": "HD1"},
  {"name": "sdc", "path": "/dev/sdc", "size_bytes": 100000000000, "serial": "RO", "read_only": true}
], "boot_disk": "vda"}`

// The disk an approval names must be the one the agent will take: the page and the
// agent both run contract.ChooseDisk; this checks the wording and the marking.
func TestTargetDisk(t *testing.T) {
	const twins = `{"disks": [
  {"name": "sda", "path": "/dev/sda", "size_bytes": 480000000000, "serial": "A"},
  {"name": "sdb", "path": "/dev/sdb", "size_bytes": 480000000000, "serial": "B"},
  {"name": "sdc", "path": "/dev/sdc", "size_bytes": 8000000000, "controller": "usb"},
  {"name": "sdd", "path": "/dev/sdd", "size_bytes": 9000000000, "by_path": "pci-0000:00:14.0-usb-0:1:1.0-scsi-0:0:0:0"},
  {"name": "sde", "path": "/dev/sde", "size_bytes": 0}
]}`
	for _, c := range []struct {
		name, report string
		hint         *contract.DiskHint
		want         string
		agent        bool
		refused      bool
	}{
		{"smallest eligible", disksJSON, nil, "/dev/nvme0n1, 480 GB, SSD, serial NV1", true, false},
		{"size bounds", disksJSON, &contract.DiskHint{MinBytes: 1e12}, "/dev/sdb, 4.0 TB, serial HD1", false, false},
		{"serial", disksJSON, &contract.DiskHint{Serial: "HD1"}, "/dev/sdb, 4.0 TB, serial HD1", false, false},
		{"serial not in the report", disksJSON, &contract.DiskHint{Serial: "GONE"}, "none: no eligible disk matches the task's disk hint (serial GONE); the agent will refuse to install", false, true},
		{"hint matches two", disksJSON, &contract.DiskHint{MinBytes: 1e11}, "ambiguous: the task's disk hint matches 2 disks (/dev/nvme0n1, 480 GB, SSD, serial NV1; /dev/sdb, 4.0 TB, serial HD1); the agent will refuse to install", false, true},
		{"nothing fits", disksJSON, &contract.DiskHint{MinBytes: 1e15}, "none: no eligible disk matches the task's disk hint (at least 1.0 PB); the agent will refuse to install", false, true},
		{"identical smallest", twins, nil, "ambiguous: several smallest disks of the same size (/dev/sda, 480 GB, serial A; /dev/sdb, 480 GB, serial B); the agent will refuse to install: name one in the task's disk hint", true, true},
		{"twin named", twins, &contract.DiskHint{Serial: "B"}, "/dev/sdb, 480 GB, serial B", false, false},
		{"only usb", `{"disks": [{"name": "sdc", "size_bytes": 8000000000, "controller": "usb"}]}`, nil, "none: no disk in the report is eligible (removable, USB, read-only or the agent's own); the agent will refuse to install", true, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			hw := parseHardware(json.RawMessage(c.report), "")
			got, agentChooses, refused := targetDisk(&hw, c.hint)
			if got != c.want || agentChooses != c.agent || refused != c.refused {
				t.Errorf("targetDisk = %q, %v, %v; want %q, %v, %v", got, agentChooses, refused, c.want, c.agent, c.refused)
			}
			var marked []string
			for _, d := range hw.Disks {
				if d.Candidate {
					marked = append(marked, d.Name)
				}
			}
			var hint *contract.DiskHint
			if h := c.hint; h != nil {
				hint = &contract.DiskHint{Serial: h.Serial, WWN: h.WWN, ByPath: h.ByPath, MinBytes: h.MinBytes, MaxBytes: h.MaxBytes}
			}
			chosen, err := contract.ChooseDisk(hw.HW.Disks, hint, 0, hw.HW.BootDisk)
			switch {
			case err != nil && (!refused || len(marked) != 0):
				t.Errorf("the agent refuses (%v) but the page names %v", err, marked)
			case err == nil && (refused || strings.Join(marked, ",") != chosen.Name):
				t.Errorf("the agent takes %s but the page names %v (refused %v)", chosen.Name, marked, refused)
			}
		})
	}
	hw := parseHardware(nil, "")
	if got, _, refused := targetDisk(&hw, nil); got != "unknown: no hardware report yet" || refused {
		t.Errorf("no report: %q", got)
	}
}

func TestParseHardwareKeepsABadReportReadable(t *testing.T) {
	hw := parseHardware(json.RawMessage(`{"cpu": "many"}`), "")
	if !hw.Present || hw.ParseErr == "" || !strings.Contains(hw.Raw, "many") {
		t.Fatalf("%+v", hw)
	}
}

// Rate and ETA come from the agent when it sends them, else from two samples; a
// page re-render (same sample again) must not change them.
func TestRateTracker(t *testing.T) {
	r := newRateTracker()
	t0 := time.Date(2026, 1, 30, 10, 0, 0, 0, time.UTC)
	p1 := contract.Progress{Percentage: 10, BytesDone: 100e6, BytesTotal: 1000e6, UpdatedAt: t0}
	if rate, eta := r.observe("a", p1); rate != "" || eta != "" {
		t.Errorf("one sample: %q %q", rate, eta)
	}
	p2 := contract.Progress{Percentage: 20, BytesDone: 200e6, BytesTotal: 1000e6, UpdatedAt: t0.Add(10 * time.Second)}
	for range 2 {
		if rate, eta := r.observe("a", p2); rate != "10.0 MB/s" || eta != "1 min 20 s" {
			t.Errorf("two samples: %q %q", rate, eta)
		}
	}
	// Percent only (no byte counts): %/min and the ETA from it.
	r.observe("b", contract.Progress{Percentage: 0, UpdatedAt: t0})
	if rate, eta := r.observe("b", contract.Progress{Percentage: 50, UpdatedAt: t0.Add(time.Minute)}); rate != "50.0 %/min" || eta != "1 min 00 s" {
		t.Errorf("percent only: %q %q", rate, eta)
	}
	// The agent's own numbers win.
	if rate, eta := r.observe("c", contract.Progress{RateBps: 2e9, ETASeconds: 7200, UpdatedAt: t0}); rate != "2.0 GB/s" || eta != "2 h 00 min" {
		t.Errorf("agent's numbers: %q %q", rate, eta)
	}
}

func TestHumanUnits(t *testing.T) {
	for n, want := range map[int64]string{0: "—", 999: "999 B", 15_500_000_000: "15.5 GB", 480_103_981_056: "480 GB", 4_000_787_030_016: "4.0 TB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
	for n, want := range map[int64]string{137438953472: "128 GiB", 135000000000: "126 GiB", 3 << 29: "1.5 GiB", 512 << 20: "512 MiB"} {
		if got := humanIEC(n); got != want {
			t.Errorf("humanIEC(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestTimeline(t *testing.T) {
	now := time.Now()
	steps := timeline(store.Task{Metadata: store.Metadata{CreatedAt: now, FinishedAt: &now, Error: "wrong rack"}, Status: store.StatusCancelled})
	last := steps[len(steps)-1]
	if last.Label != "Cancelled" || last.Note != "wrong rack" || !last.Bad || steps[1].Note != "skipped" {
		t.Fatalf("%+v", steps)
	}
}
