package control

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"lpmos.dev/lpmos/federation"
	"lpmos.dev/lpmos/internal/metrics"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/httpjson"
)

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	h := func(f httpjson.HandlerFunc) http.HandlerFunc {
		return httpjson.Handle(s.log, func(w http.ResponseWriter, r *http.Request) error { return unreachableAs503(f(w, r)) })
	}
	mux.HandleFunc("POST /api/v1/tasks", h(s.createTask))
	mux.HandleFunc("GET /api/v1/tasks", h(s.listTasks))
	mux.HandleFunc("GET /api/v1/tasks/{id}", h(s.getTask))
	mux.HandleFunc("POST /api/v1/tasks/{id}/approve", h(s.approveTask))
	mux.HandleFunc("POST /api/v1/tasks/{id}/cancel", h(s.cancelTask))
	mux.HandleFunc("POST /api/v1/tasks/{id}/reset-agent-token", h(s.resetAgentToken))
	mux.HandleFunc("GET /api/v1/regions", h(s.listRegions))
	mux.HandleFunc("GET /api/v1/regions/{region}/cloud-init", h(s.getRegionCloudInit))
	mux.HandleFunc("PUT /api/v1/regions/{region}/cloud-init", h(s.putRegionCloudInit))
	mux.HandleFunc("GET /api/v1/unmatched", h(s.listUnmatched))
	mux.HandleFunc("GET /api/v1/unmatched/{region}/{id}", h(s.getUnmatched))
	mux.HandleFunc("POST /api/v1/unmatched/{region}/{id}/match", h(s.matchUnmatched))
	mux.HandleFunc("GET /api/v1/audit", h(s.listAudit))
	mux.HandleFunc("/api/", h(func(w http.ResponseWriter, r *http.Request) error {
		return httpjson.Errorf(http.StatusNotFound, "no such endpoint: %s %s", r.Method, r.URL.Path)
	}))
	// Prometheus: a GET, so guard lets a viewer's bearer token (or session) in.
	mux.Handle("GET /metrics", metrics.Handler(s.metrics.reg))
	s.pageRoutes(mux)
	// guard (auth.go) puts who is asking into the request's context, where the store
	// takes every actor field (approved_by, the audit trail) from. Outside it, every
	// answer is counted by route and code, refusals included.
	return s.metrics.http.Wrap(mux, s.guard(mux))
}

// listAudit is GET /api/v1/audit?region=&task=&user=&action=&since=RFC3339&limit=&after=:
// a page of entries, newest first, and the cursor of the next.
func (s *Server) listAudit(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	f := store.AuditFilter{Region: q.Get("region"), TaskID: q.Get("task"), Actor: q.Get("user"), Action: q.Get("action")}
	if f.Region != "" {
		if err := store.ValidateRegion(f.Region); err != nil {
			return err
		}
	}
	if v := q.Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return &store.ValidationError{Field: "since", Message: fmt.Sprintf("%q is not an RFC 3339 time like 2026-12-01T10:00:00Z", v)}
		}
		f.Since = t
	}
	p, err := apiPage.page(q, false)
	if err != nil {
		return err
	}
	entries, marks, skipped, err := s.fleet.AuditPage(r.Context(), f, p)
	if err != nil {
		return err
	}
	body := map[string]any{"entries": entries, "count": len(entries), "next": marks.Next}
	if len(skipped) > 0 {
		body["unreachable_regions"] = skipped // their entries are not in this list
	}
	httpjson.Write(w, http.StatusOK, body)
	return nil
}

func (s *Server) createTask(w http.ResponseWriter, r *http.Request) error {
	var req store.NewTask
	if err := httpjson.Decode(w, r, &req); err != nil {
		return err
	}
	t, err := s.fleet.CreateTask(r.Context(), req)
	if err != nil {
		return err
	}
	s.log.Info("task created", "task", t.TaskID, "region", t.RegionID, "mac", t.TargetMAC, "status", t.Status)
	httpjson.Write(w, http.StatusCreated, createdTask{Task: masked(t), Warning: s.catalogWarning(r.Context(), t)})
	return nil
}

// createdTask is a new task plus a warning when its region cannot install it yet.
type createdTask struct {
	store.Task
	Warning string `json:"warning,omitempty"`
}

