package store

import (
	"encoding/json"
	"net"
	"regexp"
	"strings"
	"time"

	"lpmos.dev/lpmos/contract"
)

// Metadata is the value of .../{task_id}/metadata. The seed's fields come first; the
// timestamps are kept here so the whole history of a task is one read.
type Metadata struct {
	TaskID    string `json:"task_id"`
	RegionID  string `json:"region_id"`
	TargetMAC string `json:"target_mac"`
	contract.OSRef
	Disk *contract.DiskHint `json:"disk,omitempty"`
	// The installed OS's first-boot configuration (hostname, ssh_authorized_keys,
	// user_data, network_config; store/cloudinit.go); nil: none, no seed.
	*contract.CloudInit

	CreatedAt  time.Time  `json:"created_at"`
	ReportedAt *time.Time `json:"reported_at,omitempty"`
	ApprovedAt *time.Time `json:"approved_at,omitempty"`
	StartedAt  *time.Time `json:"started_at,omitempty"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	PlannedAt  *time.Time `json:"planned_at,omitempty"`
	// Error is why the task failed or was cancelled.
	Error string `json:"error,omitempty"`
	// Review says why a task came back to pending_approval after an approval (the
	// hardware changed, the machine restarted mid-install): a new approval is needed.
	Review string `json:"review,omitempty"`
}

// Task is everything etcd holds about one task.
type Task struct {
	Metadata
	Status   Status             `json:"status"`
	Hardware json.RawMessage    `json:"hardware,omitempty"`
	Progress *contract.Progress `json:"progress,omitempty"`
	Approval *Approval          `json:"approval,omitempty"`
	// Plan is the install decided from Hardware (contract.MakePlan), kept at
	// .../{task_id}/plan beside the v2.1 keys.
	Plan *contract.Plan `json:"plan,omitempty"`
	// AgentToken is the task's agent token record (its hash stays inside store).
	AgentToken *AgentToken `json:"agent_token,omitempty"`
}

// Approval is the value of .../approval: who approved what, exactly. The plan's digest,
// the disk's identities and the image's sha256 are copied in so the record stands on
// its own in an audit.
type Approval struct {
	Status      string    `json:"status"` // "approved"
	ApprovedBy  string    `json:"approved_by,omitempty"`
	ApprovedAt  time.Time `json:"approved_at"`
	PlanDigest  string    `json:"plan_digest"`
	DiskPath    string    `json:"disk_path,omitempty"`
	DiskSerial  string    `json:"disk_serial,omitempty"`
	DiskWWN     string    `json:"disk_wwn,omitempty"`
	ImageSHA256 string    `json:"image_sha256"`
}

// UnmatchedReport is the value of /os/unmatched_reports/{region}/{timestamp}-{mac}.
type UnmatchedReport struct {
	ID         string          `json:"id"`
	MACAddress string          `json:"mac_address"`
	Region     string          `json:"region"`
	Hardware   json.RawMessage `json:"hardware,omitempty"`
	ReceivedAt time.Time       `json:"received_at"`
	Error      string          `json:"error"`
}

// Heartbeat is the value of /os/region/{region}/heartbeat (bound to a lease).
type Heartbeat struct {
	Region    string    `json:"region"`
	Timestamp time.Time `json:"timestamp"`
	APIURL    string    `json:"api_url,omitempty"`
	Version   string    `json:"version,omitempty"`
	// Images lists the region's catalog, so the control plane can warn about a task
	// for an OS the region cannot install.
	Images []contract.ImageRef `json:"images"`
}

// Region is a region as the control plane sees it.
type Region struct {
	Name      string         `json:"region"`
	Online    bool           `json:"online"`
	Status    string         `json:"status"` // the status key's value, "" if never written
	Heartbeat *Heartbeat     `json:"heartbeat,omitempty"`
	Counts    map[Status]int `json:"counts"`
	Unmatched int            `json:"unmatched"`
}

var regionRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidateRegion checks a region label: [a-z0-9-]+, at most 63 characters, no leading
// or trailing hyphen (it becomes an etcd path segment and a log label).
func ValidateRegion(r string) error {
	if r == "" {
		return invalid("region_id", "is required")
	}
	if !regionRE.MatchString(r) {
		return invalid("region_id", "%q must match [a-z0-9-]+ (at most 63 characters, no leading or trailing '-')", r)
	}
	return nil
}

// NormalizeMAC parses a 48-bit MAC in any common notation and returns it lower-case
// with colons, the form every key and comparison uses (matching is case-insensitive).
func NormalizeMAC(s string) (string, error) { return normalizeMAC("mac_address", s) }

// normalizeMAC is NormalizeMAC with the name of the field the MAC came in.
func normalizeMAC(field, s string) (string, error) {
	s = strings.TrimSpace(s)
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return "", invalid(field, "%q is not a MAC address like 00:1a:2b:3c:4d:5e", s)
	}
	return hw.String(), nil
}
