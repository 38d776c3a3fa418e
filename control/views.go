package control

import (
	"encoding/json"
	"fmt"
	"math"
	"net/url"
	"strconv"
	"strings"
	"time"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/federation"
	"lpmos.dev/lpmos/store"
)

// View models: what the templates and the WebSocket push show, computed in Go so the
// templates and the JavaScript stay dumb and say the same thing.

// taskView is one task as a row of a list and as a live update.
type taskView struct {
	ID          string    `json:"id"`
	Short       string    `json:"short"`
	Region      string    `json:"region"`
	MAC         string    `json:"mac"`
	OS          string    `json:"os"`
	Status      string    `json:"status"`
	StatusLabel string    `json:"status_label"`
	Open        bool      `json:"open"`
	HasProgress bool      `json:"has_progress"`
	Percent     float64   `json:"percent"`
	PercentText string    `json:"percent_text"`
	Stage       string    `json:"stage"`
	Message     string    `json:"message"`
	Rate        string    `json:"rate"`
	ETA         string    `json:"eta"`
	Error       string    `json:"error"`
	Created     time.Time `json:"created"`
	Updated     time.Time `json:"updated"`
	// Stale: shown as last seen, its region's cluster does not answer.
	Stale bool `json:"stale,omitempty"`
}

func statusLabel(s store.Status) string {
	if s == store.StatusPendingApproval {
		return "pending approval"
	}
	return string(s)
}

func newTaskView(t store.Task, rates *rateTracker) taskView {
	v := taskView{
		ID: t.TaskID, Short: shortID(t.TaskID), Region: t.RegionID, MAC: t.TargetMAC,
		OS: t.OSType + " " + t.OSVersion, Status: string(t.Status), StatusLabel: statusLabel(t.Status),
		Open: t.Status.Open(), Error: t.Error, Created: t.CreatedAt, Updated: t.CreatedAt,
	}
	for _, at := range []*time.Time{t.ReportedAt, t.ApprovedAt, t.StartedAt, t.FinishedAt} {
		if at != nil && at.After(v.Updated) {
			v.Updated = *at
		}
	}
	if p := t.Progress; p != nil {
		v.HasProgress, v.Percent, v.Stage, v.Message = true, p.Percentage, string(p.Stage), p.Message
		v.PercentText = fmt.Sprintf("%.0f%%", p.Percentage)
		if p.UpdatedAt.After(v.Updated) {
			v.Updated = p.UpdatedAt
		}
		if t.Status == store.StatusInstalling || t.Status == store.StatusApproved {
			v.Rate, v.ETA = rates.observe(t.TaskID, *p)
		} else {
			rates.forget(t.TaskID)
		}
	}
	return v
}

// shortID is the last 8 characters: task ids are UUIDv7, whose first 8 hex digits are
// a timestamp shared by every task created in the same ~minute; the tail is random.
func shortID(id string) string {
	if len(id) > 8 {
		return id[len(id)-8:]
	}
	return id
}

// regionView is one region's health and statistics.
type regionView struct {
	Name       string           `json:"name"`
	Online     bool             `json:"online"`
	Health     string           `json:"health"`
	Heartbeat  *time.Time       `json:"heartbeat,omitempty"`
	LastSeen   *time.Time       `json:"last_seen,omitempty"` // offline: the last heartbeat this control plane saw
	APIURL     string           `json:"api_url"`
	Version    string           `json:"version"`
	Images     []contract.OSRef `json:"images"` // the region's catalog
	Counts     []statusCount    `json:"counts"`
	CountMap   map[string]int   `json:"-"`
	Total      int              `json:"total"`
	Installing int              `json:"installing"`
	Unmatched  int              `json:"unmatched"`
	Alert      bool             `json:"alert"`
	// Where the region lives and whether its cluster answers (docs/federation.md);
	// HealthText is what the health cell says ("unreachable since 15:04 UTC").
	Cluster          string     `json:"cluster"`
	Reachable        bool       `json:"reachable"`
	UnreachableSince *time.Time `json:"unreachable_since,omitempty"`
	Stale            bool       `json:"stale,omitempty"`
	HealthText       string     `json:"health_text"`
	readAt           time.Time  // when the read that made this view began
}

type statusCount struct {
	Status string `json:"status"`
	Label  string `json:"label"`
	N      int    `json:"n"`
}

