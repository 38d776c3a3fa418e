package control

import (
	"net/http"
	"time"

	"lpmos.dev/lpmos/store"
)

// auditPage is GET /audit: the audit trail, newest first, filtered by region, task,
// user (actor) and action. The entries are the store's, shown as they are.
func (s *Server) auditPage(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	f := store.AuditFilter{Region: q.Get("region"), TaskID: q.Get("task"), Actor: q.Get("user"), Action: q.Get("action")}
	if f.Region != "" && store.ValidateRegion(f.Region) != nil {
		f.Region = ""
	}
	if v := q.Get("since"); v != "" {
		if t, err := time.Parse("2006-01-02", v); err == nil {
			f.Since = t
		}
	}
	p, err := uiPage.page(q, true)
	if err != nil {
		return err
	}
	entries, marks, skipped, err := s.fleet.AuditPage(r.Context(), f, p)
	if err != nil {
		return err
	}
	regions, err := s.overview.regionNames(r.Context())
	if err != nil {
		return err
	}
	s.render(w, r, http.StatusOK, "audit", page{Title: "Audit", Nav: "audit"},
		map[string]any{"Entries": entries, "Unreachable": skipped, "Filter": f, "Since": q.Get("since"), "Regions": regions, "Actions": auditActions,
			"Links": linksFor(r, "/audit", marks)})
	return nil
}

// auditActions are the filter's choices (a prefix matches its family: "task").
var auditActions = []string{"task", store.AuditTaskCreate, store.AuditTaskReport, store.AuditTaskApprove, store.AuditTaskReview,
	store.AuditTaskReplan, store.AuditTaskStart, store.AuditTaskComplete, store.AuditTaskFail, store.AuditTaskCancel, store.AuditTaskTimeout}
