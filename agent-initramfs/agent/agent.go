// Package agent is what runs on the machine being provisioned: inventory the hardware,
// report it to the regional appliance, wait for a person's approval, install the
// image, report progress. It speaks only the regional API (never etcd), and runs both
// inside the initramfs and on an ordinary host (installing into a file).
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"lpmos.dev/lpmos/contract"
)

// Config drives one agent run.
type Config struct {
	RegionalURL string
	// MAC to report as; empty picks the primary NIC's.
	MAC string
	// AgentToken is the task's agent token from the boot path (lpmos.token=, or
	// --agent-token on a host): used when the report's answer carries none (only the
	// first matched report of a task gets it; an agent that restarted gets none).
	AgentToken string
	// Target redirects the write into this file or device (host mode, development):
	// the approved disk must still be found in the inventory, but its bytes are left
	// alone. Empty writes the approved disk itself.
	Target string
	// MaxAttempts bounds reports answered 404 (no task yet) or not answered at all. A
	// 503 with retry_after (the appliance is up, its store is not) spends no attempt:
	// the agent waits as long as the outage lasts.
	MaxAttempts int
	// RetryUnit is the length of one retry_after unit (a second; tests shorten it).
	RetryUnit time.Duration
	// PollInterval is how often approval is asked for.
	PollInterval time.Duration
	// CompletionTimeout bounds how long the final status (completed, failed,
	// cancelled) is resent while the appliance does not acknowledge it. Default 30 min.
	CompletionTimeout time.Duration
	// Inventory collects the hardware (ghw by default; tests inject a fixed report).
	// It runs twice: for the report, and again right before writing to find the
	// approved disk by its identities.
	Inventory func() (contract.Hardware, error)
	// Install writes the approved image; nil means WriteImage.
	Install InstallFunc
	HTTP    *http.Client
	Log     *slog.Logger
}

// InstallFunc writes the job's image and reports progress through p. It must stop
// when ctx ends (a cancel).
type InstallFunc func(ctx context.Context, job Job, p *Progress) error

// Job is an approved install, checked against this machine: the disk found by the
// plan's identities and the image the plan names.
type Job struct {
	TaskID string
	Plan   contract.Plan
	Image  contract.Image
	Disk   contract.Disk // the approved disk as found in the fresh inventory
	Target string        // where the bytes go: Disk.Path, or Config.Target in host mode
	// Seed is the NoCloud seed's files, fetched before a byte is written, when the
	// plan places a seed (Plan.Seed).
	Seed map[string][]byte
}

func (c *Config) defaults() {
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 10
	}
	if c.RetryUnit <= 0 {
		c.RetryUnit = time.Second
	}
	if c.PollInterval <= 0 {
		c.PollInterval = 5 * time.Second
	}
	if c.CompletionTimeout <= 0 {
		c.CompletionTimeout = 30 * time.Minute
	}
	if c.Inventory == nil {
		c.Inventory = Inventory
	}
	if c.HTTP == nil {
		c.HTTP = &http.Client{Timeout: 30 * time.Second}
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
}

var (
	// ErrNoTask is returned when every report attempt found no task for this machine.
	ErrNoTask = errors.New("no task for this machine")
	// ErrNoToken is an approved task this agent cannot carry out: it holds no agent
	// token (it restarted after the first report and booted without lpmos.token=).
	ErrNoToken = errors.New("no agent token")
	// ErrTokenRefused is the appliance refusing this agent's token (reset by an
	// operator, or another task's) when a new report brought no new one.
	ErrTokenRefused = errors.New("agent token refused")
	// ErrCancelled is an install stopped because its task was cancelled (or lost its
	// approval) while it ran: the disk is partially written.
	ErrCancelled = errors.New("the task was cancelled during the install")
)