func newRegionView(rs federation.RegionStatus, alert int) regionView {
	r := rs.Region
	v := regionView{Name: r.Name, Online: r.Online, Health: "offline", Unmatched: r.Unmatched,
		Alert: r.Unmatched > alert, CountMap: map[string]int{},
		Cluster: rs.Cluster, Reachable: rs.Reachable, UnreachableSince: rs.UnreachableSince, Stale: rs.Stale}
	if r.Online {
		v.Health = "online"
	}
	v.HealthText = v.Health
	if !rs.Reachable {
		v.Health, v.HealthText = "unreachable", "unreachable"
		if rs.UnreachableSince != nil {
			v.HealthText = "unreachable since " + rs.UnreachableSince.UTC().Format("15:04") + " UTC"
		}
	}
	if hb := r.Heartbeat; hb != nil {
		at := hb.Timestamp
		v.Heartbeat, v.APIURL, v.Version = &at, hb.APIURL, hb.Version
		for _, img := range hb.Images {
			v.Images = append(v.Images, img.OSRef)
		}
	}
	for _, s := range store.Statuses {
		n := r.Counts[s]
		v.Counts = append(v.Counts, statusCount{Status: string(s), Label: statusLabel(s), N: n})
		v.CountMap[string(s)] = n
		v.Total += n
	}
	v.Installing = r.Counts[store.StatusInstalling] + r.Counts[store.StatusApproved]
	return v
}

// imageValue is a catalog entry as a form value: both names, query-encoded, because a
// name may hold a space ("Rocky Linux 9" cannot be split back). parseImageValue reads it.
func imageValue(ref contract.OSRef) string {
	return url.Values{"os_type": {ref.OSType}, "os_version": {ref.OSVersion}}.Encode()
}

func parseImageValue(v string) (contract.OSRef, bool) {
	q, err := url.ParseQuery(v)
	if err != nil || q.Get("os_type") == "" || q.Get("os_version") == "" {
		return contract.OSRef{}, false
	}
	return contract.OSRef{OSType: q.Get("os_type"), OSVersion: q.Get("os_version")}, true
}

// unmatchedView is an unmatched report in a list.
type unmatchedView struct {
	ID       string    `json:"id"`
	Region   string    `json:"region"`
	MAC      string    `json:"mac"`
	Received time.Time `json:"received"`
	Summary  string    `json:"summary"`
}

func newUnmatchedView(u store.UnmatchedReport) unmatchedView {
	return unmatchedView{ID: u.ID, Region: u.Region, MAC: u.MACAddress, Received: u.ReceivedAt,
		Summary: parseHardware(u.Hardware, u.MACAddress).Summary}
}

// hardwareView is a hardware report for a human.
type hardwareView struct {
	Present   bool
	ParseErr  string
	HW        contract.Hardware
	Raw       string
	Summary   string
	MemTotal  string
	MemUsable string
	Disks     []diskView
	NICs      []nicView
}

type nicView struct {
	contract.NIC
	Speed  string
	Target bool // the MAC the task or report is about: the machine's boot NIC
}

type diskView struct {
	contract.Disk
	Size      string
	Boot      bool // the agent runs from it: never a target
	Candidate bool // the disk approval would wipe
}

func (d diskView) Describe() string {
	var parts []string
	if d.Path != "" {
		parts = append(parts, d.Path)
	} else {
		parts = append(parts, d.Name)
	}
	parts = append(parts, d.Size)
	if m := strings.TrimSpace(d.Vendor + " " + d.Model); m != "" {
		parts = append(parts, m)
	}
	if d.Serial != "" {
		parts = append(parts, "serial "+d.Serial)
	}
	return strings.Join(parts, ", ")
}

