package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/crypto/argon2"
)

// The control plane's identities: users with a role, API tokens, web sessions. They
// live under /os/auth/, which only the control plane (and its CLI) reads; every change
// to a user or token is audited in the same transaction, in the _control scope.

// Role is what a user may do. Each role includes the ones below it.
type Role string

const (
	RoleViewer   Role = "viewer"   // read everything but the audit trail
	RoleOperator Role = "operator" // + create, approve, reject, cancel, match, reset agent tokens, read the audit trail
	RoleAdmin    Role = "admin"    // + users, tokens, regions
)

// Roles in increasing order of power.
var Roles = []Role{RoleViewer, RoleOperator, RoleAdmin}

func (r Role) rank() int {
	for i, x := range Roles {
		if x == r {
			return i + 1
		}
	}
	return 0
}

// Valid reports whether r is one of Roles.
func (r Role) Valid() bool { return r.rank() > 0 }

// AtLeast reports whether r includes min. An unknown role includes nothing.
func (r Role) AtLeast(min Role) bool { return r.Valid() && r.rank() >= min.rank() }

// ErrUnauthorized: no valid credentials (unknown user, wrong password, disabled user,
// unknown, revoked or expired token or session). The message says which to the
// operator's log; the HTTP layer answers 401 without the detail.
var ErrUnauthorized = errors.New("unauthorized")

// Audit actions of the control plane's identities.
const (
	AuditLoginSuccess = "login.success"
	AuditLoginFailure = "login.failure"
	AuditLogout       = "logout"
	AuditUserAdd      = "user.add"
	AuditUserDisable  = "user.disable"
	AuditTokenCreate  = "token.create"
	AuditTokenRevoke  = "token.revoke"
)

// User is a person (or a script's owner) who may use the control plane.
type User struct {
	Name       string     `json:"name"`
	Role       Role       `json:"role"`
	Disabled   bool       `json:"disabled,omitempty"`
	CreatedAt  time.Time  `json:"created_at"`
	DisabledAt *time.Time `json:"disabled_at,omitempty"`
	// PasswordHash is argon2id in the PHC string format; never leaves the store.
	PasswordHash string `json:"password_hash"`
}