// Run performs the whole agent lifecycle once.
func Run(ctx context.Context, cfg Config) error {
	cfg.defaults()
	if cfg.RegionalURL == "" {
		return errors.New("--regional-url (or REGIONAL_CLIENT_URL) is required, e.g. http://localhost:8081")
	}
	api := &contract.Client{BaseURL: cfg.RegionalURL, HTTP: cfg.HTTP}
	hw, err := cfg.Inventory()
	if err != nil {
		return fmt.Errorf("inventory: %w", err)
	}
	mac := cfg.MAC
	if mac == "" {
		mac = PrimaryMAC(hw.NICs)
	}
	if mac == "" {
		return errors.New("no network interface with a MAC address: pass --mac")
	}
	log := cfg.Log.With("mac", mac)

	resp, err := report(ctx, cfg, api, log, mac, hw)
	if err != nil {
		return err
	}
	taskID := resp.TaskID
	// Every call after the report carries the task's agent token: the report's, else
	// the boot path's (an agent that restarted gets none from its second report).
	api.Token = resp.AgentToken
	if api.Token == "" {
		api.Token = cfg.AgentToken
	}
	log.Info("hardware report accepted", "task", taskID, "agent_token", tokenSource(resp.AgentToken, cfg.AgentToken))

	// reissue reports again after a refused token: a reset's new token comes with the
	// next matched report.
	reissue := func() bool {
		r, err := api.Report(ctx, contract.ReportRequest{MACAddress: mac, Hardware: mustJSON(hw)})
		if err != nil || r.AgentToken == "" || r.TaskID != taskID {
			return false
		}
		log.Info("agent token reissued", "task", taskID)
		api.Token = r.AgentToken
		return true
	}
	appr, err := waitApproval(ctx, cfg, api, log, mac, taskID, reissue)
	if err != nil {
		return err
	}
	p := &Progress{api: api, mac: mac, taskID: taskID, log: log, finalFor: cfg.CompletionTimeout}
	job, err := checkApproval(cfg, appr)
	if err != nil {
		// Nothing was written: the task fails with the reason, for the operator.
		return p.Fail(ctx, err.Error())
	}
	if job.Plan.Seed != nil {
		if job.Seed, err = api.SeedFilesFrom(ctx, taskID); err != nil {
			return p.Fail(ctx, fmt.Sprintf("seed_unavailable: fetch the cloud-init seed: %v: nothing written", err))
		}
	}
	install := cfg.Install
	if install == nil {
		install = WriteImage
	}
	log.Info("approved: installing", "task", taskID, "image", job.Image.URL, "disk", contract.DescribeDisk(job.Disk), "target", job.Target)

	// While it writes, the agent watches its task: a cancel (or a lost approval)
	// stops the write within seconds, through the long poll or a refused progress post.
	ictx, stop := context.WithCancelCause(ctx)
	p.onRefused = func(err error) { stop(fmt.Errorf("%w: progress refused: %v", ErrCancelled, err)) }
	watched := make(chan struct{})
	go func() { defer close(watched); watchTask(ictx, api, log, mac, taskID, stop) }()
	err = install(ictx, job, p)
	cause := context.Cause(ictx)
	stop(nil)
	<-watched
	switch {
	case errors.Is(cause, ErrCancelled) && ctx.Err() == nil:
		log.Warn("install stopped: the task was cancelled", "reason", cause, "bytes_written", p.BytesDone())
		return errors.Join(cause, p.Aborted(ctx))
	case err != nil:
		return errors.Join(fmt.Errorf("install: %w", err), p.Fail(ctx, err.Error()))
	}
	if err := p.Complete(ctx); err != nil {
		return err
	}
	log.Info("installation complete", "task", taskID)
	return nil
}

// checkApproval turns an approval into a job, or says why it cannot be carried out
// here: the plan must be there, the image must be the one the plan names, and the
// approved disk must be found (by WWN or serial, else path, size and model) in a fresh
// inventory and still be safe to write. The agent never chooses a disk itself.
func checkApproval(cfg Config, a contract.ApprovalResponse) (Job, error) {
	switch {
	case a.Plan == nil || a.Plan.Disk == nil || a.Plan.Image == nil:
		return Job{}, errors.New("approved without a plan: nothing written")
	case a.Image == nil:
		return Job{}, fmt.Errorf("image not available: %s", a.Message)
	case a.Image.SHA256 != a.Plan.Image.SHA256 || a.Image.Size != a.Plan.Image.Size:
		return Job{}, fmt.Errorf("image_mismatch: the appliance offers sha256 %s (%d bytes), the approved plan names %s (%d bytes): nothing written",
			a.Image.SHA256, a.Image.Size, a.Plan.Image.SHA256, a.Plan.Image.Size)
	}
	hw, err := cfg.Inventory()
	if err != nil {
		return Job{}, fmt.Errorf("inventory before writing: %w", err)
	}
	disk, err := contract.FindPlannedDisk(hw.Disks, *a.Plan.Disk, a.Plan.NeedBytes(), hw.BootDisk)
	if err != nil {
		return Job{}, fmt.Errorf("disk_mismatch: %w: nothing written", err)
	}
	target := disk.Path
	if cfg.Target != "" {
		target = cfg.Target
	}
	return Job{TaskID: a.TaskID, Plan: *a.Plan, Image: *a.Image, Disk: disk, Target: target}, nil
}

// watchTask long-polls the task while the install runs and stops it (stop with
// ErrCancelled) as soon as the task is no longer approved or installing: cancelled,
// back to review, or another task. An unreachable appliance stops nothing.
func watchTask(ctx context.Context, api *contract.Client, log *slog.Logger, mac, taskID string, stop context.CancelCauseFunc) {
	status := ""
	for ctx.Err() == nil {
		a, err := api.ApprovalWhile(ctx, mac, approvalWait, status)
		var se *contract.StatusError
		switch {
		case ctx.Err() != nil:
			return
		case errors.As(err, &se) && (se.Code == http.StatusNotFound || se.Code == http.StatusUnauthorized):
			stop(fmt.Errorf("%w: %s", ErrCancelled, se.Body.Message))
			return
		case err == nil && (a.TaskID != taskID || !a.Approved):
			stop(fmt.Errorf("%w: task %s is now %s", ErrCancelled, a.TaskID, a.TaskStatus))
			return
		case err == nil:
			status = a.TaskStatus
			continue
		}
		log.Debug("task watch: appliance unreachable, still installing", "err", err)
		if sleep(ctx, time.Second) != nil {
			return
		}
	}
}

