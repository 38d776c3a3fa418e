package contract

import (
	"slices"
	"time"
)

// Stage is a step of an install as the agent reports it.
type Stage string

// The stages an install passes, in order.
const (
	StagePreparing   Stage = "preparing"
	StageDownloading Stage = "downloading"
	StageWriting     Stage = "writing"
	StageVerifying   Stage = "verifying"
	StageRebooting   Stage = "rebooting"
)

// The stages that end an install: completed and failed end the task; cancelled is the
// agent's last word on a task cancelled during its install (how far it wrote before it
// stopped), accepted only for a cancelled task.
const (
	StageCompleted Stage = "completed"
	StageFailed    Stage = "failed"
	StageCancelled Stage = "cancelled"
)

// Stages lists every stage the regional API accepts.
var Stages = []Stage{StagePreparing, StageDownloading, StageWriting, StageVerifying, StageRebooting, StageCompleted, StageFailed, StageCancelled}

// Valid reports whether s is a known stage.
func (s Stage) Valid() bool { return slices.Contains(Stages, s) }

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
