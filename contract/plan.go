package contract

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
)

// ImageRef is one image of a region's catalog as the region advertises it: enough to
// plan an install (the decompressed size decides which disks fit) and to bind an
// approval to the exact bytes (sha256 of the decompressed image).
type ImageRef struct {
	OSRef
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	Format string `json:"format,omitempty"`
	// Layout is the image's partition table, where the catalog read it: a plan
	// with a cloud-init seed needs it.
	Layout *ImageLayout `json:"layout,omitempty"`
}

// PlanDisk is the disk a plan wipes, with every identity the agent checks before it
// writes: WWN and serial where the disk has them, else path, size and model.
type PlanDisk struct {
	Name      string `json:"name"`
	Path      string `json:"path"`
	SizeBytes int64  `json:"size_bytes"`
	Model     string `json:"model,omitempty"`
	Serial    string `json:"serial,omitempty"`
	WWN       string `json:"wwn,omitempty"`
	ByPath    string `json:"by_path,omitempty"`
}

// Plan is what an approval approves: this disk of this machine gets this image. It is
// computed once (MakePlan) when the hardware is reported, stored with the task, shown
// verbatim, approved by its Digest and enforced by the agent. A plan that cannot be
// carried out says why in Refused and has no disk; approval is refused with that
// reason.
type Plan struct {
	Disk  *PlanDisk `json:"disk,omitempty"`
	Image *ImageRef `json:"image,omitempty"`
	// Seed is where the cloud-init seed goes, for a task with cloud-init data.
	Seed    *PlanSeed `json:"seed,omitempty"`
	Refused string    `json:"refused,omitempty"`
	// Digest covers the task id, the hardware report exactly as stored and the plan:
	// any change to either makes a new digest, so an approval of an old one fails.
	Digest string `json:"digest"`
}

// Approvable reports whether a person may approve p.
func (p *Plan) Approvable() bool {
	return p != nil && p.Refused == "" && p.Disk != nil && p.Image != nil
}

// MakePlan is the one place an install is decided. hardware is the report as stored
// (its bytes enter the digest), hint the task's disk selector, want the task's OS and
// catalog what the region offers (nil: unknown, the region is offline). The disk is chosen with ChooseDisk and the real
// decompressed size of the image, so a disk too small for it is never named. seed: the
// task has cloud-init data, so the plan places its seed (PlaceSeed) and the disk must
// hold it too; an image that cannot take one refuses the plan.
func MakePlan(taskID string, hardware []byte, hint *DiskHint, want OSRef, seed bool, catalog []ImageRef) Plan {
	var p Plan
	var why []string
	for _, img := range catalog {
		if img.Is(want) {
			img := img
			p.Image = &img
			break
		}
	}
	if p.Image == nil && catalog == nil {
		why = append(why, "the region's image catalog is unknown (its appliance is offline)")
	} else if p.Image == nil {
		have := make([]string, 0, len(catalog))
		for _, img := range catalog {
			have = append(have, img.String())
		}
		if len(have) == 0 {
			have = append(have, "nothing")
		}
		why = append(why, fmt.Sprintf("the region has no image for %s (its catalog has: %s)", want, strings.Join(have, ", ")))
	}
	if p.Image != nil && seed {
		if s, err := PlaceSeed(p.Image.Layout); err != nil {
			why = append(why, err.Error())
		} else {
			p.Seed = &s
		}
	}
	var hw Hardware
	if err := json.Unmarshal(hardware, &hw); err != nil {
		why = append(why, "the hardware report is unreadable: "+err.Error())
	} else if p.Image != nil && (!seed || p.Seed != nil) {
		d, err := ChooseDisk(hw.Disks, hint, p.NeedBytes(), hw.BootDisk)
		if err != nil && p.Seed != nil {
			why = append(why, fmt.Sprintf("%v (the image and its cloud-init seed need %d bytes)", err, p.NeedBytes()))
		} else if err != nil {
			why = append(why, err.Error())
		} else {
			p.Disk = &PlanDisk{Name: d.Name, Path: d.Path, SizeBytes: d.SizeBytes, Model: d.Model, Serial: d.Serial, WWN: d.WWN, ByPath: d.ByPath}
		}
	}
	p.Refused = strings.Join(why, "; ")
	p.Digest = p.digest(taskID, hardware)
	return p
}

func (p Plan) digest(taskID string, hardware []byte) string {
	p.Digest = ""
	body, _ := json.Marshal(p)
	h := sha256.New()
	for _, part := range [][]byte{[]byte(taskID), hardware, body} {
		h.Write(part)
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// FindPlannedDisk finds the planned disk in a fresh inventory, the agent's check
// before it writes a byte. WWN, then serial, identify a disk; a disk with neither
// (virtual disks) must match path, size and model. The disk found must still be safe
// for the image (ChooseDisk's rules: not removable, USB, read-only, the boot disk, or
// too small). Anything else is an error that says what differs: nothing is written.
func FindPlannedDisk(disks []Disk, want PlanDisk, imageSize int64, bootDisk string) (Disk, error) {
	var found []Disk
	for _, d := range disks {
		switch {
		case want.WWN != "":
			if strings.EqualFold(strings.TrimPrefix(d.WWN, "0x"), strings.TrimPrefix(want.WWN, "0x")) {
				found = append(found, d)
			}
		case want.Serial != "":
			if d.Serial == want.Serial {
				found = append(found, d)
			}
		default:
			if d.Path == want.Path && d.SizeBytes == want.SizeBytes && d.Model == want.Model {
				found = append(found, d)
			}
		}
	}
	id := describePlanDisk(want)
	switch {
	case len(found) == 0:
		return Disk{}, fmt.Errorf("%w: the approved disk %s is not in this machine's inventory (%d disks seen)", ErrNoDisk, id, len(disks))
	case len(found) > 1:
		return Disk{}, fmt.Errorf("%w: the approved disk %s matches %d disks: %s", ErrNoDisk, id, len(found), describeAll(found))
	}
	d := found[0]
	if d.SizeBytes != want.SizeBytes {
		return Disk{}, fmt.Errorf("%w: the approved disk %s now reports %d bytes, not %d", ErrNoDisk, id, d.SizeBytes, want.SizeBytes)
	}
	if reason := unsafeDisk(d, imageSize, bootDisk); reason != "" {
		return Disk{}, fmt.Errorf("%w: the approved disk %s is no longer safe to write: %s", ErrNoDisk, id, reason)
	}
	return d, nil
}

func describePlanDisk(d PlanDisk) string {
	s := d.Path
	if s == "" {
		s = d.Name
	}
	switch {
	case d.WWN != "":
		s += " (WWN " + d.WWN + ")"
	case d.Serial != "":
		s += " (serial " + d.Serial + ")"
	default:
		s += fmt.Sprintf(" (%d bytes)", d.SizeBytes)
	}
	return s
}
