package appliance

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/images"
	"lpmos.dev/lpmos/internal/metrics"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/httpjson"
)

// routes is the appliance's one HTTP server: the regional API and the files agents
// download. Authentication can wrap this handler later.
func (a *Appliance) routes() *http.ServeMux {
	mux := http.NewServeMux()
	h := func(f httpjson.HandlerFunc) http.HandlerFunc { return httpjson.Handle(a.log, withDeadline(f)) }
	mux.HandleFunc("POST /api/report", h(a.metrics.countReport(a.handleReport)))
	mux.HandleFunc("GET /api/approval/{mac}", h(a.handleApproval))
	mux.HandleFunc("POST /api/progress", h(a.handleProgress))
	mux.HandleFunc("GET /api/health", h(a.handleHealth))
	mux.HandleFunc("GET /nocloud/{task}/{file}", h(a.handleNoCloud))
	mux.Handle("GET /images/", a.imageStreams(a.metrics.countBytes("image", http.StripPrefix("/images", a.images.HandlerRate(a.cfg.ImageRate)))))
	// Prometheus scrapes without credentials, like the rest of the regional API; it
	// listens on loopback and the boot network only (--api-host).
	mux.Handle("GET /metrics", metrics.Handler(a.metrics.reg))
	mux.HandleFunc("/api/", h(func(w http.ResponseWriter, r *http.Request) error {
		return httpjson.Errorf(http.StatusNotFound, "no such endpoint: %s %s", r.Method, r.URL.Path)
	}))
	return mux
}

// withDeadline gives a request httpjson.RequestDeadline for its store calls (plus the
// wait of a long poll): with etcd unreachable it answers 503 with retry_after in
// seconds, never holds the agent.
func withDeadline(f httpjson.HandlerFunc) httpjson.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		d := httpjson.RequestDeadline
		if wait, err := waitParam(r); err == nil {
			d += wait
		}
		ctx, cancel := context.WithTimeout(r.Context(), d)
		defer cancel()
		return f(w, r.WithContext(ctx))
	}
}

// asAgent is ctx with the agent acting: named by its task when the request names one,
// else by the MAC it reports for, with its address (for the audit trail).
func asAgent(r *http.Request, name string) context.Context {
	return store.WithActor(r.Context(), store.Actor{Kind: store.ActorAgent, Name: name, Source: r.RemoteAddr})
}

func (a *Appliance) handleReport(w http.ResponseWriter, r *http.Request) error {
	if err := a.reports.allowSource(r, time.Now()); err != nil {
		return err
	}
	var req contract.ReportRequest
	if err := httpjson.Decode(w, r, &req); err != nil {
		return err
	}
	if req.MACAddress == "" {
		return &store.ValidationError{Field: "mac_address", Message: "is required"}
	}
	mac, err := store.NormalizeMAC(req.MACAddress)
	if err != nil {
		return err
	}
	if len(req.Hardware) == 0 || req.Hardware[0] != '{' {
		return &store.ValidationError{Field: "hardware", Message: "is required and must be a JSON object"}
	}
	if len(req.Hardware) > contract.MaxHardwareBytes {
		return httpjson.Errorf(http.StatusRequestEntityTooLarge, "hardware report of %d bytes is over the %d-byte cap", len(req.Hardware), contract.MaxHardwareBytes)
	}
	if err := a.reports.allowMAC(mac, time.Now()); err != nil {
		return err
	}
	a.log.Info("Received hardware report from agent: " + mac)
	res, err := timeStore(a.metrics, "report", func() (store.ReportResult, error) {
		return a.store.ReportIssuing(asAgent(r, mac), a.cfg.Label, mac, req.Hardware, a.mintToken)
	})
	if err != nil {
		return err
	}
	if !res.Matched {
		a.log.Info(fmt.Sprintf("Failed to find task for MAC %s: no task found", mac), "unmatched_report", res.Unmatched.ID)
		return &httpjson.Error{
			Code:    http.StatusNotFound,
			Message: fmt.Sprintf("No task found for MAC %s in region %s", mac, a.cfg.Label),
			Extra:   map[string]any{"retry_after": a.cfg.RetryAfter},
		}
	}
	a.log.Info(fmt.Sprintf("Found matching task %s for MAC %s", res.Task.TaskID, mac))
	a.log.Info("Hardware report stored for task " + res.Task.TaskID)
	if res.AgentToken != "" {
		a.log.Info("Agent token issued for task "+res.Task.TaskID, "generation", res.Task.AgentToken.Generation)
	}
	httpjson.Write(w, http.StatusOK, contract.Response{Status: "ok", TaskID: res.Task.TaskID, AgentToken: res.AgentToken})
	return nil
}

