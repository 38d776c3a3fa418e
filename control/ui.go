package control

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"html/template"
	"io/fs"
	"net/http"
	"strconv"
	"strings"
	"time"

	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/httpjson"
)

// The web UI: server-rendered pages (readable without JavaScript), plain HTML forms
// for every action, and a small script that applies the live push from /live.

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// pages holds every page's template, parsed once at start: a broken template fails
// the build's tests, not an operator's request.
var pages = parsePages("dashboard", "tasks", "task", "create", "confirm", "unmatched", "region", "error", "audit", "login")

func parsePages(names ...string) map[string]*template.Template {
	funcs := template.FuncMap{
		"ago":        ago,
		"when":       when,
		"iso":        func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
		"bytes":      humanBytes,
		"statusText": func(s store.Status) string { return statusLabel(s) },
		"hint":       describeHint,
		"deref":      func(t *time.Time) time.Time { return *t },
		"blankTask":  func() taskView { return taskView{} },
		"imageValue": imageValue,
	}
	m := map[string]*template.Template{}
	for _, n := range names {
		m[n] = template.Must(template.New(n).Funcs(funcs).ParseFS(templateFS,
			"templates/layout.html", "templates/partials.html", "templates/"+n+".html"))
	}
	return m
}

// page is what every template gets; Data is the page's own.
type page struct {
	Title     string
	Nav       string // which nav entry is current
	Alert     int
	Unmatched int  // total, for the nav badge
	counted   bool // Unmatched is set (0 included); else render takes the overview's
	Flash     string
	Filter    listFilter // what the live script applies to task lists
	TaskID    string     // on a task page: the task the live script follows
	// Who is looking: their name and role, whether they may act (operator or admin),
	// and their session's anti-CSRF token for the forms ("" with a bearer token).
	User, Role string
	CanOperate bool
	CSRF       string
	Data       any
}

type listFilter struct{ Region, Status string }

const maxForm = 64 << 10

func (s *Server) pageRoutes(mux *http.ServeMux) {
	static, _ := fs.Sub(staticFS, "static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", noCache(http.FileServerFS(static))))
	mux.HandleFunc("GET /live", s.serveLive)

	// Forms post to the pages; CrossOriginProtection (Sec-Fetch-Site / Origin) stops
	// another site from submitting them in an operator's browser, and a form posted
	// with the session cookie must carry the session's anti-CSRF token.
	cop := http.NewCrossOriginProtection()
	post := func(f func(http.ResponseWriter, *http.Request) error) http.Handler {
		return cop.Handler(s.pageHandler(func(w http.ResponseWriter, r *http.Request) error {
			r.Body = http.MaxBytesReader(w, r.Body, maxForm) // our forms are a few fields
			if err := checkFormCSRF(r); err != nil {
				return err
			}
			return f(w, r)
		}))
	}
	mux.Handle("GET /login", s.pageHandler(s.loginPage))
	mux.Handle("POST /login", cop.Handler(s.pageHandler(func(w http.ResponseWriter, r *http.Request) error {
		r.Body = http.MaxBytesReader(w, r.Body, maxForm)
		return s.loginSubmit(w, r)
	})))
	mux.Handle("POST /logout", post(s.logoutSubmit))
	mux.Handle("GET /{$}", s.pageHandler(s.dashboardPage))
	mux.Handle("GET /tasks", s.pageHandler(s.tasksPage))
	mux.Handle("GET /tasks/create", s.pageHandler(s.createPage))
	mux.Handle("POST /tasks/create", post(s.createSubmit))
	mux.Handle("GET /tasks/{id}", s.pageHandler(s.taskPage))
	mux.Handle("POST /tasks/{id}/approve", post(s.approveSubmit))
	mux.Handle("POST /tasks/{id}/cancel", post(s.cancelSubmit))
	mux.Handle("GET /unmatched", s.pageHandler(s.unmatchedPage))
	mux.Handle("POST /unmatched/{region}/{id}/match", post(s.matchSubmit))
	mux.Handle("GET /regions/{name}", s.pageHandler(s.regionPage))
	mux.Handle("GET /audit", s.pageHandler(s.auditPage))
}

func noCache(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "" || strings.HasSuffix(r.URL.Path, "/") {
			http.NotFound(w, r) // files only, no directory listing
			return
		}
		// Revalidate: after an upgrade the embedded script must not be stale.
		w.Header().Set("Cache-Control", "no-cache")
		h.ServeHTTP(w, r)
	})
}

// pageHandler renders a handler's error as an HTML page, mapping store errors to
// status codes in the one place the API uses too (httpjson.StatusFor).
func (s *Server) pageHandler(f func(http.ResponseWriter, *http.Request) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		err := unreachableAs503(f(w, r))
		if err == nil {
			return
		}
		code := httpjson.StatusFor(err)
		msg := err.Error()
		switch {
		case code == http.StatusServiceUnavailable && errors.As(err, new(*httpjson.Error)):
			s.log.Warn("page: refused", "path", r.URL.Path, "err", err) // a region that does not answer: say which
		case code == http.StatusServiceUnavailable:
			s.log.Warn("page: store unavailable", "path", r.URL.Path, "err", err)
			msg = "store unavailable: etcd does not answer. What you see elsewhere may be stale; try again in a few seconds."
		case code >= 500:
			s.log.Error("page", "path", r.URL.Path, "err", err)
			msg = "internal error (logged on the control plane); is etcd reachable?"
		}
		s.render(w, r, code, "error", page{Title: http.StatusText(code)}, map[string]any{"Code": code, "Message": msg})
	})
}

// render executes into a buffer first, so a template error never sends half a page.
func (s *Server) render(w http.ResponseWriter, r *http.Request, code int, name string, p page, data any) {
	p.Alert = s.cfg.UnmatchedAlert
	if id := identityFrom(r.Context()); id != nil {
		p.User, p.Role, p.CanOperate = id.User.Name, string(id.User.Role), id.User.Role.AtLeast(store.RoleOperator)
		if id.Session != nil {
			p.CSRF = id.Session.CSRF
		}
	}
	if !p.counted {
		// A page that did not read the regions shows the total the hub last observed;
		// only before the hub's first observation is it read here.
		if n, ok := s.overview.unmatchedTotal(); ok {
			p.Unmatched = n
		} else {
			ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
			if _, total, err := s.overview.regions(ctx); err == nil {
				p.Unmatched = total
			}
			cancel()
		}
	}
	p.Data = data
	var buf bytes.Buffer
	if err := pages[name].ExecuteTemplate(&buf, "layout", p); err != nil {
		s.log.Error("render", "page", name, "err", err)
		http.Error(w, "internal error rendering the page", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	w.WriteHeader(code)
	_, _ = buf.WriteTo(w)
}

// ---- template helpers

// ago is a coarse age for humans; the live script keeps it fresh ("data-since").
func ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := time.Since(t)
	if d < 0 {
		d = 0
	}
	switch {
	case d < time.Minute:
		return strconv.Itoa(int(d.Seconds())) + " s ago"
	case d < time.Hour:
		return strconv.Itoa(int(d.Minutes())) + " min ago"
	case d < 48*time.Hour:
		return strconv.Itoa(int(d.Hours())) + " h ago"
	}
	return strconv.Itoa(int(d.Hours()/24)) + " days ago"
}

func when(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}