// report posts the hardware until a task matches, honouring the appliance's
// retry_after, at most MaxAttempts times.
func report(ctx context.Context, cfg Config, api *contract.Client, log *slog.Logger, mac string, hw contract.Hardware) (contract.Response, error) {
	body, err := json.Marshal(hw)
	if err != nil {
		return contract.Response{}, err
	}
	var last error
	for attempt := 1; attempt <= cfg.MaxAttempts; attempt++ {
		resp, err := api.Report(ctx, contract.ReportRequest{MACAddress: mac, Hardware: body})
		if err == nil {
			return resp, nil
		}
		last = err
		wait := 10
		var se *contract.StatusError
		switch {
		case errors.As(err, &se) && se.Code == http.StatusServiceUnavailable && se.Body.RetryAfter > 0:
			// The appliance answers but its store does not (etcd electing a leader,
			// or quorum lost): not this machine's fault, no attempt spent.
			attempt--
			wait = se.Body.RetryAfter
			log.Warn("appliance's store unavailable; waiting", "retry_after", wait, "message", se.Body.Message)
		case errors.As(err, &se) && se.Code == http.StatusNotFound:
			if se.Body.RetryAfter > 0 {
				wait = se.Body.RetryAfter
			}
			log.Warn("no task yet", "attempt", attempt, "max_attempts", cfg.MaxAttempts, "retry_after", wait, "message", se.Body.Message)
		case errors.As(err, &se) && se.Code/100 == 4 && se.Code != http.StatusTooManyRequests: // 429: wait retry_after
			return contract.Response{}, fmt.Errorf("report refused: %w", err) // our request is wrong: retrying cannot help
		default:
			if se != nil && se.Body.RetryAfter > 0 { // 503: the appliance's store is away
				wait = se.Body.RetryAfter
			}
			log.Warn("report failed", "attempt", attempt, "max_attempts", cfg.MaxAttempts, "retry_after", wait, "err", err)
		}
		if attempt == cfg.MaxAttempts {
			break
		}
		if err := sleep(ctx, time.Duration(wait)*cfg.RetryUnit); err != nil {
			return contract.Response{}, err
		}
	}
	return contract.Response{}, fmt.Errorf("%w: giving up after %d attempts (MAC %s): %v", ErrNoTask, cfg.MaxAttempts, mac, last)
}

// approvalWait is how long the appliance may hold an approval poll (long poll): the
// agent learns of an approval at once. It stays below the HTTP client's timeout.
const approvalWait = 20 * time.Second

func waitApproval(ctx context.Context, cfg Config, api *contract.Client, log *slog.Logger, mac, taskID string, reissue func() bool) (contract.ApprovalResponse, error) {
	logged, reissued := false, false
	for {
		start := time.Now()
		a, err := api.Approval(ctx, mac, approvalWait)
		var se *contract.StatusError
		switch {
		case err == nil && a.TaskID != taskID:
			// Never install a task other than the one this hardware was reported for.
			return a, fmt.Errorf("the open task for %s is %s, not %s (the one reported for): report again", mac, a.TaskID, taskID)
		case err == nil && a.Approved:
			return a, nil
		case err == nil && api.Token == "" && (a.TaskStatus == "approved" || a.TaskStatus == "installing"):
			// Without a token the appliance never hands out the plan. The boot script
			// carries the token while the task is approved: a reboot fetches it.
			return a, fmt.Errorf("%w: task %s is %s, but this agent restarted after its first report and booted without lpmos.token=: reboot it (the boot script now carries the token) or reset the task's agent token", ErrNoToken, taskID, a.TaskStatus)
		case errors.As(err, &se) && se.Code == http.StatusUnauthorized:
			if !reissued && reissue() {
				reissued = true
				continue
			}
			return a, fmt.Errorf("%w for task %s: %w (an operator reset it, or it belongs to another task; reset the task's agent token and let the machine report again)", ErrTokenRefused, taskID, err)
		case err == nil:
			if !logged {
				log.Info("waiting for approval", "task", a.TaskID, "status", a.TaskStatus)
				logged = true
			}
		case errors.As(err, &se) && se.Code == http.StatusNotFound:
			return a, fmt.Errorf("task is gone (cancelled or finished): %w", err)
		default:
			log.Warn("approval poll failed", "err", err)
		}
		// An appliance that held the poll has waited already; one that answered at
		// once (or failed) is asked again only after PollInterval.
		if err := sleep(ctx, cfg.PollInterval-time.Since(start)); err != nil {
			return a, err
		}
	}
}

// tokenSource says where the agent's token came from, for the log (never the token).
func tokenSource(fromReport, fromBoot string) string {
	switch {
	case fromReport != "":
		return "issued by the report"
	case fromBoot != "":
		return "from the boot path"
	}
	return "none"
}

func mustJSON(v any) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
