// Package contract is the wire contract every LPMOS component shares: the regional
// API's requests and answers (report, approval, progress and its stages), the hardware
// report, the OS and image references, the disk hint and the one disk-choice rule, and
// a client for the regional API. store, appliance, control and the agent all import
// it; it imports nothing of theirs (nor etcd), so the agent stays small and no binary
// owns what the others speak.
package contract

import "encoding/json"

// ReportRequest is POST /api/report.
type ReportRequest struct {
	MACAddress string          `json:"mac_address"`
	Hardware   json.RawMessage `json:"hardware"`
}

// Response is the common reply shape: {status:"ok", task_id} or {status:"error", message, retry_after}.
type Response struct {
	Status     string `json:"status"`
	TaskID     string `json:"task_id,omitempty"`
	Message    string `json:"message,omitempty"`
	RetryAfter int    `json:"retry_after,omitempty"`
	// Warning is set when the request succeeded but something needs attention.
	Warning string `json:"warning,omitempty"`
	// AgentToken is the task's agent token, in the answer to the first matched
	// POST /api/report of the task only (and the first after a reset). The agent
	// sends it as "Authorization: Bearer <token>" on every call after the report.
	AgentToken string `json:"agent_token,omitempty"`
}

// ApprovalResponse is GET /api/approval/{mac}.
type ApprovalResponse struct {
	Status     string `json:"status"` // "ok"
	TaskID     string `json:"task_id"`
	TaskStatus string `json:"task_status"`
	Approved   bool   `json:"approved"`
	OSRef
	// Plan is the approved plan (set once approved): the agent writes only onto its
	// disk, and only the image whose sha256 it names.
	Plan *Plan `json:"plan,omitempty"`
	// Image is where to fetch the plan's image, set once approved and while the
	// region's catalog still serves the approved bytes.
	Image *Image `json:"image,omitempty"`
	// Disk narrows the disk choice when the task names one.
	Disk    *DiskHint `json:"disk,omitempty"`
	Message string    `json:"message,omitempty"`
}

// Image describes an OS image to stream.
type Image struct {
	URL    string `json:"url"`
	Format string `json:"format"`         // raw, gz, zst, xz
	Size   int64  `json:"size,omitempty"` // decompressed bytes
	SHA256 string `json:"sha256,omitempty"`
}

// DiskHint names the disk to install on (the task's disk selector); empty fields do
// not constrain.
type DiskHint struct {
	Serial   string `json:"serial,omitempty"`
	WWN      string `json:"wwn,omitempty"`
	ByPath   string `json:"by_path,omitempty"`
	MinBytes int64  `json:"min_bytes,omitempty"`
	MaxBytes int64  `json:"max_bytes,omitempty"`
}

// ProgressRequest is POST /api/progress: the sample plus whose it is.
type ProgressRequest struct {
	MACAddress string `json:"mac_address"`
	TaskID     string `json:"task_id"`
	Progress
}

// Health is GET /api/health.
type Health struct {
	Status        string `json:"status"` // "ok" or "degraded"
	RegionLabel   string `json:"region_label"`
	EtcdReachable bool   `json:"etcd_reachable"`
	Version       string `json:"version"`
	EmbeddedEtcd  bool   `json:"embedded_etcd"`
	// EtcdAlarms are etcd's raised alarms (NOSPACE: writes refused); degraded.
	EtcdAlarms []string `json:"etcd_alarms,omitempty"`
	Message    string   `json:"message,omitempty"`
}
