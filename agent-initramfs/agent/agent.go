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
	// Target is where the image goes: a file on a host (host mode) or a block device.
	Target string
	// MaxAttempts bounds reports answered 404 (no task yet) or not answered at all.
	MaxAttempts int
	// RetryUnit is the length of one retry_after unit (a second; tests shorten it).
	RetryUnit time.Duration
	// PollInterval is how often approval is asked for.
	PollInterval time.Duration
	// Inventory collects the hardware (ghw by default; tests inject a fixed report).
	Inventory func() (contract.Hardware, error)
	// Install writes the approved image; nil means WriteImage.
	Install InstallFunc
	HTTP    *http.Client
	Log     *slog.Logger
}

// InstallFunc writes img for the task and reports progress through p.
type InstallFunc func(ctx context.Context, job Job, p *Progress) error

// Job is what the appliance approved.
type Job struct {
	TaskID   string
	Image    contract.Image
	Disk     *contract.DiskHint
	Hardware contract.Hardware
	Target   string
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

// ErrNoTask is returned when every report attempt found no task for this machine.
var ErrNoTask = errors.New("no task for this machine")

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

	taskID, err := report(ctx, cfg, api, log, mac, hw)
	if err != nil {
		return err
	}
	log.Info("hardware report accepted", "task", taskID)

	appr, err := waitApproval(ctx, cfg, api, log, mac)
	if err != nil {
		return err
	}
	p := &Progress{api: api, mac: mac, taskID: appr.TaskID, log: log}
	if appr.Image == nil {
		msg := "image not available: " + appr.Message
		p.Fail(ctx, msg)
		return errors.New(msg)
	}
	install := cfg.Install
	if install == nil {
		install = WriteImage
	}
	job := Job{TaskID: appr.TaskID, Image: *appr.Image, Disk: appr.Disk, Hardware: hw, Target: cfg.Target}
	log.Info("approved: installing", "task", appr.TaskID, "image", appr.Image.URL, "target", cfg.Target)
	if err := install(ctx, job, p); err != nil {
		p.Fail(ctx, err.Error())
		return fmt.Errorf("install: %w", err)
	}
	if err := p.Send(ctx, contract.Progress{Stage: contract.StageCompleted, Percentage: 100, Message: "installation complete"}); err != nil {
		return fmt.Errorf("report completion: %w", err)
	}
	log.Info("installation complete", "task", appr.TaskID)
	return nil
}

// report posts the hardware until a task matches, honouring the appliance's
// retry_after, at most MaxAttempts times.
func report(ctx context.Context, cfg Config, api *contract.Client, log *slog.Logger, mac string, hw contract.Hardware) (string, error) {
	body, err := json.Marshal(hw)
	if err != nil {
		return "", err
	}
	var last error
	for attempt := 1; attempt <= cfg.MaxAttempts; attempt++ {
		resp, err := api.Report(ctx, contract.ReportRequest{MACAddress: mac, Hardware: body})
		if err == nil {
			return resp.TaskID, nil
		}
		last = err
		wait := 10
		var se *contract.StatusError
		switch {
		case errors.As(err, &se) && se.Code == http.StatusNotFound:
			if se.Body.RetryAfter > 0 {
				wait = se.Body.RetryAfter
			}
			log.Warn("no task yet", "attempt", attempt, "max_attempts", cfg.MaxAttempts, "retry_after", wait, "message", se.Body.Message)
		case errors.As(err, &se) && se.Code/100 == 4:
			return "", fmt.Errorf("report refused: %w", err) // our request is wrong: retrying cannot help
		default:
			log.Warn("report failed", "attempt", attempt, "max_attempts", cfg.MaxAttempts, "err", err)
		}
		if attempt == cfg.MaxAttempts {
			break
		}
		if err := sleep(ctx, time.Duration(wait)*cfg.RetryUnit); err != nil {
			return "", err
		}
	}
	return "", fmt.Errorf("%w: giving up after %d attempts (MAC %s): %v", ErrNoTask, cfg.MaxAttempts, mac, last)
}

// approvalWait is how long the appliance may hold an approval poll (long poll): the
// agent learns of an approval at once. It stays below the HTTP client's timeout.
const approvalWait = 20 * time.Second

func waitApproval(ctx context.Context, cfg Config, api *contract.Client, log *slog.Logger, mac string) (contract.ApprovalResponse, error) {
	logged := false
	for {
		start := time.Now()
		a, err := api.Approval(ctx, mac, approvalWait)
		var se *contract.StatusError
		switch {
		case err == nil && a.Approved:
			return a, nil
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
