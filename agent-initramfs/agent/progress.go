package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"lpmos.dev/lpmos/contract"
)

// Progress sends progress for one task. Update throttles to about once a second and
// never blocks the install on a lost update (the next one carries the newer state);
// the final statuses (Complete, Fail, Aborted) are resent with backoff until the
// appliance acknowledges them or finalFor runs out, so an appliance restarted during an
// install still learns how it ended.
type Progress struct {
	api      *contract.Client
	mac      string
	taskID   string
	log      *slog.Logger
	finalFor time.Duration
	// onRefused is called when the appliance refuses an update with 409 (the task is
	// no longer approved or installing: cancelled) or 401 (the agent token was reset),
	// so the install must stop.
	onRefused func(error)

	mu    sync.Mutex
	last  time.Time
	bytes int64 // bytes written so far, for the cancelled record
	total int64
}

// Send posts one update now.
func (p *Progress) Send(ctx context.Context, pr contract.Progress) error {
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return p.api.Progress(sctx, contract.ProgressRequest{MACAddress: p.mac, TaskID: p.taskID, Progress: pr})
}

// Update posts r unless an update went out less than a second ago (force overrides).
// Errors are logged: a lost progress update must not stop an install; a refusal (409)
// does, through onRefused.
func (p *Progress) Update(ctx context.Context, r contract.Progress, force bool) {
	p.mu.Lock()
	if r.BytesDone > 0 {
		p.bytes, p.total = r.BytesDone, r.BytesTotal
	}
	if !force && time.Since(p.last) < time.Second {
		p.mu.Unlock()
		return
	}
	p.last = time.Now()
	p.mu.Unlock()
	err := p.Send(ctx, r)
	var se *contract.StatusError
	switch {
	case err == nil:
	case errors.As(err, &se) && (se.Code == http.StatusConflict || se.Code == http.StatusUnauthorized) && p.onRefused != nil:
		p.onRefused(err)
	default:
		p.log.Warn("progress update failed", "stage", r.Stage, "err", err)
	}
}

// BytesDone is how much of the image the install had written at its last update.
func (p *Progress) BytesDone() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.bytes
}

// Complete reports the install completed and returns once the appliance acknowledged
// it; the machine must not reboot into its disk before (the task would stay
// installing and the next PXE boot would find it so).
func (p *Progress) Complete(ctx context.Context) error {
	return p.final(ctx, contract.Progress{Stage: contract.StageCompleted, Percentage: 100, Message: "installation complete"})
}

// Fail reports the task failed with reason and returns reason as an error (with the
// delivery failure, if the appliance never acknowledged it).
func (p *Progress) Fail(ctx context.Context, reason string) error {
	err := errors.New(reason)
	if ferr := p.final(ctx, contract.Progress{Stage: contract.StageFailed, Message: reason}); ferr != nil {
		p.log.Error("could not report failure", "reason", reason, "err", ferr)
		return errors.Join(err, ferr)
	}
	return err
}

// Aborted records how far a cancelled install wrote.
func (p *Progress) Aborted(ctx context.Context) error {
	p.mu.Lock()
	done, total := p.bytes, p.total
	p.mu.Unlock()
	pct := 0.0
	if total > 0 {
		pct = float64(done) * 100 / float64(total)
	}
	return p.final(ctx, contract.Progress{Stage: contract.StageCancelled, Percentage: pct, BytesDone: done, BytesTotal: total,
		Message: fmt.Sprintf("stopped after writing %d of %d bytes: the disk is partially written", done, total)})
}

// final sends a last status until acknowledged: backoff from 1 s doubling to 30 s,
// for at most finalFor. A 4xx other than 408/429 is an answer, not an outage: it
// ends the retries with that error.
func (p *Progress) final(ctx context.Context, pr contract.Progress) error {
	ctx = context.WithoutCancel(ctx) // a signal must not lose the outcome of an install
	deadline := time.Now().Add(p.finalFor)
	wait := time.Second
	for attempt := 1; ; attempt++ {
		err := p.Send(ctx, pr)
		var se *contract.StatusError
		switch {
		case err == nil:
			if attempt > 1 {
				p.log.Info("final status acknowledged", "stage", pr.Stage, "attempts", attempt)
			}
			return nil
		case errors.As(err, &se) && se.Code/100 == 4 && se.Code != http.StatusRequestTimeout && se.Code != http.StatusTooManyRequests:
			return fmt.Errorf("report %s: refused: %w", pr.Stage, err)
		case time.Now().Add(wait).After(deadline):
			return fmt.Errorf("report %s: not acknowledged within %s (%d attempts): %w", pr.Stage, p.finalFor, attempt, err)
		}
		p.log.Warn("final status not acknowledged yet; retrying", "stage", pr.Stage, "attempt", attempt, "in", wait, "err", err)
		if err := sleep(ctx, wait); err != nil {
			return err
		}
		wait = min(wait*2, 30*time.Second)
	}
}
