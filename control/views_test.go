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

// The page states the stored plan verbatim and marks its disk; it computes nothing.
// For every inventory of the disk-choice cases, the disk the page names is the plan's,
// and the plan's is what contract.ChooseDisk picks with the image's real size.
func TestPlanText(t *testing.T) {
	const twins = `{"disks": [
  {"name": "sda", "path": "/dev/sda", "size_bytes": 480000000000, "serial": "A"},
  {"name": "sdb", "path": "/dev/sdb", "size_bytes": 480000000000, "serial": "B"}
]}`
	img := contract.ImageRef{OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}, SHA256: strings.Repeat("c", 64), Size: 9e9}
	for _, c := range []struct {
		name, report string
		hint         *contract.DiskHint
		want         string
		refused      bool
	}{
		// vda (8 GB) would be the smallest, but the 9 GB image does not fit on it.
		{"smallest that fits the image", disksJSON, nil, "/dev/nvme0n1, 480 GB, SSD, serial NV1", false},
		{"size bounds", disksJSON, &contract.DiskHint{MinBytes: 1e12}, "/dev/sdb, 4.0 TB, serial HD1", false},
		{"serial not in the report", disksJSON, &contract.DiskHint{Serial: "GONE"}, "no safe install disk: no disk qualifies (5 seen)", true},
		{"identical smallest", twins, nil, "no safe install disk: ambiguous: several smallest disks of the same size", true},
		{"twin named", twins, &contract.DiskHint{Serial: "B"}, "/dev/sdb, 480 GB, serial B", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := contract.MakePlan("task-1", []byte(c.report), c.hint, img.OSRef, false, []contract.ImageRef{img})
			hw := parseHardware(json.RawMessage(c.report), "")
			got, image, refused := planText(&hw, &p)
			if !strings.HasPrefix(got, c.want) || refused != c.refused || !strings.HasPrefix(image, "ubuntu 22.04 (9.0 GB, sha256 cccccccccccc)") {
				t.Errorf("planText = %q, %q, %v; want %q, %v", got, image, refused, c.want, c.refused)
			}
			var marked []string
			for _, d := range hw.Disks {
				if d.Candidate {
					marked = append(marked, d.Name)
				}
			}
			chosen, err := contract.ChooseDisk(hw.HW.Disks, c.hint, img.Size, hw.HW.BootDisk)
			switch {
			case err != nil && (!refused || len(marked) != 0):
				t.Errorf("no disk qualifies (%v) but the page names %v", err, marked)
			case err == nil && (refused || strings.Join(marked, ",") != chosen.Name || p.Disk.Name != chosen.Name):
				t.Errorf("ChooseDisk takes %s, the plan %+v, the page marks %v", chosen.Name, p.Disk, marked)
			}
		})
	}
	hw := parseHardware(nil, "")
	if got, _, refused := planText(&hw, nil); !strings.HasPrefix(got, "no plan yet") || !refused {
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
	steps := timeline(store.Task{Metadata: store.Metadata{CreatedAt: now, FinishedAt: &now, Error: "wrong rack"}, Status: store.StatusCancelled}, nil)
	last := steps[len(steps)-1]
	if last.Label != "Cancelled" || last.Note != "wrong rack" || !last.Bad || steps[1].Note != "skipped" {
		t.Fatalf("%+v", steps)
	}
	// Each step names its actor from the audit trail (newest first, as ListAudit gives it).
	trail := []store.AuditEntry{
		{Action: store.AuditTaskCancel, Actor: "bob"},
		{Action: store.AuditTaskReport, Actor: "agent:52:54:00:00:00:01"},
		{Action: store.AuditTaskCreate, Actor: "alice"},
	}
	steps = timeline(store.Task{Metadata: store.Metadata{CreatedAt: now, ReportedAt: &now, FinishedAt: &now}, Status: store.StatusCancelled}, trail)
	if steps[0].Label != "Created by alice" || steps[1].Label != "Hardware reported by agent:52:54:00:00:00:01" || steps[len(steps)-1].Label != "Cancelled by bob" {
		t.Fatalf("%+v", steps)
	}
}
