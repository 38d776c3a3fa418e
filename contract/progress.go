package contract

import "time"

// Stage is a step of an install as the agent reports it.
type Stage string

// The stages, in the order an install passes them. Completed and failed end the task.
const (
	StagePreparing   Stage = "preparing"
	StageDownloading Stage = "downloading"
	StageWriting     Stage = "writing"
	StageVerifying   Stage = "verifying"
	StageRebooting   Stage = "rebooting"
	StageCompleted   Stage = "completed"
	StageFailed      Stage = "failed"
	// StageCancelled is the agent's last word on a task cancelled during its install:
	// how far it wrote before it stopped. Accepted only for a cancelled task.
	StageCancelled Stage = "cancelled"
)

// Stages lists every stage the regional API accepts.
var Stages = []Stage{StagePreparing, StageDownloading, StageWriting, StageVerifying, StageRebooting, StageCompleted, StageFailed, StageCancelled}

// Valid reports whether s is a known stage.
func (s Stage) Valid() bool {
	for _, v := range Stages {
		if v == s {
			return true
		}
	}
	return false
}

// Progress is one progress sample: what the agent posts (inside ProgressRequest) and
// what etcd keeps at .../{task_id}/progress (with UpdatedAt set by the appliance).
type Progress struct {
	Stage      Stage     `json:"stage"`
	Percentage float64   `json:"percentage"`
	Message    string    `json:"message,omitempty"`
	BytesDone  int64     `json:"bytes_done,omitempty"`
	BytesTotal int64     `json:"bytes_total,omitempty"`
	RateBps    float64   `json:"rate_bps,omitempty"`
	ETASeconds float64   `json:"eta_seconds,omitempty"`
	UpdatedAt  time.Time `json:"updated_at,omitzero"`
}
