package control

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/federation"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/httpjson"
)

// The page handlers: each reads etcd through the store, renders one template, and
// sends every action through the same store operations (and rules) as the REST API.

// ---- dashboard

func (s *Server) dashboardPage(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	f := listFilter{Region: q.Get("region"), Status: q.Get("status")}
	var problems []string
	if f.Region != "" && store.ValidateRegion(f.Region) != nil {
		problems, f.Region = append(problems, fmt.Sprintf("unknown region %q: showing all regions", f.Region)), ""
	}
	if f.Status != "" && !store.Status(f.Status).Valid() {
		problems, f.Status = append(problems, fmt.Sprintf("unknown status %q: showing all statuses", f.Status)), ""
	}
	ctx := r.Context()
	regions, total, err := s.overview.regions(ctx)
	if err != nil {
		return err
	}
	// The widget follows the region filter, as the live script does; the regions' counts
	// say whether there is anything to read.
	unmatched := []unmatchedView{}
	if countIn(regions, f.Region, func(rv regionView) int { return rv.Unmatched }) > 0 {
		if unmatched, err = s.overview.unmatched(ctx, f.Region, unmatchedMax); err != nil {
			return err
		}
	}
	// The newest dashboardTasks only (keys-only index reads, then just those tasks,
	// without hardware); the task list pages through the rest.
	tasks, _, err := s.overview.taskPage(ctx, f.Region, store.Status(f.Status), store.Page{Limit: dashboardTasks})
	if err != nil {
		return err
	}
	matching := countIn(regions, f.Region, tasksIn(f.Status))
	var alerting []regionView
	for _, rv := range regions {
		if rv.Alert {
			alerting = append(alerting, rv)
		}
	}
	s.render(w, r, http.StatusOK, "dashboard", page{Title: "Dashboard", Nav: "dashboard", Unmatched: total, counted: true, Filter: f},
		map[string]any{
			"Regions": regions, "Alerting": alerting, "UnmatchedList": unmatched, "Tasks": tasks,
			"Statuses": store.Statuses, "Problems": problems, "Filtered": f.Region != "" || f.Status != "",
			"Total": matching, "Limited": matching > dashboardTasks,
		})
	return nil
}

// dashboardTasks bounds the dashboard's task list: a page of thousands of rows helps
// nobody, and the task list (/tasks) pages through the rest.
const dashboardTasks = 200

// tasksIn counts a region's tasks in status ("" for all), for countIn.
func tasksIn(status string) func(regionView) int {
	return func(rv regionView) int {
		if status == "" {
			return rv.Total
		}
		return rv.CountMap[status]
	}
}

// ---- task list

// tasksPage is GET /tasks: every task, newest first, a page at a time, filtered by
// region and status. Invalid filters and cursors are a 400 (a link that names
// something else must not show another list).
func (s *Server) tasksPage(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	f := listFilter{Region: q.Get("region"), Status: q.Get("status")}
	if f.Region != "" {
		if err := store.ValidateRegion(f.Region); err != nil {
			return err
		}
	}
	if f.Status != "" && !store.Status(f.Status).Valid() {
		return &store.ValidationError{Field: "status", Message: fmt.Sprintf("unknown status %q", f.Status)}
	}
	p, err := uiPage.page(q, true)
	if err != nil {
		return err
	}
	// Region names and a count, not the regions' views: this page costs the same with
	// 100 tasks or 100,000.
	ctx := r.Context()
	regions, err := s.overview.regionNames(ctx)
	if err != nil {
		return err
	}
	total, stale, err := s.fleet.CountTasks(ctx, f.Region, store.Status(f.Status))
	if err != nil {
		return err
	}
	tasks, marks, err := s.overview.taskPage(ctx, f.Region, store.Status(f.Status), p)
	if err != nil {
		return err
	}
	// Below the newest page the table has no row template: live pushes update its
	// rows and add none.
	s.render(w, r, http.StatusOK, "tasks", page{Title: "Tasks", Nav: "tasks", Filter: f},
		map[string]any{"Tasks": tasks, "Regions": regions, "Statuses": store.Statuses, "Filter": f,
			"Total": total, "Links": linksFor(r, "/tasks", marks), "Newest": marks.Prev == "", "StaleRegions": stale})
	return nil
}

