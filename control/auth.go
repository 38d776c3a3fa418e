package control

import (
	"context"
	"crypto/subtle"
	"errors"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"lpmos.dev/lpmos/internal/ratelimit"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/httpjson"
)

// Who may do what, and how a request proves who it is:
//
//   - the REST API (/api/) takes only "Authorization: Bearer <token>" (never a cookie,
//     so no other site can make an operator's browser call it), and a state-changing
//     call must also say Content-Type: application/json;
//   - the pages take a session cookie (after /login) or a bearer token (scripts,
//     monitoring); a form posted with the cookie must carry the session's anti-CSRF
//     token, and every form post passes the Sec-Fetch-Site/Origin check;
//   - /live (WebSocket) takes either and needs a same-origin Origin header;
//   - every request's Host must be one of --allowed-hosts (DNS rebinding).

// roleTable is the least role of each route that needs more than the default: GET and
// HEAD need viewer, anything else admin, unless listed here. A route added later is
// therefore admin-only until someone lists it.
var roleTable = map[string]store.Role{
	"GET /api/v1/audit":                          store.RoleOperator,
	"GET /audit":                                 store.RoleOperator,
	"POST /api/v1/tasks":                         store.RoleOperator,
	"POST /api/v1/tasks/{id}/approve":            store.RoleOperator,
	"POST /api/v1/tasks/{id}/cancel":             store.RoleOperator,
	"POST /api/v1/tasks/{id}/reset-agent-token":  store.RoleOperator,
	"POST /api/v1/unmatched/{region}/{id}/match": store.RoleOperator,
	"GET /tasks/create":                          store.RoleOperator, // a form page only
	"POST /tasks/create":                         store.RoleOperator,
	"POST /tasks/{id}/approve":                   store.RoleOperator, // reject is cancel with action=reject
	"POST /tasks/{id}/cancel":                    store.RoleOperator,
	"POST /unmatched/{region}/{id}/match":        store.RoleOperator,
	"POST /logout":                               store.RoleViewer,
}

// publicRoutes need no identity.
var publicRoutes = []string{"GET /login", "POST /login", "GET /static/"}

type routeTable struct {
	mux    *http.ServeMux
	public map[string]bool
}

func newRouteTable() *routeTable {
	rt := &routeTable{mux: http.NewServeMux(), public: map[string]bool{}}
	nop := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	for p := range roleTable {
		rt.mux.Handle(p, nop)
	}
	for _, p := range publicRoutes {
		rt.mux.Handle(p, nop)
		rt.public[p] = true
	}
	return rt
}

// classify says whether r's route is public, and otherwise the least role it needs,
// matching patterns as the router does.
func (rt *routeTable) classify(r *http.Request) (public bool, min store.Role) {
	_, pattern := rt.mux.Handler(r)
	if rt.public[pattern] {
		return true, ""
	}
	if role, ok := roleTable[pattern]; ok {
		return false, role
	}
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return false, store.RoleViewer
	}
	return false, store.RoleAdmin
}

// identity is who a request is, once authenticated.
type identity struct {
	User    store.User
	Session *store.Session // nil when a bearer token authenticated the request
}

type identityKey struct{}

func identityFrom(ctx context.Context) *identity {
	id, _ := ctx.Value(identityKey{}).(*identity)
	return id
}

const sessionCookie = "lpmos_session"

func isAPI(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, "/api/") }

// guard is the middleware in front of every route: Host check, authentication,
// authorization, and the API's CSRF rules. Who is asking goes into the request's
// context as the store.Actor every approved_by and audit entry takes.
func (s *Server) guard(next http.Handler) http.Handler {
	rt := newRouteTable()
	cop := http.NewCrossOriginProtection()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.hostAllowed(r.Host) {
			s.refuse(w, r, http.StatusMisdirectedRequest, "host "+r.Host+" is not served here (see --allowed-hosts)")
			return
		}
		if r.URL.Path != "/live" { // a WebSocket lives on; every other request is bounded
			ctx, cancel := context.WithTimeout(r.Context(), httpjson.RequestDeadline)
			defer cancel()
			r = r.WithContext(ctx)
		}
		public, min := rt.classify(r)
		anon := store.Actor{Kind: store.ActorUser, Name: "anonymous", Source: r.RemoteAddr}
		if public {
			next.ServeHTTP(w, r.WithContext(store.WithActor(r.Context(), anon)))
			return
		}
		id, err := s.authenticate(r)
		if err != nil {
			if !errors.Is(err, store.ErrUnauthorized) {
				s.log.Error("authenticate", "err", err)
				s.refuse(w, r, http.StatusServiceUnavailable, "store unavailable: cannot check credentials (is etcd reachable?)")
				return
			}
			s.log.Info("refused: not authenticated", "method", r.Method, "path", r.URL.Path, "from", r.RemoteAddr, "why", err)
			s.unauthenticated(w, r, err)
			return
		}
		if !id.User.Role.AtLeast(min) {
			s.refuse(w, r, http.StatusForbidden, "forbidden: "+id.User.Name+" is "+string(id.User.Role)+"; this needs "+string(min))
			return
		}
		if isAPI(r) && !safeMethod(r.Method) {
			if err := cop.Check(r); err != nil {
				s.refuse(w, r, http.StatusForbidden, "cross-origin request refused")
				return
			}
			if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
				s.refuse(w, r, http.StatusUnsupportedMediaType, "Content-Type must be application/json")
				return
			}
		}
		ctx := context.WithValue(r.Context(), identityKey{}, id)
		ctx = store.WithActor(ctx, store.Actor{Kind: store.ActorUser, Name: id.User.Name, Source: r.RemoteAddr})
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

