package contract

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// ErrNoDisk is a disk choice that failed closed: nothing is written. The error is a
// *DiskChoiceError that says why.
var ErrNoDisk = errors.New("no safe install disk")

// DiskRefusal says why no disk was chosen.
type DiskRefusal string

const (
	NoEligibleDisk    DiskRefusal = "no-eligible-disk"   // none qualifies (or none matches the hint)
	HintAmbiguous     DiskRefusal = "hint-ambiguous"     // the hint matches several
	SmallestAmbiguous DiskRefusal = "smallest-ambiguous" // no hint, and the smallest size is shared
)

// DiskChoiceError is a refused disk choice. It matches ErrNoDisk with errors.Is.
type DiskChoiceError struct {
	Reason     DiskRefusal
	Candidates []Disk    // the eligible disks, smallest first
	Rejected   []string  // every other disk and why it was not taken
	Hint       *DiskHint // the task's hint, if any
	msg        string
}

func (e *DiskChoiceError) Error() string        { return ErrNoDisk.Error() + ": " + e.msg }
func (e *DiskChoiceError) Is(target error) bool { return target == ErrNoDisk }

// ChooseDisk picks the disk to wipe, failing closed. MakePlan is its one caller: the
// plan it makes is what a person approves and what the agent enforces, so no second
// computation can name another disk. Never a removable or USB disk,
// never a read-only one, never the disk the agent booted from, never one too small for
// the image, never one the task's hint does not match. With a hint the match must be
// unique; without one the smallest disk that fits wins, and only if no other disk has
// the same size (two identical candidates means a person must name one). The error
// lists every disk and why it was not taken, for the operator reading the task.
func ChooseDisk(disks []Disk, hint *DiskHint, imageSize int64, bootDisk string) (Disk, error) {
	var cands []Disk
	var why []string
	for _, d := range disks {
		if reason := unsafeDisk(d, imageSize, bootDisk); reason != "" {
			why = append(why, DescribeDisk(d)+": "+reason)
			continue
		}
		if hint != nil && !hintMatches(d, hint) {
			why = append(why, DescribeDisk(d)+": does not match the task's disk hint")
			continue
		}
		cands = append(cands, d)
	}
	sort.SliceStable(cands, func(i, j int) bool { return cands[i].SizeBytes < cands[j].SizeBytes })
	fail := func(reason DiskRefusal, format string, args ...any) (Disk, error) {
		msg := fmt.Sprintf(format, args...)
		if len(why) > 0 {
			msg += "; " + strings.Join(why, "; ")
		}
		return Disk{}, &DiskChoiceError{Reason: reason, Candidates: cands, Rejected: why, Hint: hint, msg: msg}
	}
	switch {
	case len(cands) == 0:
		return fail(NoEligibleDisk, "no disk qualifies (%d seen)", len(disks))
	case hint != nil && len(cands) > 1:
		return fail(HintAmbiguous, "the disk hint matches %d disks: %s", len(cands), describeAll(cands))
	case hint == nil && len(cands) > 1 && cands[1].SizeBytes == cands[0].SizeBytes:
		return fail(SmallestAmbiguous, "ambiguous: several smallest disks of the same size: %s (name one in the task's disk hint)", describeAll(cands))
	}
	return cands[0], nil
}

func unsafeDisk(d Disk, imageSize int64, bootDisk string) string {
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

func hintMatches(d Disk, h *DiskHint) bool {
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

// DescribeDisk names a disk for a person: name, size, model, serial.
func DescribeDisk(d Disk) string {
	s := fmt.Sprintf("%s (%.1f GiB", d.Name, float64(d.SizeBytes)/(1<<30))
	if d.Model != "" {
		s += " " + d.Model
	}
	if d.Serial != "" {
		s += " serial " + d.Serial
	}
	return s + ")"
}

func describeAll(ds []Disk) string {
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = DescribeDisk(d)
	}
	return strings.Join(parts, ", ")
}
