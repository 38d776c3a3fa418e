package store_test

import (
	"errors"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

// clock is a settable clock for Store.SetClock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time          { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Advance(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

func TestUsersTokensAndTheirAudit(t *testing.T) {
	e := storetest.Start(t)
	s := e.Store
	clk := &clock{now: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}
	s.SetClock(clk.Now)
	cli := store.WithActor(ctxT(t), store.Actor{Kind: store.ActorSystem, Name: "cli", Source: "local:root@ctl"})

	if has, err := s.HasUsers(cli); err != nil || has {
		t.Fatalf("HasUsers on an empty etcd = %v, %v", has, err)
	}
	for _, bad := range []struct {
		name, pw string
		role     store.Role
	}{{"Alice", "correct horse battery", "admin"}, {"alice", "short", "admin"}, {"alice", "correct horse battery", "root"}} {
		before := e.Dump(t, "/os/")
		if _, err := s.AddUser(cli, bad.name, bad.role, bad.pw); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("AddUser(%q, %q): %v, want ErrInvalid", bad.name, bad.role, err)
		}
		storetest.AssertSame(t, before, e.Dump(t, "/os/"))
	}
	if _, err := s.AddUser(cli, "alice", store.RoleOperator, "correct horse battery"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddUser(cli, "alice", store.RoleAdmin, "another long password"); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("second alice: %v", err)
	}
	raw, _ := e.Get(t, "/os/auth/users/alice")
	if !strings.Contains(raw, `"password_hash":"$argon2id$v=19$m=19456,t=2,p=1$`) || strings.Contains(raw, "correct horse") {
		t.Fatalf("stored user = %s", raw)
	}
	users, err := s.ListUsers(cli)
	if err != nil || len(users) != 1 || users[0].Name != "alice" || users[0].Role != store.RoleOperator || users[0].PasswordHash != "" {
		t.Fatalf("ListUsers = %+v, %v", users, err)
	}

	// Tokens: the secret works until revoked or expired; only its sha256 is stored.
	tok, secret, err := s.CreateToken(cli, "alice", time.Hour)
	if err != nil || !strings.HasPrefix(secret, "lpmos_"+tok.ID+"_") {
		t.Fatalf("CreateToken = %+v %q %v", tok, secret, err)
	}
	if raw, _ := e.Get(t, "/os/auth/tokens/"+tok.ID); strings.Contains(raw, secret) || !strings.Contains(raw, tok.Hash) {
		t.Fatalf("stored token = %s", raw)
	}
	if u, err := s.AuthenticateToken(cli, secret); err != nil || u.Name != "alice" || u.Role != store.RoleOperator {
		t.Fatalf("AuthenticateToken = %+v, %v", u, err)
	}
	for _, bad := range []string{"", "lpmos_", secret + "x", "lpmos_" + tok.ID + "_nope", strings.Replace(secret, tok.ID, "0000000000000000", 1)} {
		if _, err := s.AuthenticateToken(cli, bad); !errors.Is(err, store.ErrUnauthorized) {
			t.Errorf("AuthenticateToken(%q): %v", bad, err)
		}
	}
	clk.Advance(time.Hour)
	if _, err := s.AuthenticateToken(cli, secret); !errors.Is(err, store.ErrUnauthorized) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired token: %v", err)
	}
	tok2, secret2, err := s.CreateToken(cli, "alice", 0)
	if !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("ttl 0: %v", err)
	}
	tok2, secret2, err = s.CreateToken(cli, "alice", store.DefaultTokenTTL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.RevokeToken(cli, tok2.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AuthenticateToken(cli, secret2); !errors.Is(err, store.ErrUnauthorized) || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("revoked token: %v", err)
	}
	if toks, _ := s.ListTokens(cli, "alice"); len(toks) != 2 || toks[1].RevokedAt == nil || toks[0].Hash != "" {
		t.Fatalf("ListTokens = %+v", toks)
	}
	if _, _, err := s.CreateToken(cli, "bob", time.Hour); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("token for nobody: %v", err)
	}

	// Logins: a failure and a success, each audited with the right actor.
	lim := store.SessionLimits{Idle: 30 * time.Minute, Max: 12 * time.Hour}
	web := store.WithActor(ctxT(t), store.Actor{Kind: store.ActorUser, Name: "anonymous", Source: "192.0.2.7:5555"})
	if _, _, _, err := s.Login(web, "alice", "wrong password!!", lim); !errors.Is(err, store.ErrUnauthorized) {
		t.Fatalf("wrong password: %v", err)
	}
	if _, _, _, err := s.Login(web, "mallory", "whatever password", lim); !errors.Is(err, store.ErrUnauthorized) {
		t.Fatalf("unknown user: %v", err)
	}
	u, cookie, sess, err := s.Login(web, "alice", "correct horse battery", lim)
	if err != nil || u.Name != "alice" || cookie == "" || sess.CSRF == "" {
		t.Fatalf("login = %+v %q %+v %v", u, cookie, sess, err)
	}
	if keys := e.Dump(t, "/os/auth/sessions/"); len(keys) != 1 || strings.Contains(strings.Join(mapKeys(keys), ""), cookie) {
		t.Fatalf("sessions in etcd = %v (the cookie itself must not be a key)", keys)
	}
	// Sessions slide on use, expire when idle or too old.
	clk.Advance(29 * time.Minute)
	if _, got, err := s.SessionUser(web, cookie, lim); err != nil || got.CSRF != sess.CSRF {
		t.Fatalf("session after 29 min: %v", err)
	}
	clk.Advance(29 * time.Minute)
	if _, _, err := s.SessionUser(web, cookie, lim); err != nil {
		t.Fatalf("session used 29 min ago: %v", err)
	}
	clk.Advance(30 * time.Minute)
	if _, _, err := s.SessionUser(web, cookie, lim); !errors.Is(err, store.ErrUnauthorized) {
		t.Fatalf("idle session: %v", err)
	}
	_, cookie, _, _ = s.Login(web, "alice", "correct horse battery", lim)
	for range 25 {
		clk.Advance(29 * time.Minute)
		if _, _, err := s.SessionUser(web, cookie, lim); err != nil {
			if !strings.Contains(err.Error(), "older than") {
				t.Fatalf("old session: %v", err)
			}
			break
		}
	}
	if _, _, err := s.SessionUser(web, cookie, lim); !errors.Is(err, store.ErrUnauthorized) {
		t.Fatalf("a 12 h old session still works: %v", err)
	}

	// Disabling stops password, token and session at once.
	tok3, secret3, _ := s.CreateToken(cli, "alice", time.Hour)
	_, cookie, _, _ = s.Login(web, "alice", "correct horse battery", lim)
	if _, err := s.DisableUser(cli, "alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AuthenticateToken(cli, secret3); !errors.Is(err, store.ErrUnauthorized) {
		t.Fatalf("token %s of a disabled user: %v", tok3.ID, err)
	}
	if _, _, err := s.SessionUser(web, cookie, lim); !errors.Is(err, store.ErrUnauthorized) {
		t.Fatalf("session of a disabled user: %v", err)
	}
	if _, _, _, err := s.Login(web, "alice", "correct horse battery", lim); !errors.Is(err, store.ErrUnauthorized) {
		t.Fatalf("login of a disabled user: %v", err)
	}
	if _, _, err := s.CreateToken(cli, "alice", time.Hour); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("token for a disabled user: %v", err)
	}

	// The audit trail: who did what to whom (entries of the same clock instant sort by
	// their random suffix, so compare as sets).
	entries, err := s.ListAudit(cli, store.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for i := len(entries) - 1; i >= 0; i-- {
		x := entries[i]
		if x.Region != "" {
			t.Errorf("entry %s has region %q", x.Action, x.Region)
		}
		got = append(got, x.Action+" "+x.Actor+"@"+x.Source+" -> "+x.Target+" "+x.Detail["reason"])
	}
	want := []string{
		"user.add system:cli@local:root@ctl -> alice ",
		"token.create system:cli@local:root@ctl -> alice ",
		"token.create system:cli@local:root@ctl -> alice ",
		"token.revoke system:cli@local:root@ctl -> alice ",
		"login.failure anonymous@192.0.2.7:5555 -> alice wrong password",
		"login.failure anonymous@192.0.2.7:5555 -> mallory unknown user",
		"login.success alice@192.0.2.7:5555 -> alice ",
		"login.success alice@192.0.2.7:5555 -> alice ",
		"token.create system:cli@local:root@ctl -> alice ",
		"login.success alice@192.0.2.7:5555 -> alice ",
		"user.disable system:cli@local:root@ctl -> alice ",
		"login.failure anonymous@192.0.2.7:5555 -> alice user disabled",
	}
	sort.Strings(got)
	sort.Strings(want)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("audit trail:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestBootstrapOnlyOnce(t *testing.T) {
	e := storetest.Start(t)
	ctx := store.WithActor(ctxT(t), store.Actor{Kind: store.ActorSystem, Name: "bootstrap"})
	created, secret, err := e.Store.Bootstrap(ctx, "admin", store.RandomPassword(), store.DefaultTokenTTL)
	if err != nil || !created || secret == "" {
		t.Fatalf("Bootstrap = %v %q %v", created, secret, err)
	}
	if u, err := e.Store.AuthenticateToken(ctx, secret); err != nil || u.Role != store.RoleAdmin {
		t.Fatalf("bootstrap token: %+v %v", u, err)
	}
	before := e.Dump(t, "/os/")
	created, secret, err = e.Store.Bootstrap(ctx, "root", store.RandomPassword(), store.DefaultTokenTTL)
	if err != nil || created || secret != "" {
		t.Fatalf("second Bootstrap = %v %q %v", created, secret, err)
	}
	storetest.AssertSame(t, before, e.Dump(t, "/os/"))
}

func TestRoles(t *testing.T) {
	for _, c := range []struct {
		r, min store.Role
		ok     bool
	}{{"admin", "operator", true}, {"operator", "operator", true}, {"viewer", "operator", false}, {"viewer", "viewer", true}, {"", "viewer", false}, {"root", "viewer", false}} {
		if got := c.r.AtLeast(c.min); got != c.ok {
			t.Errorf("%q.AtLeast(%q) = %v", c.r, c.min, got)
		}
	}
}

func mapKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