// authenticate finds who r is: a bearer token first, else (pages and /live only) the
// session cookie. No credentials at all is an ErrUnauthorized too.
func (s *Server) authenticate(r *http.Request) (*identity, error) {
	ctx := r.Context() // bounded by guard's request deadline
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, tok, _ := strings.Cut(h, " ")
		if !strings.EqualFold(scheme, "Bearer") || tok == "" {
			return nil, errors.Join(store.ErrUnauthorized, errors.New("Authorization is not a Bearer token"))
		}
		u, err := s.home.AuthenticateToken(ctx, strings.TrimSpace(tok))
		if err != nil {
			return nil, err
		}
		return &identity{User: u}, nil
	}
	if isAPI(r) {
		return nil, errors.Join(store.ErrUnauthorized, errors.New("no bearer token"))
	}
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return nil, errors.Join(store.ErrUnauthorized, errors.New("no session"))
	}
	u, sess, err := s.home.SessionUser(ctx, c.Value, s.sessionLimits())
	if err != nil {
		return nil, err
	}
	return &identity{User: u, Session: &sess}, nil
}

// now is the control plane's clock: Config.Clock in tests, else the wall clock.
func (s *Server) now() time.Time {
	if s.cfg.Clock != nil {
		return s.cfg.Clock()
	}
	return time.Now()
}

func (s *Server) sessionLimits() store.SessionLimits {
	return store.SessionLimits{Idle: s.cfg.SessionIdle, Max: s.cfg.SessionMax}
}