// parseHardware renders a report; mac (may be "") is the MAC the task targets.
func parseHardware(raw json.RawMessage, mac string) hardwareView {
	var v hardwareView
	if len(raw) == 0 || string(raw) == "null" {
		return v
	}
	v.Present = true
	if pretty, err := json.MarshalIndent(json.RawMessage(raw), "", "  "); err == nil {
		v.Raw = string(pretty)
	} else {
		v.Raw = string(raw)
	}
	if err := json.Unmarshal(raw, &v.HW); err != nil {
		v.ParseErr = err.Error()
		return v
	}
	hw := v.HW
	v.MemTotal, v.MemUsable = humanIEC(hw.Memory.TotalBytes), humanIEC(hw.Memory.UsableBytes)
	for _, d := range hw.Disks {
		v.Disks = append(v.Disks, diskView{Disk: d, Size: humanBytes(d.SizeBytes),
			Boot: hw.BootDisk != "" && (hw.BootDisk == d.Name || hw.BootDisk == d.Path)})
	}
	for _, n := range hw.NICs {
		nv := nicView{NIC: n, Speed: "—"}
		if m, err := store.NormalizeMAC(n.MAC); err == nil && mac != "" && m == mac {
			nv.Target = true
		}
		switch {
		case n.SpeedMb >= 1000 && n.SpeedMb%1000 == 0:
			nv.Speed = fmt.Sprintf("%d Gb/s", n.SpeedMb/1000)
		case n.SpeedMb > 0:
			nv.Speed = fmt.Sprintf("%d Mb/s", n.SpeedMb)
		}
		v.NICs = append(v.NICs, nv)
	}
	var s []string
	if hw.CPU.Cores > 0 || hw.CPU.Model != "" {
		s = append(s, strings.TrimSpace(fmt.Sprintf("%s %d cores", hw.CPU.Model, hw.CPU.Cores)))
	}
	if hw.Memory.TotalBytes > 0 {
		s = append(s, v.MemTotal+" RAM")
	}
	if len(hw.Disks) > 0 {
		sizes := make([]string, 0, len(v.Disks))
		for _, d := range v.Disks {
			sizes = append(sizes, d.Size)
		}
		s = append(s, fmt.Sprintf("%s (%s)", plural(len(hw.Disks), "disk", "disks"), strings.Join(sizes, ", ")))
	}
	if n := len(hw.MissingDrivers); n > 0 {
		s = append(s, plural(n, "device", "devices")+" without driver")
	}
	v.Summary = strings.Join(s, " · ")
	return v
}

// planText states the task's stored plan for a person, verbatim: the page never
// recomputes a disk choice (contract.MakePlan did, once, and the agent enforces what
// it decided). It marks the planned disk in hw.Disks. refused says approval is
// impossible (the text says why).
func planText(hw *hardwareView, p *contract.Plan) (disk, image string, refused bool) {
	if p == nil {
		return "no plan yet: the machine has not reported its hardware", "", true
	}
	if img := p.Image; img != nil {
		image = fmt.Sprintf("%s (%s, sha256 %s)", img.OSRef, humanBytes(img.Size), shortDigest(img.SHA256))
	}
	if !p.Approvable() {
		return p.Refused, image, true
	}
	d := p.Disk
	parts := []string{d.Path, humanBytes(d.SizeBytes)}
	if d.Model != "" {
		parts = append(parts, d.Model)
	}
	if d.Serial != "" {
		parts = append(parts, "serial "+d.Serial)
	}
	if d.WWN != "" {
		parts = append(parts, "WWN "+d.WWN)
	}
	for i := range hw.Disks {
		if hw.Disks[i].Name == d.Name {
			hw.Disks[i].Candidate = true
		}
	}
	return strings.Join(parts, ", "), image, false
}

// shortDigest is the first 12 hex digits: enough for a person to compare.
func shortDigest(d string) string {
	if len(d) > 12 {
		return d[:12]
	}
	return d
}

func describeHint(h *contract.DiskHint) string {
	if h == nil {
		return ""
	}
	var s []string
	for _, kv := range [][2]string{{"serial", h.Serial}, {"wwn", h.WWN}, {"by-path", h.ByPath}} {
		if kv[1] != "" {
			s = append(s, kv[0]+" "+kv[1])
		}
	}
	if h.MinBytes > 0 {
		s = append(s, "at least "+humanBytes(h.MinBytes))
	}
	if h.MaxBytes > 0 {
		s = append(s, "at most "+humanBytes(h.MaxBytes))
	}
	return strings.Join(s, ", ")
}

func humanBytes(n int64) string {
	if n <= 0 {
		return "—"
	}
	const unit = 1000 // disks are sold in decimal units; say what the label says
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	v := float64(n) / float64(div)
	if v >= 100 {
		return fmt.Sprintf("%.0f %cB", v, "kMGTPE"[exp])
	}
	return fmt.Sprintf("%.1f %cB", v, "kMGTPE"[exp])
}

func humanDuration(d time.Duration) string {
	d = d.Round(time.Second)
	switch {
	case d < time.Second:
		return "< 1 s"
	case d < time.Minute:
		return fmt.Sprintf("%d s", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%d min %02d s", int(d.Minutes()), int(d.Seconds())%60)
	default:
		return fmt.Sprintf("%d h %02d min", int(d.Hours()), int(math.Mod(d.Minutes(), 60)))
	}
}

// humanIEC is for memory, which is sized in powers of two.
func humanIEC(n int64) string {
	if n <= 0 {
		return "—"
	}
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	v := float64(n) / float64(div)
	if v == math.Trunc(v) || v >= 100 {
		return fmt.Sprintf("%.0f %ciB", v, "KMGTPE"[exp])
	}
	return fmt.Sprintf("%.1f %ciB", v, "KMGTPE"[exp])
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}