// handleApproval answers an agent's approval poll. Without a token it says only the
// task's id and status, never approved (no plan, image or disk); a token that is not
// the open task's is refused (401, logged, audited).
func (a *Appliance) handleApproval(w http.ResponseWriter, r *http.Request) error {
	mac, err := store.NormalizeMAC(r.PathValue("mac"))
	if err != nil {
		return err
	}
	wait, err := waitParam(r)
	if err != nil {
		return err
	}
	// ?status=S holds the poll while the task is S (the agent watching its install
	// for a cancel); without it the poll holds only until the task is approved.
	heldWhile := store.Status(r.URL.Query().Get("status"))
	if heldWhile != "" && !heldWhile.Valid() {
		return &store.ValidationError{Field: "status", Message: fmt.Sprintf("%q is not a task status", heldWhile)}
	}
	tok := bearer(r)
	t, err := a.openTaskForMAC(r.Context(), mac)
	if err == nil && tok != "" {
		if aerr := authorize(&t, tok); aerr != nil {
			return a.reject(w, r, t.TaskID, mac, aerr.(*errBadToken).reason)
		}
	}
	hold := heldWhile == t.Status || (heldWhile == "" && !t.Status.Approved())
	if err == nil && wait > 0 && hold {
		// Long poll: answer as soon as the status changes (approval, cancel), or
		// when the wait is over, whichever comes first.
		ctx, cancel := context.WithTimeout(r.Context(), wait)
		werr := a.store.WaitStatus(ctx, a.cfg.Label, t.TaskID, t.Status)
		cancel()
		if werr != nil && ctx.Err() == nil {
			return werr
		}
		t, err = a.openTaskForMAC(r.Context(), mac)
	}
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return httpjson.Errorf(http.StatusNotFound, "No open task for MAC %s in region %s", mac, a.cfg.Label)
		}
		return err
	}
	if tok == "" {
		// Only what the boot script shows anyone anyway: never the plan, image or disk.
		httpjson.Write(w, http.StatusOK, struct {
			Status     string `json:"status"`
			TaskID     string `json:"task_id"`
			TaskStatus string `json:"task_status"`
			Approved   bool   `json:"approved"`
			Message    string `json:"message"`
		}{"ok", t.TaskID, string(t.Status), false, "agent token required: the plan is given only to the task's agent"})
		return nil
	}
	if aerr := authorize(&t, tok); aerr != nil {
		// Reset (or replaced) during the long poll.
		return a.reject(w, r, t.TaskID, mac, aerr.(*errBadToken).reason)
	}
	resp := contract.ApprovalResponse{
		Status: "ok", TaskID: t.TaskID, TaskStatus: string(t.Status),
		Approved: t.Status.Approved(), OSRef: t.OSRef, Disk: t.Disk,
	}
	switch {
	case !resp.Approved:
		resp.Message = "waiting for approval"
	case t.Plan == nil || t.Approval == nil || t.Plan.Digest != t.Approval.PlanDigest || !t.Plan.Approvable():
		// Cannot happen through the store (approval and plan move together); never
		// hand out an install that is not exactly what was approved.
		resp.Approved, resp.Message = false, "the task's approval does not match its plan: approve it again"
	default:
		resp.Plan = t.Plan
		resp.Image, resp.Message = a.approvedImage(r, t)
	}
	httpjson.Write(w, http.StatusOK, resp)
	return nil
}

// approvedImage is where the agent fetches the plan's image (see planImage). The URL
// names the task: GET /images/ serves only its agent (streams.go).
func (a *Appliance) approvedImage(r *http.Request, t store.Task) (*contract.Image, string) {
	e, why := a.planImage(t.Plan)
	if why != "" {
		return nil, why
	}
	// The URL uses the host the agent reached us on: it works from the boot network
	// and from this host alike.
	src := e.Source("http://" + r.Host + "/images/")
	return &contract.Image{URL: src.URL + "?task=" + url.QueryEscape(t.TaskID), Format: string(src.Format), Size: src.Size, SHA256: src.SHA256}, ""
}

// planImage is the catalog entry of p's image: only while this region's catalog still
// has those exact bytes (same sha256). An image replaced after approval is neither
// handed out nor streamed; the message says why (the agent fails the task with it).
func (a *Appliance) planImage(p *contract.Plan) (images.Entry, string) {
	if p == nil || p.Image == nil {
		return images.Entry{}, "the task has no plan with an image"
	}
	e, ok := a.images.Lookup(p.Image.OSRef)
	switch {
	case !ok:
		return e, fmt.Sprintf("region %s no longer has an image for %s (its catalog has: %s)", a.cfg.Label, p.Image.OSRef, describeImages(a.heartbeat().Images))
	case e.SHA256 != p.Image.SHA256:
		return e, fmt.Sprintf("the image for %s changed since approval (approved sha256 %s, the catalog now has %s): approve the task again", p.Image.OSRef, p.Image.SHA256, e.SHA256)
	}
	return e, ""
}

