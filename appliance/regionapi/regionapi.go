// Package regionapi holds the regional API's wire types and a client for it. The agent
// speaks only this API (never etcd), so this package imports nothing of etcd or store.
package regionapi

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
}

// ApprovalResponse is GET /api/approval/{mac}.
type ApprovalResponse struct {
	Status     string `json:"status"` // "ok"
	TaskID     string `json:"task_id"`
	TaskStatus string `json:"task_status"`
	Approved   bool   `json:"approved"`
	OSType     string `json:"os_type"`
	OSVersion  string `json:"os_version"`
	// Image is what to install, set once approved and when the region's catalog has it.
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

// DiskHint mirrors the task's disk selector.
type DiskHint struct {
	Serial   string `json:"serial,omitempty"`
	WWN      string `json:"wwn,omitempty"`
	ByPath   string `json:"by_path,omitempty"`
	MinBytes int64  `json:"min_bytes,omitempty"`
	MaxBytes int64  `json:"max_bytes,omitempty"`
}

// ProgressRequest is POST /api/progress.
type ProgressRequest struct {
	MACAddress string  `json:"mac_address"`
	TaskID     string  `json:"task_id"`
	Stage      string  `json:"stage"`
	Percentage float64 `json:"percentage"`
	Message    string  `json:"message,omitempty"`
	BytesDone  int64   `json:"bytes_done,omitempty"`
	BytesTotal int64   `json:"bytes_total,omitempty"`
	RateBps    float64 `json:"rate_bps,omitempty"`
	ETASeconds float64 `json:"eta_seconds,omitempty"`
}

// Health is GET /api/health.
type Health struct {
	Status        string `json:"status"` // "ok" or "degraded"
	RegionLabel   string `json:"region_label"`
	EtcdReachable bool   `json:"etcd_reachable"`
	Version       string `json:"version"`
	EmbeddedEtcd  bool   `json:"embedded_etcd"`
}