// countIn sums n over the regions, or takes it from one region when region is set (0
// for a region nobody has used).
func countIn(regions []regionView, region string, n func(regionView) int) int {
	sum := 0
	for _, rv := range regions {
		if region == "" || rv.Name == region {
			sum += n(rv)
		}
	}
	return sum
}

// ---- add task

type createForm struct {
	Region, MAC, DiskSerial string
	contract.OSRef
	CloudInit           cloudInitForm // control/cloudinit.go
	Image               string        // a region's catalog entry, as imageValue encodes it
	Errors              map[string]string
	FormError           string
	Regions             []regionView
	OSTypes, OSVersions []string
}

// macPattern is the browser's first check (HTML pattern, compiled with the v flag);
// the server's NormalizeMAC is the rule.
const macPattern = `([0-9A-Fa-f]{2}[:\-]){5}[0-9A-Fa-f]{2}|[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}`

func (s *Server) createPage(w http.ResponseWriter, r *http.Request) error {
	f := createForm{Region: r.URL.Query().Get("region")}
	return s.renderCreate(w, r, http.StatusOK, f)
}

func (s *Server) renderCreate(w http.ResponseWriter, r *http.Request, code int, f createForm) error {
	regions, total, err := s.overview.regions(r.Context())
	if err != nil {
		return err
	}
	f.Regions = regions
	// Suggestions from the regions' catalogs (their heartbeats): what can be installed.
	types, versions := map[string]bool{}, map[string]bool{}
	for _, rv := range regions {
		for _, img := range rv.Images {
			types[img.OSType], versions[img.OSVersion] = true, true
		}
	}
	f.OSTypes, f.OSVersions = sortedKeys(types), sortedKeys(versions)
	if f.Errors == nil {
		f.Errors = map[string]string{}
	}
	s.render(w, r, code, "create", page{Title: "Add task", Nav: "create", Unmatched: total, counted: true}, map[string]any{"Form": f, "MACPattern": macPattern})
	return nil
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// formField maps a store validation field to the form's input.
var formField = map[string]string{
	"region_id": "region", "target_mac": "mac", "mac_address": "mac",
	"os_type": "os_type", "os_version": "os_version", "disk.serial": "disk_serial", "disk": "disk_serial",
	"hostname": "hostname", "ssh_authorized_keys": "ssh_authorized_keys", "user_data": "user_data", "network_config": "network_config",
}

func (s *Server) createSubmit(w http.ResponseWriter, r *http.Request) error {
	if err := r.ParseForm(); err != nil {
		return httpjson.Errorf(http.StatusBadRequest, "bad form: %v", err)
	}
	f := createForm{
		Region: strings.TrimSpace(r.PostForm.Get("region")), MAC: strings.TrimSpace(r.PostForm.Get("mac")),
		OSRef:      contract.OSRef{OSType: strings.TrimSpace(r.PostForm.Get("os_type")), OSVersion: strings.TrimSpace(r.PostForm.Get("os_version"))},
		DiskSerial: strings.TrimSpace(r.PostForm.Get("disk_serial")), Errors: map[string]string{},
		Image: r.PostForm.Get("image"), CloudInit: readCloudInitForm(r.PostForm),
	}
	if f.Image != "" {
		// A catalog entry wins over the free-text fields (without JavaScript nothing
		// copies it into them).
		if ref, ok := parseImageValue(f.Image); ok {
			f.OSRef = ref
		}
	}
	n := store.NewTask{RegionID: f.Region, TargetMAC: f.MAC, OSRef: f.OSRef, CloudInit: f.CloudInit.cloudInit()}
	if f.DiskSerial != "" {
		n.Disk = &contract.DiskHint{Serial: f.DiskSerial}
	}
	// Check every field, so all errors show at once rather than one per submit.
	if err := store.ValidateRegion(f.Region); err != nil {
		f.Errors["region"] = fieldMessage(err)
	}
	if _, err := store.NormalizeMAC(f.MAC); err != nil {
		f.Errors["mac"] = fieldMessage(err)
	}
	if f.OSType == "" {
		f.Errors["os_type"] = "is required"
	}
	if f.OSVersion == "" {
		f.Errors["os_version"] = "is required"
	}
	if len(f.Errors) > 0 {
		return s.renderCreate(w, r, http.StatusBadRequest, f)
	}
	t, err := s.fleet.CreateTask(r.Context(), n)
	if err != nil {
		var ve *store.ValidationError
		var ue *federation.UnreachableError
		switch {
		case errors.As(err, &ve):
			f.Errors[formField[ve.Field]] = ve.Message
		case errors.As(err, &ue):
			f.FormError = ue.Error()
			return s.renderCreate(w, r, http.StatusServiceUnavailable, f)
		case errors.Is(err, store.ErrConflict):
			f.FormError = err.Error()
		default:
			return err
		}
		return s.renderCreate(w, r, httpjson.StatusFor(err), f)
	}
	s.log.Info("task created", "task", t.TaskID, "region", t.RegionID, "mac", t.TargetMAC, "status", t.Status, "via", "web")
	http.Redirect(w, r, "/tasks/"+t.TaskID+"?flash=created", http.StatusSeeOther)
	return nil
}

func fieldMessage(err error) string {
	var ve *store.ValidationError
	if errors.As(err, &ve) {
		return ve.Message
	}
	return err.Error()
}

// ---- task page

var flashes = map[string]string{
	"created":   "Task created.",
	"approved":  "Install approved: the agent starts on its next poll.",
	"cancelled": "Task cancelled.",
	"rejected":  "Task rejected.",
	"matched":   "Report matched to this task.",
}

type taskPageData struct {
	Task         store.Task
	View         taskView
	HW           hardwareView
	Target       string // the plan's disk, or why there is no plan to approve
	DiskRefused  bool   // the plan cannot be approved
	Image        string // the OS the task asks for
	PlanImage    string // the plan's image: name, size, sha256
	Timeline     []timelineStep
	Error        string
	ImageWarning string // the region does not advertise the task's image
	// Stale: the region's cluster does not answer; the task is shown as last seen,
	// Unreachable says since when.
	Stale       bool
	Unreachable string
}

type timelineStep struct {
	Label string
	At    *time.Time
	Note  string
	Bad   bool
}

func (s *Server) loadTaskPage(ctx context.Context, id string) (taskPageData, error) {
	t, stale, err := s.fleet.GetTask(ctx, id)
	if err != nil {
		return taskPageData{}, err
	}
	d := taskPageData{Task: t, View: s.overview.task(t, bool(stale)), HW: parseHardware(t.Hardware, t.TargetMAC),
		Image: t.OSRef.String(), Stale: bool(stale)}
	if stale {
		d.Unreachable = "unreachable"
		if rs, err := s.fleet.GetRegion(ctx, t.RegionID); err == nil && rs.UnreachableSince != nil {
			d.Unreachable = "unreachable since " + rs.UnreachableSince.UTC().Format("15:04") + " UTC"
		}
	}
	d.Target, d.PlanImage, d.DiskRefused = planText(&d.HW, t.Plan)
	trail, _, _, err := s.fleet.AuditPage(ctx, store.AuditFilter{Region: t.RegionID, TaskID: t.TaskID}, store.Page{Limit: 1000})
	var ue *federation.UnreachableError
	switch {
	case errors.As(err, &ue):
		trail = nil // the steps show without their actors until the region answers
	case err != nil:
		return taskPageData{}, err
	}
	d.Timeline = timeline(t, trail)
	if t.Status == store.StatusPending || t.Status == store.StatusPendingApproval {
		d.ImageWarning = s.catalogWarning(ctx, t) // the same check as the API's
	}
	return d, nil
}

// timeline is the task's steps, each named with its actor from the audit trail (newest
// entry of each kind wins: a task approved twice shows the approval that stands).
func timeline(t store.Task, trail []store.AuditEntry) []timelineStep {
	by := map[string]store.AuditEntry{}
	for i := len(trail) - 1; i >= 0; i-- { // oldest first, so the newest overwrites
		by[trail[i].Action] = trail[i]
	}
	named := func(label string, actions ...string) string {
		for _, a := range actions {
			if e, ok := by[a]; ok && e.Actor != "" {
				return label + " by " + actorText(e)
			}
		}
		return label
	}
	steps := []timelineStep{
		{Label: named("Created", store.AuditTaskCreate), At: &t.CreatedAt},
		{Label: named("Hardware reported", store.AuditTaskReport, store.AuditTaskReview, store.AuditTaskMatch), At: t.ReportedAt, Note: "waiting for the machine to PXE-boot"},
	}
	approve := timelineStep{Label: "Approved", At: t.ApprovedAt, Note: "waiting for an operator"}
	if t.Approval != nil && t.Approval.ApprovedBy != "" {
		approve.Label = "Approved by " + t.Approval.ApprovedBy
		if e, ok := by[store.AuditTaskApprove]; ok && e.Actor == t.Approval.ApprovedBy {
			approve.Label = "Approved by " + actorText(e) // the standing approval's entry
		}
	}
	if t.Review != "" {
		approve.Note = "back for review: " + t.Review
	}
	steps = append(steps, approve, timelineStep{Label: named("Install started", store.AuditTaskStart), At: t.StartedAt})
	end := timelineStep{Label: "Finished", At: t.FinishedAt}
	switch t.Status {
	case store.StatusCompleted:
		end.Label = named("Completed", store.AuditTaskComplete)
	case store.StatusFailed:
		end.Label, end.Note, end.Bad = named("Failed", store.AuditTaskTimeout, store.AuditTaskFail), t.Error, true
	case store.StatusCancelled:
		end.Label, end.Note, end.Bad = named("Cancelled", store.AuditTaskCancel), t.Error, true
	}
	steps = append(steps, end)
	for i := range steps {
		switch {
		case steps[i].At != nil && !steps[i].Bad:
			steps[i].Note = "" // "waiting for…" is over
		case steps[i].At == nil && t.Status.Final():
			steps[i].Note = "skipped" // never reached, and never will be
		}
	}
	return steps
}

// actorText names an audit entry's actor in the timeline. A decision taken on the
// appliance host (lpmos-appliance tasks, while this control plane was out of reach)
// says so, with the reason its author gave: the name is theirs, not a login here.
func actorText(e store.AuditEntry) string {
	if e.Kind != store.ActorLocal {
		return e.Actor
	}
	return e.Actor + " — local (break-glass) on the appliance host: " + e.Detail["reason"]
}

func (s *Server) taskPage(w http.ResponseWriter, r *http.Request) error {
	d, err := s.loadTaskPage(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	s.renderTask(w, r, http.StatusOK, d, flashes[r.URL.Query().Get("flash")])
	return nil
}

func (s *Server) renderTask(w http.ResponseWriter, r *http.Request, code int, d taskPageData, flash string) {
	d.Task = masked(d.Task)
	s.render(w, r, code, "task", page{Title: "Task " + shortID(d.Task.TaskID), Nav: "tasks", Flash: flash, TaskID: d.Task.TaskID}, d)
}

// actionError shows a refused action on the task page itself, with the status code
// the API would give (409 for a state the action does not apply to).
func (s *Server) actionError(w http.ResponseWriter, r *http.Request, id string, err error) error {
	d, lerr := s.loadTaskPage(r.Context(), id)
	if lerr != nil {
		return err
	}
	err = unreachableAs503(err) // shown on the page, as the API says it
	code := httpjson.StatusFor(err)
	if code >= 500 && !errors.As(err, new(*httpjson.Error)) {
		return err
	}
	d.Error = err.Error()
	s.renderTask(w, r, code, d, "")
	return nil
}

func (s *Server) approveSubmit(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if err := r.ParseForm(); err != nil {
		return httpjson.Errorf(http.StatusBadRequest, "bad form: %v", err)
	}
	if r.PostForm.Get("confirm") != "yes" {
		// Without the in-page dialog (no JavaScript) the confirmation is a page.
		d, err := s.loadTaskPage(r.Context(), id)
		if err != nil {
			return err
		}
		if d.Task.Status != store.StatusPendingApproval {
			return s.actionError(w, r, id, &store.TransitionError{TaskID: id, From: d.Task.Status, To: store.StatusApproved})
		}
		s.render(w, r, http.StatusOK, "confirm", page{Title: "Confirm approval", Nav: "tasks"}, d)
		return nil
	}
	// The digest the page showed: if the plan changed since, the store refuses.
	t, err := s.fleet.ApproveTask(r.Context(), id, r.PostForm.Get("plan_digest"))
	if err != nil {
		return s.actionError(w, r, id, err)
	}
	s.log.Info("task approved", "task", t.TaskID, "region", t.RegionID, "via", "web")
	http.Redirect(w, r, "/tasks/"+url.PathEscape(id)+"?flash=approved", http.StatusSeeOther)
	return nil
}

func (s *Server) cancelSubmit(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if err := r.ParseForm(); err != nil {
		return httpjson.Errorf(http.StatusBadRequest, "bad form: %v", err)
	}
	reason, flash := "cancelled from the web UI", "cancelled"
	if r.PostForm.Get("action") == "reject" {
		reason, flash = "rejected from the web UI after hardware review", "rejected"
	}
	if extra := strings.TrimSpace(r.PostForm.Get("reason")); extra != "" {
		if len(extra) > 500 {
			extra = extra[:500]
		}
		reason += ": " + extra
	}
	t, err := s.fleet.CancelTask(r.Context(), id, reason)
	if err != nil {
		return s.actionError(w, r, id, err)
	}
	s.log.Info("task cancelled", "task", t.TaskID, "region", t.RegionID, "via", "web", "reason", reason)
	http.Redirect(w, r, "/tasks/"+url.PathEscape(id)+"?flash="+flash, http.StatusSeeOther)
	return nil
}

// ---- unmatched reports

type unmatchedItem struct {
	Report  store.UnmatchedReport
	HW      hardwareView
	Pending []store.Task     // pending tasks of the same MAC and region: link targets
	Images  []contract.OSRef // the report's region's catalog
	Errors  map[string]string
	OSType  string
	OSVer   string
}

func (s *Server) unmatchedPage(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	if region := q.Get("region"); region != "" {
		if err := store.ValidateRegion(region); err != nil {
			return err
		}
	}
	p, err := uiPage.page(q, true)
	if err != nil {
		return err
	}
	return s.renderUnmatched(w, r, http.StatusOK, p, nil)
}

// matchFailure carries a refused match back onto its report's form.
type matchFailure struct {
	ID, Region, OSType, OSVersion, FormError string
	Errors                                   map[string]string
}

// renderUnmatched shows page p of the unmatched reports (the first page, of every
// region, when a refused match comes back with its form).
func (s *Server) renderUnmatched(w http.ResponseWriter, r *http.Request, code int, p store.Page, failed *matchFailure) error {
	region := r.URL.Query().Get("region")
	if failed != nil {
		region, p = "", store.Page{Limit: uiPage.def}
	}
	ctx := r.Context()
	regions, total, err := s.overview.regions(ctx)
	if err != nil {
		return err
	}
	catalogs := map[string][]contract.OSRef{}
	for _, rv := range regions {
		catalogs[rv.Name] = rv.Images
	}
	// One page, with the page's hardware only; the regions' counts say when there is
	// nothing to read.
	var reports []store.UnmatchedReport
	var marks store.PageMarks
	if countIn(regions, region, func(rv regionView) int { return rv.Unmatched }) > 0 {
		if reports, marks, _, err = s.fleet.UnmatchedPage(ctx, region, p, true); err != nil {
			return err
		}
	}
	pending := countIn(regions, region, tasksIn(string(store.StatusPending))) > 0
	items := make([]unmatchedItem, 0, len(reports))
	for _, u := range reports {
		it := unmatchedItem{Report: u, HW: parseHardware(u.Hardware, u.MACAddress), Images: catalogs[u.Region], Errors: map[string]string{}}
		if pending {
			// Link target: the MAC's open task, through the MAC index (one read, not
			// every pending task of the fleet).
			t, err := s.fleet.OpenTaskForMAC(ctx, u.Region, u.MACAddress)
			switch {
			case err == nil && t.Status == store.StatusPending:
				it.Pending = []store.Task{t}
			case err != nil && !errors.Is(err, store.ErrNotFound):
				return err
			}
		}
		if failed != nil && failed.ID == u.ID && failed.Region == u.Region {
			it.Errors, it.OSType, it.OSVer = failed.Errors, failed.OSType, failed.OSVersion
			if failed.FormError != "" {
				it.Errors["form"] = failed.FormError
			}
			failed = nil // shown beside its report
		}
		items = append(items, it)
	}
	s.render(w, r, code, "unmatched", page{Title: "Unmatched reports", Nav: "unmatched", Unmatched: total, counted: true},
		map[string]any{"Items": items, "Region": region, "Regions": regions, "Failed": failed,
			"Links": linksFor(r, "/unmatched", marks), "Total": countIn(regions, region, func(rv regionView) int { return rv.Unmatched })})
	return nil
}

func (s *Server) matchSubmit(w http.ResponseWriter, r *http.Request) error {
	region, id := r.PathValue("region"), r.PathValue("id")
	if err := store.ValidateRegion(region); err != nil {
		return err
	}
	if err := r.ParseForm(); err != nil {
		return httpjson.Errorf(http.StatusBadRequest, "bad form: %v", err)
	}
	m := store.MatchRequest{TaskID: r.PostForm.Get("task_id"),
		OSRef: contract.OSRef{OSType: strings.TrimSpace(r.PostForm.Get("os_type")), OSVersion: strings.TrimSpace(r.PostForm.Get("os_version"))}}
	if img := r.PostForm.Get("image"); img != "" && m.TaskID == "" {
		if ref, ok := parseImageValue(img); ok {
			m.OSRef = ref // a catalog entry wins, as on Add task
		}
	}
	fail := &matchFailure{ID: id, Region: region, OSType: m.OSType, OSVersion: m.OSVersion, Errors: map[string]string{}}
	if m.TaskID == "" {
		if m.OSType == "" {
			fail.Errors["os_type"] = "is required"
		}
		if m.OSVersion == "" {
			fail.Errors["os_version"] = "is required"
		}
		if len(fail.Errors) > 0 {
			return s.renderUnmatched(w, r, http.StatusBadRequest, store.Page{}, fail)
		}
	}
	t, err := s.fleet.MatchUnmatched(r.Context(), region, id, m)
	if err != nil {
		var ve *store.ValidationError
		var ue *federation.UnreachableError
		switch {
		case errors.As(err, &ue):
			fail.FormError = ue.Error()
			return s.renderUnmatched(w, r, http.StatusServiceUnavailable, store.Page{}, fail)
		case errors.As(err, &ve) && (ve.Field == "os_type" || ve.Field == "os_version"):
			fail.Errors[ve.Field] = ve.Message
		case httpjson.StatusFor(err) < 500:
			fail.FormError = err.Error()
		default:
			return err
		}
		return s.renderUnmatched(w, r, httpjson.StatusFor(err), store.Page{}, fail)
	}
	s.log.Info("unmatched report matched", "report", id, "task", t.TaskID, "via", "web")
	http.Redirect(w, r, "/tasks/"+url.PathEscape(t.TaskID)+"?flash=matched", http.StatusSeeOther)
	return nil
}

// ---- region page

func (s *Server) regionPage(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if err := store.ValidateRegion(name); err != nil {
		return fmt.Errorf("%w: region %q", store.ErrNotFound, name)
	}
	regions, total, err := s.overview.regions(r.Context())
	if err != nil {
		return err
	}
	var rv *regionView
	for i := range regions {
		if regions[i].Name == name {
			rv = &regions[i]
		}
	}
	if rv == nil {
		return fmt.Errorf("%w: region %s (no appliance, task or report has used it)", store.ErrNotFound, name)
	}
	// The newest of each, as on the dashboard; the lists page through the rest.
	tasks, _, err := s.overview.taskPage(r.Context(), name, "", store.Page{Limit: dashboardTasks})
	if err != nil {
		return err
	}
	var unmatched []unmatchedView
	if rv.Unmatched > 0 {
		if unmatched, err = s.overview.unmatched(r.Context(), name, unmatchedMax); err != nil {
			return err
		}
	}
	s.render(w, r, http.StatusOK, "region", page{Title: "Region " + name, Nav: "regions", Unmatched: total, counted: true, Filter: listFilter{Region: name}},
		map[string]any{"Region": rv, "Tasks": tasks, "UnmatchedList": unmatched,
			"History": s.overview.history(*rv), "Since": s.overview.since()})
	return nil
}