// catalogWarning checks the task's OS against the image list its region advertises in
// its heartbeat. A missing image does not refuse the task: operators create tasks
// before they upload images; the agent fails the task if it is still missing when
// approved.
func (s *Server) catalogWarning(ctx context.Context, t store.Task) string {
	reg, err := s.fleet.GetRegion(ctx, t.RegionID)
	if err != nil || reg.Heartbeat == nil {
		return fmt.Sprintf("region %s is offline or unknown: its image catalog cannot be checked", t.RegionID)
	}
	for _, img := range reg.Heartbeat.Images {
		if img.Is(t.OSRef) {
			return ""
		}
	}
	have := make([]string, 0, len(reg.Heartbeat.Images))
	for _, img := range reg.Heartbeat.Images {
		have = append(have, img.String())
	}
	if len(have) == 0 {
		have = append(have, "nothing")
	}
	return fmt.Sprintf("region %s has no image for %s yet (its catalog has: %s); upload it before approving", t.RegionID, t.OSRef, strings.Join(have, ", "))
}

// listTasks is GET /api/v1/tasks?region=&status=&limit=&after=&hardware=1: a page of
// tasks, newest first, without their hardware reports unless asked (a page of 500
// reports can weigh 100 MB), and the cursor of the next page. ?mac= lists that MAC's
// tasks (few) in one answer, oldest first, as before pages.
func (s *Server) listTasks(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	f := store.ListFilter{Region: q.Get("region"), Status: store.Status(q.Get("status"))}
	if f.Region != "" {
		if err := store.ValidateRegion(f.Region); err != nil {
			return err
		}
	}
	if f.Status != "" && !f.Status.Valid() {
		return &store.ValidationError{Field: "status", Message: "unknown status " + string(f.Status)}
	}
	p, withHW, err := apiListParams(q)
	if err != nil {
		return err
	}
	var tasks []store.Task
	var marks store.PageMarks
	var stale []string
	if m := q.Get("mac"); m != "" {
		if p.After != "" {
			return &store.ValidationError{Field: "after", Message: "a MAC's tasks are one page: no cursor"}
		}
		mac, err := store.NormalizeMAC(m)
		if err != nil {
			return err
		}
		f.MAC = mac
		tasks, stale, err = s.fleet.ListTasks(r.Context(), f)
	} else {
		tasks, marks, stale, err = s.fleet.TaskPage(r.Context(), f.Region, f.Status, p, withHW)
	}
	if err != nil {
		return err
	}
	out := make([]apiTask, len(tasks))
	for i, t := range tasks {
		out[i] = apiTask{Task: masked(t), Stale: slices.Contains(stale, t.RegionID)}
	}
	body := map[string]any{"tasks": out, "count": len(tasks), "next": marks.Next}
	if len(stale) > 0 {
		body["stale_regions"] = stale
	}
	httpjson.Write(w, http.StatusOK, body)
	return nil
}

// hardwareParam reads ?hardware=: "1" or "true" asks for each row's hardware report.
// apiListParams are a hardware-capable API list's page (limit, after) and ?hardware=.
func apiListParams(q url.Values) (store.Page, bool, error) {
	p, err := apiPage.page(q, false)
	if err != nil {
		return p, false, err
	}
	withHW, err := hardwareParam(q)
	return p, withHW, err
}

func hardwareParam(q url.Values) (bool, error) {
	switch v := q.Get("hardware"); v {
	case "", "0", "false":
		return false, nil
	case "1", "true":
		return true, nil
	default:
		return false, &store.ValidationError{Field: "hardware", Message: fmt.Sprintf("%q is not 1 or 0", v)}
	}
}