func (a *Appliance) handleProgress(w http.ResponseWriter, r *http.Request) error {
	var req contract.ProgressRequest
	if err := httpjson.Decode(w, r, &req); err != nil {
		return err
	}
	if req.MACAddress == "" {
		return &store.ValidationError{Field: "mac_address", Message: "is required"}
	}
	if req.TaskID == "" {
		return &store.ValidationError{Field: "task_id", Message: "is required"}
	}
	if req.Stage == "" {
		return &store.ValidationError{Field: "stage", Message: "is required"}
	}
	t, err := timeStore(a.metrics, "progress", func() (store.Task, error) {
		return a.store.RecordProgress(asAgent(r, req.TaskID), store.ProgressUpdate{
			Region: a.cfg.Label, MAC: req.MACAddress, TaskID: req.TaskID,
			Progress: req.Progress, Authorize: progressAuth(bearer(r), req.Stage),
		})
	})
	var bad *errBadToken
	if errors.As(err, &bad) {
		return a.reject(w, r, req.TaskID, req.MACAddress, bad.reason)
	}
	if err != nil {
		return err
	}
	a.metrics.progress(t.TaskID, req.Stage, time.Now())
	switch t.Status {
	case store.StatusCompleted:
		a.log.Info("Task " + t.TaskID + " completed")
	case store.StatusFailed:
		a.log.Warn("Task "+t.TaskID+" failed", "reason", t.Error)
	default:
		a.log.Debug("Progress", "task", t.TaskID, "stage", req.Stage, "percentage", req.Percentage)
	}
	httpjson.Write(w, http.StatusOK, contract.Response{Status: "ok", TaskID: t.TaskID})
	return nil
}

// progressAuth checks a progress post's token against the task inside the store's
// guarded update. A task that ended takes its token only for what an agent sends after
// the end: a repeated completed (acknowledged, nothing written) and the account of a
// cancelled install (stage cancelled); anything else is refused.
func progressAuth(tok string, stage contract.Stage) func(*store.Task) error {
	return func(t *store.Task) error {
		if err := authorize(t, tok); err != nil {
			return err
		}
		afterEnd := (stage == contract.StageCompleted && t.Status == store.StatusCompleted) ||
			(stage == contract.StageCancelled && t.Status == store.StatusCancelled)
		if t.Status.Final() && !afterEnd {
			return &errBadToken{fmt.Sprintf("the task is %s: its agent token ended with it", t.Status)}
		}
		return nil
	}
}

func (a *Appliance) handleHealth(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	_, perr := timeStore(a.metrics, "ping", func() (struct{}, error) { return struct{}{}, a.store.Ping(ctx) })
	h := contract.Health{Status: "ok", RegionLabel: a.cfg.Label, EtcdReachable: perr == nil, Version: Version, EmbeddedEtcd: a.etcd != nil}
	code := http.StatusOK
	if !h.EtcdReachable {
		h.Status, code, h.Message = "degraded", http.StatusServiceUnavailable, "etcd does not answer"
	} else if alarms, err := a.store.Alarms(ctx); err == nil && len(alarms) > 0 {
		h.Status, code, h.EtcdAlarms = "degraded", http.StatusServiceUnavailable, alarms
		h.Message = "etcd alarm raised: writes are refused until an operator compacts, defragments and disarms it (etcdctl alarm disarm)"
	}
	httpjson.Write(w, code, h)
	return nil
}

// openTaskForMAC is the store's, timed.
func (a *Appliance) openTaskForMAC(ctx context.Context, mac string) (store.Task, error) {
	return timeStore(a.metrics, "open_task", func() (store.Task, error) { return a.store.OpenTaskForMAC(ctx, a.cfg.Label, mac) })
}

// describeImages lists a catalog for a person ("nothing" when empty).
func describeImages(refs []contract.ImageRef) string {
	if len(refs) == 0 {
		return "nothing"
	}
	parts := make([]string, len(refs))
	for i, r := range refs {
		parts[i] = r.String()
	}
	return strings.Join(parts, ", ")
}

// maxWait bounds a long poll below common HTTP client and proxy timeouts.
const maxWait = 60 * time.Second

// waitParam reads ?wait=SECONDS (0 to 60).
func waitParam(r *http.Request) (time.Duration, error) {
	v := r.URL.Query().Get("wait")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || time.Duration(n)*time.Second > maxWait {
		return 0, &store.ValidationError{Field: "wait", Message: fmt.Sprintf("%q must be whole seconds from 0 to %d", v, int(maxWait.Seconds()))}
	}
	return time.Duration(n) * time.Second, nil
}
