package control_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/control"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

// runCLI runs `lpmos-control args...` against e with stdin, as a pipe would.
func runCLI(t *testing.T, e *storetest.Etcd, stdin string, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	env := control.Env{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errb, Getenv: func(k string) string {
		if k == "ETCD_ENDPOINTS" {
			return strings.Join(e.Endpoints, ",")
		}
		return map[string]string{"USER": "ops"}[k]
	}}
	err := control.Main(ctx, args, env)
	return out.String(), errb.String(), err
}

// The administration commands round trip: users add/list/disable, tokens
// create/list/revoke, each change audited as the CLI's.
func TestAdminCommands(t *testing.T) {
	e := storetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	if _, _, err := runCLI(t, e, "short\n", "users", "add", "alice", "--role", "operator"); err == nil || !strings.Contains(err.Error(), "at least 12") {
		t.Fatalf("short password: %v", err)
	}
	if _, _, err := runCLI(t, e, "long enough password\n", "users", "add", "alice", "--role", "root"); err == nil || !strings.Contains(err.Error(), "--role") {
		t.Fatalf("bad role: %v", err)
	}
	if out, _, err := runCLI(t, e, "long enough password\n", "users", "add", "alice", "--role", "operator"); err != nil || !strings.Contains(out, "user alice added (role operator)") {
		t.Fatalf("users add: %q %v", out, err)
	}
	// Flags before the name work too, and the endpoints flag wins over the env.
	if _, _, err := runCLI(t, e, "another long password", "users", "add", "--role=viewer", "--etcd-endpoints="+e.Endpoints[0], "victor"); err != nil {
		t.Fatalf("users add with flags first: %v", err)
	}
	if _, _, err := runCLI(t, e, "long enough password\n", "users", "add", "alice", "--role", "admin"); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("second alice: %v", err)
	}
	if _, _, _, err := e.Store.Login(ctx, "alice", "long enough password", store.SessionLimits{Idle: time.Hour, Max: time.Hour}); err != nil {
		t.Fatalf("alice cannot log in with the password from stdin: %v", err)
	}
	out, _, err := runCLI(t, e, "", "users", "list")
	if err != nil || !regexpLine(out, `alice\s+operator\s+active`) || !regexpLine(out, `victor\s+viewer\s+active`) {
		t.Fatalf("users list:\n%s %v", out, err)
	}

	out, stderr, err := runCLI(t, e, "", "tokens", "create", "--user", "alice", "--ttl", "2h")
	secret := strings.TrimSpace(out)
	if err != nil || !strings.HasPrefix(secret, "lpmos_") || !strings.Contains(stderr, "shown only now") {
		t.Fatalf("tokens create: %q %q %v", out, stderr, err)
	}
	if u, err := e.Store.AuthenticateToken(ctx, secret); err != nil || u.Name != "alice" {
		t.Fatalf("created token: %+v %v", u, err)
	}
	id := strings.Split(secret, "_")[1]
	if out, _, _ := runCLI(t, e, "", "tokens", "list", "--user", "alice"); !regexpLine(out, id+`\s+alice\s+\S+\s+\S+\s+active`) || strings.Contains(out, secret) {
		t.Fatalf("tokens list:\n%s", out)
	}
	if out, _, err := runCLI(t, e, "", "tokens", "revoke", id); err != nil || !strings.Contains(out, "revoked") {
		t.Fatalf("tokens revoke: %q %v", out, err)
	}
	if _, err := e.Store.AuthenticateToken(ctx, secret); !errors.Is(err, store.ErrUnauthorized) {
		t.Fatalf("revoked token still works: %v", err)
	}
	if out, _, _ := runCLI(t, e, "", "tokens", "list"); !regexpLine(out, id+`.*revoked`) {
		t.Fatalf("tokens list after revoke:\n%s", out)
	}
	if _, _, err := runCLI(t, e, "", "tokens", "create", "--user", "nobody"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("token for nobody: %v", err)
	}

	if out, _, err := runCLI(t, e, "", "users", "disable", "alice"); err != nil || !strings.Contains(out, "disabled") {
		t.Fatalf("users disable: %q %v", out, err)
	}
	if out, _, _ := runCLI(t, e, "", "users", "list"); !regexpLine(out, `alice\s+operator\s+disabled`) {
		t.Fatalf("users list after disable:\n%s", out)
	}
	for _, bad := range [][]string{{"users"}, {"users", "frob"}, {"tokens", "revoke"}, {"users", "add", "Bad Name", "--role", "viewer"}} {
		if _, _, err := runCLI(t, e, "long enough password\n", bad...); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}

	// The audit trail names the CLI (and who ran it) as the actor of every change.
	entries, err := e.Store.ListAudit(ctx, store.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	actions := map[string]int{}
	for _, x := range entries {
		if strings.HasPrefix(x.Action, "user.") || strings.HasPrefix(x.Action, "token.") {
			if x.Actor != "system:cli" || !strings.HasPrefix(x.Source, "local:ops@") {
				t.Errorf("%s by %s from %s", x.Action, x.Actor, x.Source)
			}
			actions[x.Action]++
		}
	}
	if actions["user.add"] != 2 || actions["user.disable"] != 1 || actions["token.create"] != 1 || actions["token.revoke"] != 1 {
		t.Fatalf("audited actions = %v", actions)
	}
}

// bootstrap writes the admin's password and token once (0600) and is a no-op after.
func TestBootstrapCommand(t *testing.T) {
	e := storetest.Start(t)
	dir := filepath.Join(t.TempDir(), "run")
	out, _, err := runCLI(t, e, "", "bootstrap", "--out-dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	pw, tok := readSecret(t, filepath.Join(dir, "admin-password")), readSecret(t, filepath.Join(dir, "admin-token"))
	if !strings.Contains(out, pw) || !strings.Contains(out, tok) {
		t.Fatalf("bootstrap did not print the credentials:\n%s", out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if u, err := e.Store.AuthenticateToken(ctx, tok); err != nil || u.Name != "admin" || u.Role != store.RoleAdmin {
		t.Fatalf("bootstrap token: %+v %v", u, err)
	}
	if _, _, _, err := e.Store.Login(ctx, "admin", pw, store.SessionLimits{Idle: time.Hour, Max: time.Hour}); err != nil {
		t.Fatalf("bootstrap password: %v", err)
	}
	before := e.Dump(t, "/os/")
	out, _, err = runCLI(t, e, "", "bootstrap", "--out-dir", dir)
	if err != nil || !strings.Contains(out, "nothing to do") || readSecret(t, filepath.Join(dir, "admin-token")) != tok {
		t.Fatalf("second bootstrap: %q %v", out, err)
	}
	storetest.AssertSame(t, before, e.Dump(t, "/os/"))
}

func readSecret(t *testing.T, path string) string {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s has mode %v, want 0600", path, fi.Mode().Perm())
	}
	b, _ := os.ReadFile(path)
	return strings.TrimSpace(string(b))
}

// regexpLine reports whether some line of out matches re.
func regexpLine(out, re string) bool {
	rx := regexp.MustCompile(re)
	for _, l := range strings.Split(out, "\n") {
		if rx.MatchString(l) {
			return true
		}
	}
	return false
}