// Token is an API token as stored: the secret itself is never stored, only its sha256
// (the secret is 32 random bytes, so a fast hash is enough: nothing to brute-force).
type Token struct {
	ID        string     `json:"id"`
	User      string     `json:"user"`
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt time.Time  `json:"expires_at"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
	Hash      string     `json:"sha256"`
}

// Active reports whether t may be used at now.
func (t Token) Active(now time.Time) bool { return t.RevokedAt == nil && now.Before(t.ExpiresAt) }

var userNameRE = regexp.MustCompile(`^[a-z][a-z0-9._-]{0,62}$`)

// ValidateUserName: lower-case letters, digits, '.', '_', '-', starting with a letter,
// at most 63 characters.
func ValidateUserName(name string) error {
	if !userNameRE.MatchString(name) {
		return invalid("name", "%q is not a user name: lower-case letters, digits, '.', '_' or '-', starting with a letter, at most 63 characters", name)
	}
	return nil
}

// MinPasswordLen is the shortest password AddUser accepts.
const MinPasswordLen = 12

func validatePassword(pw string) error {
	if len(pw) < MinPasswordLen || len(pw) > 1024 {
		return invalid("password", "must be %d to 1024 characters", MinPasswordLen)
	}
	return nil
}

// argon2id parameters: OWASP's recommendation (19 MiB, 2 passes, 1 lane). Each hash
// records its own, so raising them later keeps old hashes valid.
const (
	argonTime    = 2
	argonMemory  = 19 * 1024
	argonThreads = 1
	argonKeyLen  = 32
)

// HashPassword returns pw as an argon2id PHC string.
func HashPassword(pw string) string {
	salt := make([]byte, 16)
	rand.Read(salt)
	key := argon2.IDKey([]byte(pw), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	enc := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemory, argonTime, argonThreads,
		enc.EncodeToString(salt), enc.EncodeToString(key))
}

// checkPassword compares pw with a PHC string in constant time.
func checkPassword(phc, pw string) bool {
	parts := strings.Split(phc, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return false
	}
	var v int
	var m, t uint32
	var p uint8
	if _, err := fmt.Sscanf(parts[2], "v=%d", &v); err != nil || v != argon2.Version {
		return false
	}
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &p); err != nil || m == 0 || m > 1<<21 || t == 0 || t > 16 || p == 0 {
		return false
	}
	enc := base64.RawStdEncoding
	salt, err1 := enc.DecodeString(parts[4])
	want, err2 := enc.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(want) == 0 {
		return false
	}
	got := argon2.IDKey([]byte(pw), salt, t, m, p, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1
}

// dummyHash is compared against when the user does not exist, so a login for an
// unknown name takes as long as one for a known name.
var dummyHash = HashPassword("not a password of anybody's")

func randomString(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func sha256Hex(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// RandomPassword is a generated password (24 characters, 144 bits).
func RandomPassword() string { return randomString(18) }

func (s *Store) getUser(ctx context.Context, name string) (User, int64, error) {
	resp, err := s.c.Get(ctx, userKey(name))
	if err != nil {
		return User{}, 0, fmt.Errorf("read user %s: %w", name, err)
	}
	if len(resp.Kvs) == 0 {
		return User{}, 0, fmt.Errorf("%w: user %s", ErrNotFound, name)
	}
	var u User
	if err := json.Unmarshal(resp.Kvs[0].Value, &u); err != nil {
		return User{}, 0, fmt.Errorf("user %s: %w", name, err)
	}
	return u, resp.Kvs[0].ModRevision, nil
}

func putJSON(key string, v any) clientv3.Op {
	b, _ := json.Marshal(v)
	return clientv3.OpPut(key, string(b))
}

// AddUser creates a user. An existing name is an ErrConflict.
func (s *Store) AddUser(ctx context.Context, name string, role Role, password string) (User, error) {
	u, err := s.newUser(name, role, password)
	if err != nil {
		return User{}, err
	}
	audit := newAudit(ctx, s.now(), AuditUserAdd, "", "").with("role", string(role))
	audit.Target = name
	resp, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(userKey(name)), "=", 0)).
		Then(putJSON(userKey(name), u), audit.op()).Else(clientv3.OpGet(userKey(name))).Commit()
	if err != nil {
		return User{}, fmt.Errorf("add user %s: %w", name, err)
	}
	if !resp.Succeeded && !sameUser(resp, u) {
		return User{}, fmt.Errorf("%w: user %s exists", ErrConflict, name)
	}
	return u, nil
}

// sameUser reports whether a create-if-absent that failed found the very user it
// wrote: its own commit, whose answer was lost and retried (retry.go). The password
// hash is salted, so no other writer stores the same one.
func sameUser(resp *clientv3.TxnResponse, u User) bool {
	kvs := resp.Responses[0].GetResponseRange().Kvs
	var got User
	return len(kvs) == 1 && json.Unmarshal(kvs[0].Value, &got) == nil && got.PasswordHash == u.PasswordHash
}

func (s *Store) newUser(name string, role Role, password string) (User, error) {
	if err := ValidateUserName(name); err != nil {
		return User{}, err
	}
	if !role.Valid() {
		return User{}, invalid("role", "%q is not one of %v", role, Roles)
	}
	if err := validatePassword(password); err != nil {
		return User{}, err
	}
	return User{Name: name, Role: role, CreatedAt: s.now(), PasswordHash: HashPassword(password)}, nil
}

// ListUsers returns every user by name, without password hashes.
func (s *Store) ListUsers(ctx context.Context) ([]User, error) {
	resp, err := s.c.Get(ctx, userPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	out := []User{}
	for _, kv := range resp.Kvs {
		var u User
		if json.Unmarshal(kv.Value, &u) == nil {
			u.PasswordHash = ""
			out = append(out, u)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// HasUsers reports whether any user exists (bootstrap is a no-op then).
func (s *Store) HasUsers(ctx context.Context) (bool, error) {
	resp, err := s.c.Get(ctx, userPrefix(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return false, fmt.Errorf("count users: %w", err)
	}
	return resp.Count > 0, nil
}

// DisableUser disables a user: their password, tokens and sessions stop working at
// once (every request reads the user). Disabling twice is not an error.
func (s *Store) DisableUser(ctx context.Context, name string) (User, error) {
	for range maxRetries {
		u, rev, err := s.getUser(ctx, name)
		if err != nil {
			return User{}, err
		}
		if u.Disabled {
			return u, nil
		}
		now := s.now()
		u.Disabled, u.DisabledAt = true, &now
		audit := newAudit(ctx, now, AuditUserDisable, "", "")
		audit.Target = name
		resp, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(userKey(name)), "=", rev)).
			Then(putJSON(userKey(name), u), audit.op()).Commit()
		if err != nil {
			return User{}, fmt.Errorf("disable user %s: %w", name, err)
		}
		if resp.Succeeded {
			return u, nil
		}
	}
	return User{}, fmt.Errorf("%w: user %s: too many concurrent updates", ErrConflict, name)
}

// tokenPrefixText starts every API token: "lpmos_{id}_{secret}". The id finds the
// stored token in one read; the whole string's sha256 must match.
const tokenPrefixText = "lpmos_"

// DefaultTokenTTL is how long a token lives unless told otherwise.
const DefaultTokenTTL = 720 * time.Hour

func (s *Store) newToken(user string, ttl time.Duration) (Token, string, error) {
	if ttl <= 0 || ttl > 10*365*24*time.Hour {
		return Token{}, "", invalid("ttl", "%s is not between 1s and 10 years", ttl)
	}
	var idb [8]byte
	rand.Read(idb[:])
	id := hex.EncodeToString(idb[:])
	secret := tokenPrefixText + id + "_" + randomString(32)
	now := s.now()
	return Token{ID: id, User: user, CreatedAt: now, ExpiresAt: now.Add(ttl), Hash: sha256Hex(secret)}, secret, nil
}

// CreateToken issues an API token for an enabled user. The secret is returned once
// and never stored.
func (s *Store) CreateToken(ctx context.Context, user string, ttl time.Duration) (Token, string, error) {
	for range maxRetries {
		u, rev, err := s.getUser(ctx, user)
		if err != nil {
			return Token{}, "", err
		}
		if u.Disabled {
			return Token{}, "", fmt.Errorf("%w: user %s is disabled", ErrConflict, user)
		}
		tok, secret, err := s.newToken(user, ttl)
		if err != nil {
			return Token{}, "", err
		}
		audit := newAudit(ctx, tok.CreatedAt, AuditTokenCreate, "", "").with("token_id", tok.ID).with("expires_at", tok.ExpiresAt.Format(time.RFC3339))
		audit.Target = user
		resp, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(userKey(user)), "=", rev)).
			Then(putJSON(tokenKey(tok.ID), tok), audit.op()).Commit()
		if err != nil {
			return Token{}, "", fmt.Errorf("create token: %w", err)
		}
		if resp.Succeeded {
			return tok, secret, nil
		}
	}
	return Token{}, "", fmt.Errorf("%w: create token: too many concurrent updates", ErrConflict)
}

// ListTokens returns tokens (of user, or all when ""), oldest first, without hashes.
func (s *Store) ListTokens(ctx context.Context, user string) ([]Token, error) {
	resp, err := s.c.Get(ctx, tokenPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	out := []Token{}
	for _, kv := range resp.Kvs {
		var t Token
		if json.Unmarshal(kv.Value, &t) == nil && (user == "" || t.User == user) {
			t.Hash = ""
			out = append(out, t)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out, nil
}

func (s *Store) getToken(ctx context.Context, id string) (Token, int64, error) {
	resp, err := s.c.Get(ctx, tokenKey(id))
	if err != nil {
		return Token{}, 0, fmt.Errorf("read token: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return Token{}, 0, fmt.Errorf("%w: token %s", ErrNotFound, id)
	}
	var t Token
	if err := json.Unmarshal(resp.Kvs[0].Value, &t); err != nil {
		return Token{}, 0, fmt.Errorf("token %s: %w", id, err)
	}
	return t, resp.Kvs[0].ModRevision, nil
}

var tokenIDRE = regexp.MustCompile(`^[0-9a-f]{16}$`)

// RevokeToken revokes a token by id; it stays listed as revoked. Revoking twice is
// not an error.
func (s *Store) RevokeToken(ctx context.Context, id string) (Token, error) {
	if !tokenIDRE.MatchString(id) {
		return Token{}, invalid("id", "%q is not a token id (16 hex digits, see `tokens list`)", id)
	}
	for range maxRetries {
		t, rev, err := s.getToken(ctx, id)
		if err != nil {
			return Token{}, err
		}
		if t.RevokedAt != nil {
			return t, nil
		}
		now := s.now()
		t.RevokedAt = &now
		audit := newAudit(ctx, now, AuditTokenRevoke, "", "").with("token_id", id)
		audit.Target = t.User
		resp, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(tokenKey(id)), "=", rev)).
			Then(putJSON(tokenKey(id), t), audit.op()).Commit()
		if err != nil {
			return Token{}, fmt.Errorf("revoke token %s: %w", id, err)
		}
		if resp.Succeeded {
			t.Hash = ""
			return t, nil
		}
	}
	return Token{}, fmt.Errorf("%w: token %s: too many concurrent updates", ErrConflict, id)
}

// AuthenticateToken returns the enabled user a bearer token belongs to. Any failure is
// an ErrUnauthorized saying why (for the log, not the client).
func (s *Store) AuthenticateToken(ctx context.Context, secret string) (User, error) {
	rest, ok := strings.CutPrefix(secret, tokenPrefixText)
	id, _, ok2 := strings.Cut(rest, "_")
	if !ok || !ok2 || !tokenIDRE.MatchString(id) {
		return User{}, fmt.Errorf("%w: malformed token", ErrUnauthorized)
	}
	t, _, err := s.getToken(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return User{}, fmt.Errorf("%w: unknown token", ErrUnauthorized)
	}
	if err != nil {
		return User{}, err
	}
	if subtle.ConstantTimeCompare([]byte(sha256Hex(secret)), []byte(t.Hash)) != 1 {
		return User{}, fmt.Errorf("%w: unknown token", ErrUnauthorized)
	}
	switch now := s.now(); {
	case t.RevokedAt != nil:
		return User{}, fmt.Errorf("%w: token %s is revoked", ErrUnauthorized, id)
	case !now.Before(t.ExpiresAt):
		return User{}, fmt.Errorf("%w: token %s expired at %s", ErrUnauthorized, id, t.ExpiresAt.Format(time.RFC3339))
	}
	return s.enabledUser(ctx, t.User)
}

func (s *Store) enabledUser(ctx context.Context, name string) (User, error) {
	u, _, err := s.getUser(ctx, name)
	if errors.Is(err, ErrNotFound) {
		return User{}, fmt.Errorf("%w: user %s no longer exists", ErrUnauthorized, name)
	}
	if err != nil {
		return User{}, err
	}
	if u.Disabled {
		return User{}, fmt.Errorf("%w: user %s is disabled", ErrUnauthorized, name)
	}
	u.PasswordHash = ""
	return u, nil
}

// Bootstrap creates the first user (an admin) and an API token for it, only while no
// user exists; created is false (and nothing is written) otherwise.
func (s *Store) Bootstrap(ctx context.Context, name, password string, ttl time.Duration) (created bool, token string, err error) {
	u, err := s.newUser(name, RoleAdmin, password)
	if err != nil {
		return false, "", err
	}
	tok, secret, err := s.newToken(name, ttl)
	if err != nil {
		return false, "", err
	}
	add := newAudit(ctx, u.CreatedAt, AuditUserAdd, "", "").with("role", string(RoleAdmin)).with("bootstrap", "true")
	add.Target = name
	tc := newAudit(ctx, u.CreatedAt, AuditTokenCreate, "", "").with("token_id", tok.ID).with("expires_at", tok.ExpiresAt.Format(time.RFC3339))
	tc.Target = name
	resp, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(userPrefix()), "=", 0).WithPrefix()).
		Then(putJSON(userKey(name), u), putJSON(tokenKey(tok.ID), tok), add.op(), tc.op()).Else(clientv3.OpGet(userKey(name))).Commit()
	if err != nil {
		return false, "", fmt.Errorf("bootstrap: %w", err)
	}
	if !resp.Succeeded && !sameUser(resp, u) {
		return false, "", nil
	}
	return true, secret, nil
}

// ---- web sessions

// Session is a logged-in browser, stored at /os/auth/sessions/{sha256(cookie)} so that
// reading etcd does not give anybody a usable cookie, and so that sessions survive a
// control plane restart and are shared by several control planes.
type Session struct {
	User      string    `json:"user"`
	CreatedAt time.Time `json:"created_at"`
	LastSeen  time.Time `json:"last_seen"`
	// CSRF is the anti-CSRF token of this session's forms.
	CSRF   string `json:"csrf"`
	Source string `json:"source,omitempty"`
}

// SessionLimits are how long a session lives: Idle since its last request, Max since
// the login.
type SessionLimits struct{ Idle, Max time.Duration }

// sessionTouch: a session's last_seen is written at most this often (a page load does
// not cost an etcd write each time).
const sessionTouch = time.Minute

// Login checks name and password and opens a session; the cookie value is returned
// once. Success and failure are both audited (the failure with the name tried as its
// target, and ctx's actor, who is nobody yet).
func (s *Store) Login(ctx context.Context, name, password string, lim SessionLimits) (User, string, Session, error) {
	u, _, err := s.getUser(ctx, name)
	reason := ""
	switch {
	case errors.Is(err, ErrNotFound) || ValidateUserName(name) != nil:
		checkPassword(dummyHash, password)
		reason = "unknown user"
	case err != nil:
		return User{}, "", Session{}, err
	case !checkPassword(u.PasswordHash, password):
		reason = "wrong password"
	case u.Disabled:
		reason = "user disabled"
	}
	if reason != "" {
		if len(name) > 64 {
			name = name[:64]
		}
		if err := s.Audit(ctx, AuditLoginFailure, "", name, map[string]string{"reason": reason}); err != nil {
			return User{}, "", Session{}, err
		}
		return User{}, "", Session{}, fmt.Errorf("%w: login as %q: %s", ErrUnauthorized, name, reason)
	}
	now := s.now()
	cookie := randomString(32)
	sess := Session{User: name, CreatedAt: now, LastSeen: now, CSRF: randomString(32), Source: ActorFrom(ctx).Source}
	lease, err := s.c.Grant(ctx, int64((lim.Max + time.Minute).Seconds()))
	if err != nil {
		return User{}, "", Session{}, fmt.Errorf("session lease: %w", err)
	}
	// The user logging in is the actor of their own login.
	actx := WithActor(ctx, Actor{Kind: ActorUser, Name: name, Source: ActorFrom(ctx).Source})
	audit := newAudit(actx, now, AuditLoginSuccess, "", "")
	audit.Target = name
	b, _ := json.Marshal(sess)
	if _, err := s.c.Txn(ctx).Then(clientv3.OpPut(sessionKey(sha256Hex(cookie)), string(b), clientv3.WithLease(lease.ID)), audit.op()).Commit(); err != nil {
		return User{}, "", Session{}, fmt.Errorf("open session: %w", err)
	}
	u.PasswordHash = ""
	return u, cookie, sess, nil
}

// SessionUser returns the enabled user of a session cookie and the session, sliding
// its idle expiry. An unknown, idle or too old session is an ErrUnauthorized (and is
// removed).
func (s *Store) SessionUser(ctx context.Context, cookie string, lim SessionLimits) (User, Session, error) {
	if cookie == "" || len(cookie) > 100 {
		return User{}, Session{}, fmt.Errorf("%w: no session", ErrUnauthorized)
	}
	key := sessionKey(sha256Hex(cookie))
	resp, err := s.c.Get(ctx, key)
	if err != nil {
		return User{}, Session{}, fmt.Errorf("read session: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return User{}, Session{}, fmt.Errorf("%w: unknown session", ErrUnauthorized)
	}
	kv := resp.Kvs[0]
	var sess Session
	if err := json.Unmarshal(kv.Value, &sess); err != nil {
		return User{}, Session{}, fmt.Errorf("session: %w", err)
	}
	now := s.now()
	if err := lim.check(sess, now); err != nil {
		s.c.Delete(ctx, key)
		return User{}, Session{}, err
	}
	u, err := s.enabledUser(ctx, sess.User)
	if err != nil {
		return User{}, Session{}, err
	}
	if now.Sub(sess.LastSeen) >= sessionTouch {
		sess.LastSeen = now
		b, _ := json.Marshal(sess)
		// Only if nobody logged it out meanwhile; a lost race is harmless.
		if _, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).
			Then(clientv3.OpPut(key, string(b), clientv3.WithLease(clientv3.LeaseID(kv.Lease)))).Commit(); err != nil {
			return User{}, Session{}, fmt.Errorf("touch session: %w", err)
		}
	}
	return u, sess, nil
}

// check says why sess has ended at now (idle, or past its absolute limit), or nil.
func (lim SessionLimits) check(sess Session, now time.Time) error {
	switch {
	case now.Sub(sess.LastSeen) >= lim.Idle:
		return fmt.Errorf("%w: session of %s idle since %s", ErrUnauthorized, sess.User, sess.LastSeen.Format(time.RFC3339))
	case now.Sub(sess.CreatedAt) >= lim.Max:
		return fmt.Errorf("%w: session of %s older than %s", ErrUnauthorized, sess.User, lim.Max)
	}
	return nil
}

// Ends is when sess ends if no request comes: idle, or at its absolute limit.
func (lim SessionLimits) Ends(sess Session) time.Time {
	idle, abs := sess.LastSeen.Add(lim.Idle), sess.CreatedAt.Add(lim.Max)
	if idle.Before(abs) {
		return idle
	}
	return abs
}

// SessionEnds returns when the session of cookie ends if no request comes, as etcd has
// it now (another request may have moved its last_seen), without sliding it: a live
// feed is not a request. An ended or unknown session, or a disabled user, is an
// ErrUnauthorized (an ended session is removed, as SessionUser does).
func (s *Store) SessionEnds(ctx context.Context, cookie string, lim SessionLimits) (time.Time, error) {
	if cookie == "" || len(cookie) > 100 {
		return time.Time{}, fmt.Errorf("%w: no session", ErrUnauthorized)
	}
	key := sessionKey(sha256Hex(cookie))
	resp, err := s.c.Get(ctx, key)
	if err != nil {
		return time.Time{}, fmt.Errorf("read session: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return time.Time{}, fmt.Errorf("%w: unknown session", ErrUnauthorized)
	}
	var sess Session
	if err := json.Unmarshal(resp.Kvs[0].Value, &sess); err != nil {
		return time.Time{}, fmt.Errorf("session: %w", err)
	}
	if err := lim.check(sess, s.now()); err != nil {
		s.c.Delete(ctx, key)
		return time.Time{}, err
	}
	if _, err := s.enabledUser(ctx, sess.User); err != nil {
		return time.Time{}, err
	}
	return lim.Ends(sess), nil
}

// Logout ends a session (audited with ctx's actor). An unknown cookie is not an error.
func (s *Store) Logout(ctx context.Context, cookie string) error {
	key := sessionKey(sha256Hex(cookie))
	audit := newAudit(ctx, s.now(), AuditLogout, "", "")
	audit.Target = ActorFrom(ctx).Name
	resp, err := s.c.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), ">", 0)).
		Then(clientv3.OpDelete(key), audit.op()).Commit()
	if err != nil {
		return fmt.Errorf("logout: %w", err)
	}
	_ = resp
	return nil
}
