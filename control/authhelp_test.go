package control_test

import (
	"context"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"

	"lpmos.dev/lpmos/store"
)

// bearers holds the admin token of each test control plane by its host:port, so the
// request helpers (get, form, post) authenticate as an admin wherever the test talks
// to a control plane, and send nothing to anybody else (the regional API).
var bearers sync.Map

func authorize(req *http.Request) {
	if tok, ok := bearers.Load(req.URL.Host); ok && req.Header.Get("Authorization") == "" {
		req.Header.Set("Authorization", "Bearer "+tok.(string))
	}
}

// makeUser adds a user with a password and returns the password and an API token.
func makeUser(t testing.TB, st *store.Store, name string, role store.Role) (password, token string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	password = name + " has a long password"
	if _, err := st.AddUser(ctx, name, role, password); err != nil {
		t.Fatal(err)
	}
	_, token, err := st.CreateToken(ctx, name, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return password, token
}

// withAdmin makes user "admin" and has the request helpers use its token on the
// control plane at base.
func withAdmin(t testing.TB, st *store.Store, base string) (password, token string) {
	t.Helper()
	password, token = makeUser(t, st, "admin", store.RoleAdmin)
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	bearers.Store(u.Host, token)
	t.Cleanup(func() { bearers.Delete(u.Host) })
	return password, token
}
