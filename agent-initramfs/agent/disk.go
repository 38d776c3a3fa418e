package agent

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"lpmos.dev/lpmos/appliance/regionapi"
)

// ErrNoDisk is a disk choice that failed closed: nothing is written.
var ErrNoDisk = errors.New("no safe install disk")

// ChooseDisk picks the disk to wipe, failing closed. Never a removable or USB disk,
// never a read-only one, never the disk the agent booted from, never one too small for
// the image, never one the task's hint does not match. With a hint the match must be
// unique; without one the smallest disk that fits wins, and only if no other disk has
// the same size (two identical candidates means a person must name one). The error
// lists every disk and why it was not taken, for the operator reading the task.
func ChooseDisk(disks []regionapi.Disk, hint *regionapi.DiskHint, imageSize int64, bootDisk string) (regionapi.Disk, error) {
	var cands []regionapi.Disk
	var why []string
	for _, d := range disks {
		if reason := unsafeDisk(d, imageSize, bootDisk); reason != "" {
			why = append(why, describe(d)+": "+reason)
			continue
		}
		if hint != nil && !hintMatches(d, hint) {
			why = append(why, describe(d)+": does not match the task's disk hint")
			continue
		}
		cands = append(cands, d)
	}
	fail := func(format string, args ...any) (regionapi.Disk, error) {
		msg := fmt.Sprintf(format, args...)
		if len(why) > 0 {
			msg += "; " + strings.Join(why, "; ")
		}
		return regionapi.Disk{}, fmt.Errorf("%w: %s", ErrNoDisk, msg)
	}
	if len(cands) == 0 {
		return fail("no disk qualifies (%d seen)", len(disks))
	}
	sort.SliceStable(cands, func(i, j int) bool { return cands[i].SizeBytes < cands[j].SizeBytes })
	if hint != nil {
		if len(cands) > 1 {
			return fail("the disk hint matches %d disks: %s", len(cands), describeAll(cands))
		}
		return cands[0], nil
	}
	if len(cands) > 1 && cands[1].SizeBytes == cands[0].SizeBytes {
		return fail("ambiguous: several smallest disks of the same size: %s (name one in the task's disk hint)", describeAll(cands))
	}
	return cands[0], nil
}

func unsafeDisk(d regionapi.Disk, imageSize int64, bootDisk string) string {
	switch {
	case d.Removable:
		return "removable"
	case d.Controller == "usb" || strings.Contains(d.ByPath, "-usb-"):
		return "USB"
	case d.ReadOnly:
		return "read-only"
	case bootDisk != "" && (d.Name == bootDisk || d.Path == bootDisk):
		return "the agent booted from it"
	case d.SizeBytes <= 0:
		return "size unknown"
	case imageSize > 0 && d.SizeBytes < imageSize:
		return fmt.Sprintf("too small for the %d-byte image", imageSize)
	}
	return ""
}

func hintMatches(d regionapi.Disk, h *regionapi.DiskHint) bool {
	switch {
	case h.Serial != "" && d.Serial != h.Serial:
		return false
	case h.WWN != "" && !strings.EqualFold(strings.TrimPrefix(d.WWN, "0x"), strings.TrimPrefix(h.WWN, "0x")):
		return false
	case h.ByPath != "" && d.ByPath != strings.TrimPrefix(h.ByPath, "/dev/disk/by-path/"):
		return false
	case h.MinBytes > 0 && d.SizeBytes < h.MinBytes:
		return false
	case h.MaxBytes > 0 && d.SizeBytes > h.MaxBytes:
		return false
	}
	return true
}

func describe(d regionapi.Disk) string {
	s := fmt.Sprintf("%s (%.1f GiB", d.Name, float64(d.SizeBytes)/(1<<30))
	if d.Model != "" {
		s += " " + d.Model
	}
	if d.Serial != "" {
		s += " serial " + d.Serial
	}
	return s + ")"
}

func describeAll(ds []regionapi.Disk) string {
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = describe(d)
	}
	return strings.Join(parts, ", ")
}
