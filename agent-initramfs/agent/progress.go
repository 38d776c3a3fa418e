package agent

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"lpmos.dev/lpmos/contract"
)

// Progress sends progress for one task; Update throttles to about once a second.
type Progress struct {
	api    *contract.Client
	mac    string
	taskID string
	log    *slog.Logger

	mu   sync.Mutex
	last time.Time
}

// Send posts one update now.
func (p *Progress) Send(ctx context.Context, pr contract.Progress) error {
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return p.api.Progress(sctx, contract.ProgressRequest{MACAddress: p.mac, TaskID: p.taskID, Progress: pr})
}

// Update posts r unless an update went out less than a second ago (force overrides).
// Errors are logged: a lost progress update must not stop an install.
func (p *Progress) Update(ctx context.Context, r contract.Progress, force bool) {
	p.mu.Lock()
	if !force && time.Since(p.last) < time.Second {
		p.mu.Unlock()
		return
	}
	p.last = time.Now()
	p.mu.Unlock()
	if err := p.Send(ctx, r); err != nil {
		p.log.Warn("progress update failed", "stage", r.Stage, "err", err)
	}
}

// Fail reports the task failed with reason.
func (p *Progress) Fail(ctx context.Context, reason string) {
	ctx = context.WithoutCancel(ctx)
	if err := p.Send(ctx, contract.Progress{Stage: contract.StageFailed, Message: reason}); err != nil {
		p.log.Error("could not report failure", "reason", reason, "err", err)
	}
}