func (s *Server) getTask(w http.ResponseWriter, r *http.Request) error {
	t, stale, err := s.fleet.GetTask(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	httpjson.Write(w, http.StatusOK, apiTask{Task: masked(t), Stale: bool(stale)})
	return nil
}

// apiTask is a task as the API shows it: stale when its region's cluster does not
// answer and it is shown as last seen (docs/federation.md).
type apiTask struct {
	store.Task
	Stale bool `json:"stale,omitempty"`
}

// unreachableAs503 turns a refusal for a region whose cluster does not answer into
// its 503, message and retry_after.
func unreachableAs503(err error) error {
	var ue *federation.UnreachableError
	if errors.As(err, &ue) {
		return &httpjson.Error{Code: http.StatusServiceUnavailable, Message: ue.Error(), Extra: map[string]any{"retry_after": federation.RetryAfter}}
	}
	return err
}

// actionBody is the optional body of cancel.
type actionBody struct {
	Reason string `json:"reason,omitempty"`
}

func decodeOptional(w http.ResponseWriter, r *http.Request, v any) error {
	if r.ContentLength == 0 {
		return nil
	}
	return httpjson.Decode(w, r, v)
}

// approveBody is POST /api/v1/tasks/{id}/approve: the digest of the plan approved. Who
// approves is the request's identity, never a field of the body.
type approveBody struct {
	PlanDigest string `json:"plan_digest"`
}

func (s *Server) approveTask(w http.ResponseWriter, r *http.Request) error {
	var b approveBody
	if err := decodeOptional(w, r, &b); err != nil {
		return err
	}
	t, err := s.fleet.ApproveTask(r.Context(), r.PathValue("id"), b.PlanDigest)
	if err != nil {
		return err
	}
	s.log.Info("task approved", "task", t.TaskID, "region", t.RegionID)
	httpjson.Write(w, http.StatusOK, masked(t))
	return nil
}

func (s *Server) cancelTask(w http.ResponseWriter, r *http.Request) error {
	var b actionBody
	if err := decodeOptional(w, r, &b); err != nil {
		return err
	}
	t, err := s.fleet.CancelTask(r.Context(), r.PathValue("id"), b.Reason)
	if err != nil {
		return err
	}
	s.log.Info("task cancelled", "task", t.TaskID, "region", t.RegionID)
	httpjson.Write(w, http.StatusOK, masked(t))
	return nil
}

func (s *Server) listRegions(w http.ResponseWriter, r *http.Request) error {
	regions, err := s.fleet.ListRegions(r.Context())
	if err != nil {
		return err
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"regions": regions, "unmatched_alert": s.cfg.UnmatchedAlert})
	return nil
}

// unmatchedSummary is an unmatched report in a list: what its key says (no value is
// read), and where its whole report is.
type unmatchedSummary struct {
	ID         string    `json:"id"`
	Region     string    `json:"region"`
	MACAddress string    `json:"mac_address"`
	ReceivedAt time.Time `json:"received_at"` // to the second
	URL        string    `json:"url"`         // the whole report, hardware included
}

// listUnmatched is GET /api/v1/unmatched?region=&limit=&after=&hardware=1: a page of
// reports, newest first, as summaries (or whole, hardware included, with
// ?hardware=1: at most a page of them), and the cursor of the next page.
func (s *Server) listUnmatched(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	region := q.Get("region")
	if region != "" {
		if err := store.ValidateRegion(region); err != nil {
			return err
		}
	}
	p, withHW, err := apiListParams(q)
	if err != nil {
		return err
	}
	reports, marks, stale, err := s.fleet.UnmatchedPage(r.Context(), region, p, withHW)
	if err != nil {
		return err
	}
	var list any = reports
	if !withHW {
		sums := make([]unmatchedSummary, len(reports))
		for i, u := range reports {
			sums[i] = unmatchedSummary{ID: u.ID, Region: u.Region, MACAddress: u.MACAddress, ReceivedAt: u.ReceivedAt,
				URL: "/api/v1/unmatched/" + u.Region + "/" + url.PathEscape(u.ID)}
		}
		list = sums
	}
	body := map[string]any{"reports": list, "count": len(reports), "next": marks.Next}
	if len(stale) > 0 {
		body["stale_regions"] = stale
	}
	httpjson.Write(w, http.StatusOK, body)
	return nil
}

// getUnmatched is GET /api/v1/unmatched/{region}/{id}: one report, hardware included.
func (s *Server) getUnmatched(w http.ResponseWriter, r *http.Request) error {
	region := r.PathValue("region")
	if err := store.ValidateRegion(region); err != nil {
		return err
	}
	u, err := s.fleet.GetUnmatched(r.Context(), region, r.PathValue("id"))
	if err != nil {
		return err
	}
	httpjson.Write(w, http.StatusOK, u)
	return nil
}

func (s *Server) matchUnmatched(w http.ResponseWriter, r *http.Request) error {
	region := r.PathValue("region")
	if err := store.ValidateRegion(region); err != nil {
		return err
	}
	var m store.MatchRequest
	if err := httpjson.Decode(w, r, &m); err != nil {
		return err
	}
	t, err := s.fleet.MatchUnmatched(r.Context(), region, r.PathValue("id"), m)
	if err != nil {
		return err
	}
	s.log.Info("unmatched report matched", "report", r.PathValue("id"), "task", t.TaskID)
	httpjson.Write(w, http.StatusOK, masked(t))
	return nil
}