// unauthenticated answers a request without valid credentials: 401 for the API and
// /live, the login page for a person's page request.
func (s *Server) unauthenticated(w http.ResponseWriter, r *http.Request, err error) {
	if isAPI(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="lpmos"`)
		msg := "authentication required: send Authorization: Bearer <token> (lpmos-control tokens create)"
		if r.Header.Get("Authorization") != "" {
			msg = "invalid, expired or revoked token"
		}
		httpjson.Write(w, http.StatusUnauthorized, map[string]any{"status": "error", "message": msg})
		return
	}
	if c, cerr := r.Cookie(sessionCookie); cerr == nil && c.Value != "" {
		clearSessionCookie(w, r) // expired or unknown: stop sending it
		if r.Header.Get("Authorization") == "" {
			s.live.endSession(c.Value, "session expired") // its feeds end now, not at their own check
		}
	}
	if (r.Method == http.MethodGet || r.Method == http.MethodHead) && r.URL.Path != "/live" && r.Header.Get("Authorization") == "" {
		http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
		return
	}
	s.refuse(w, r, http.StatusUnauthorized, "log in first")
}

// refuse answers with code: JSON on the API, a page elsewhere.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, code int, msg string) {
	if isAPI(r) {
		body := map[string]any{"status": "error", "message": msg}
		if code == http.StatusServiceUnavailable {
			body["retry_after"] = httpjson.RetryAfterUnavailable
		}
		httpjson.Write(w, code, body)
		return
	}
	if r.URL.Path == "/live" || code == http.StatusMisdirectedRequest {
		http.Error(w, msg, code)
		return
	}
	s.render(w, r, code, "error", page{Title: http.StatusText(code), counted: true}, map[string]any{"Code": code, "Message": msg})
}

// hostAllowed: the Host header (without port) is one of --allowed-hosts, or the list
// has "*".
func (s *Server) hostAllowed(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.ToLower(strings.Trim(host, "[]"))
	for _, a := range s.cfg.AllowedHosts {
		if a == "*" || a == host {
			return true
		}
	}
	return false
}

// checkFormCSRF refuses a form posted with the session cookie unless it carries the
// session's anti-CSRF token. A bearer-authenticated post (a script) has no cookie to
// abuse and needs none.
func checkFormCSRF(r *http.Request) error {
	id := identityFrom(r.Context())
	if id == nil || id.Session == nil {
		return nil
	}
	if err := r.ParseForm(); err != nil {
		return httpjson.Errorf(http.StatusBadRequest, "bad form: %v", err)
	}
	if subtle.ConstantTimeCompare([]byte(r.PostForm.Get("csrf")), []byte(id.Session.CSRF)) != 1 {
		return httpjson.Errorf(http.StatusForbidden, "the form lacks this session's anti-CSRF token: reload the page and try again")
	}
	return nil
}

// sameOrigin: the request has an Origin header naming this very host (WebSocket).
func sameOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		return false
	}
	u, err := url.Parse(o)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && strings.EqualFold(u.Host, r.Host)
}

// ---- login and logout

func setSessionCookie(w http.ResponseWriter, r *http.Request, value string, maxAge time.Duration) {
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: value, Path: "/", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil, MaxAge: int(maxAge.Seconds())})
}

func clearSessionCookie(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil, MaxAge: -1})
}

type loginData struct {
	Name, Next, Error string
}

func (s *Server) loginPage(w http.ResponseWriter, r *http.Request) error {
	s.render(w, r, http.StatusOK, "login", page{Title: "Log in", counted: true}, loginData{Next: safeNext(r.URL.Query().Get("next"))})
	return nil
}

// safeNext keeps a post-login redirect on this site.
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") || strings.HasPrefix(next, "/login") {
		return "/"
	}
	return next
}

func (s *Server) loginSubmit(w http.ResponseWriter, r *http.Request) error {
	if err := r.ParseForm(); err != nil {
		return httpjson.Errorf(http.StatusBadRequest, "bad form: %v", err)
	}
	name, pw := strings.TrimSpace(r.PostForm.Get("name")), r.PostForm.Get("password")
	d := loginData{Name: name, Next: safeNext(r.PostForm.Get("next"))}
	if !s.logins.allow(r, name, time.Now()) {
		// Before the password hash and the audit entry a failure writes: guessing
		// costs the guesser time, not us etcd space or CPU.
		s.log.Warn("login refused: too many attempts", "from", r.RemoteAddr, "user", name)
		d.Error = "Too many login attempts: wait a minute and try again."
		w.Header().Set("Retry-After", "60")
		s.render(w, r, http.StatusTooManyRequests, "login", page{Title: "Log in", counted: true}, d)
		return nil
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	u, cookie, _, err := s.home.Login(ctx, name, pw, s.sessionLimits())
	if errors.Is(err, store.ErrUnauthorized) {
		s.log.Info("login refused", "from", r.RemoteAddr, "why", err)
		d.Error = "Wrong user name or password (or the user is disabled)."
		s.render(w, r, http.StatusUnauthorized, "login", page{Title: "Log in", counted: true}, d)
		return nil
	}
	if err != nil {
		return err
	}
	s.log.Info("login", "user", u.Name, "role", u.Role, "from", r.RemoteAddr)
	setSessionCookie(w, r, cookie, s.cfg.SessionMax)
	http.Redirect(w, r, d.Next, http.StatusSeeOther)
	return nil
}

func (s *Server) logoutSubmit(w http.ResponseWriter, r *http.Request) error {
	if c, err := r.Cookie(sessionCookie); err == nil {
		if err := s.home.Logout(r.Context(), c.Value); err != nil {
			return err
		}
		s.live.endSession(c.Value, "logged out")
	}
	clearSessionCookie(w, r)
	http.Redirect(w, r, "/login", http.StatusSeeOther)
	return nil
}

// loginLimits bound password guessing: per source address and per user name 10
// attempts, then one per 6 s; all attempts together 5/s (each failure is an audit
// entry in etcd, and each attempt an argon2id hash).
type loginLimits struct {
	bySource, byName *ratelimit.Keyed
	all              *ratelimit.Bucket
}

func newLoginLimits() loginLimits {
	return loginLimits{bySource: ratelimit.NewKeyed(10, 6*time.Second), byName: ratelimit.NewKeyed(10, 6*time.Second),
		all: ratelimit.NewBucket(50, 200*time.Millisecond)}
}

func (l loginLimits) allow(r *http.Request, name string, now time.Time) bool {
	src, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		src = r.RemoteAddr
	}
	return l.bySource.Allow(src, now) && l.byName.Allow(name, now) && l.all.Allow(now)
}
