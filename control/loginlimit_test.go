package control_test

import (
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/store"
)

// Password guessing is bounded before it costs a hash or an audit entry: 10 attempts
// per address (and per user name), then 429; another person elsewhere still logs in.
func TestLoginGuessingIsLimited(t *testing.T) {
	ctx, cp, etcd := startControl(t, store.Heartbeat{Region: "dc1"})
	password, _ := makeUser(t, etcd.Store, "olivia", store.RoleOperator)
	client := func(ip string) *http.Client {
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}).DialContext},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	login := func(c *http.Client, name, pw string) int {
		resp, err := c.PostForm(cp.URL()+"/login", url.Values{"name": {name}, "password": {pw}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	guesser, limited, began := client("127.0.0.1"), 0, time.Now()
	for i := range 30 {
		switch code := login(guesser, "admin", "guess "+strings.Repeat("x", i)); code {
		case http.StatusTooManyRequests:
			limited++
		case http.StatusUnauthorized:
		default:
			t.Fatalf("guess %d: HTTP %d", i, code)
		}
	}
	failures, err := etcd.Store.ListAudit(ctx, store.AuditFilter{Action: store.AuditLoginFailure})
	// 10 at once, then one per 6 s: a slow machine may earn a refill or two.
	refills := int(time.Since(began) / (6 * time.Second))
	if err != nil || limited < 20-refills || limited > 20 || len(failures) != 30-limited {
		t.Fatalf("30 guesses in %s: %d answered 429, %d failures audited (%v); want 20 and 10", time.Since(began), limited, len(failures), err)
	}
	if code := login(client("127.0.0.2"), "olivia", password); code != http.StatusSeeOther {
		t.Fatalf("another person's login during the guessing: HTTP %d", code)
	}
}
