package control_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/control"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/etcdserver"
	"lpmos.dev/lpmos/store/storetest"
)

type liveMsg struct {
	Type  string `json:"type"`
	Tasks []struct {
		ID     string `json:"id"`
		Status string `json:"status"`
	} `json:"tasks"`
	Task *struct {
		ID      string  `json:"id"`
		Status  string  `json:"status"`
		Percent float64 `json:"percent"`
	} `json:"task"`
	Regions []struct {
		Name   string `json:"name"`
		Health string `json:"health"`
	} `json:"regions"`
	EtcdError string `json:"etcd_error"`
}

// The push without a browser: a snapshot on connect, a store change pushed, another
// site refused, and a page told when etcd stops answering.
func TestLivePush(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// An etcd of its own (not storetest's), because this test stops it.
	srv, err := etcdserver.Start(ctx, etcdserver.Config{DataDir: t.TempDir(),
		ListenClientURLs: "http://127.0.0.1:0", ListenPeerURLs: "http://127.0.0.1:0", Quiet: true})
	if err != nil {
		t.Fatal(err)
	}
	var stopEtcd sync.Once
	t.Cleanup(func() { stopEtcd.Do(srv.Close) })
	st, err := store.Open(ctx, store.DialConfig{Endpoints: srv.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cp, err := control.Start(ctx, control.Config{Host: "127.0.0.1", EtcdEndpoints: srv.Endpoints()},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cp.Stop() })
	wsURL := "ws" + strings.TrimPrefix(cp.URL(), "http") + "/live"
	_, token := makeUser(t, st, "viewer", store.RoleViewer)
	bearer := "Bearer " + token

	// Another origin may not read the push, nor a client that names no origin, nor
	// anybody without a session or token.
	for _, c := range []struct {
		h    http.Header
		want int
	}{
		{http.Header{"Origin": {"http://evil.example"}, "Authorization": {bearer}}, http.StatusForbidden},
		{http.Header{"Authorization": {bearer}}, http.StatusForbidden},
		{http.Header{"Origin": {cp.URL()}}, http.StatusUnauthorized},
		{http.Header{"Origin": {cp.URL()}, "Authorization": {"Bearer lpmos_0123456789abcdef_nope"}}, http.StatusUnauthorized},
	} {
		_, resp, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{HTTPHeader: c.h})
		if err == nil || resp == nil || resp.StatusCode != c.want {
			t.Fatalf("dial with %v: %v %v, want %d", c.h, resp, err, c.want)
		}
	}

	first, err := st.CreateTask(ctx, store.NewTask{RegionID: "dc1", TargetMAC: "00:00:00:00:00:01", OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}})
	if err != nil {
		t.Fatal(err)
	}
	c, _, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {cp.URL()}, "Authorization": {bearer}}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	next := func(want string) liveMsg {
		t.Helper()
		for {
			_, b, err := c.Read(ctx)
			if err != nil {
				t.Fatalf("waiting for a %q message: %v", want, err)
			}
			var m liveMsg
			if err := json.Unmarshal(b, &m); err != nil {
				t.Fatalf("message %q: %v", b, err)
			}
			if m.Type == want {
				return m
			}
		}
	}
	snap := next("snapshot")
	if len(snap.Tasks) != 1 || snap.Tasks[0].ID != first.TaskID || snap.Tasks[0].Status != "pending" {
		t.Fatalf("snapshot tasks = %+v", snap.Tasks)
	}
	if _, err := st.CancelTask(ctx, first.TaskID, ""); err != nil {
		t.Fatal(err)
	}
	if m := next("task"); m.Task.ID != first.TaskID || m.Task.Status != "cancelled" {
		t.Fatalf("pushed task = %+v", m.Task)
	}
	if m := next("regions"); len(m.Regions) != 1 || m.Regions[0].Name != "dc1" || m.Regions[0].Health != "offline" {
		t.Fatalf("pushed regions = %+v", m.Regions)
	}

	stopEtcd.Do(srv.Close)
	if m := next("etcd"); !strings.Contains(m.EtcdError, "etcd unreachable") {
		t.Fatalf("etcd message = %+v", m)
	}
}

// Live connections are capped per user (and in all): the 17th page of one user is
// refused with 503 while another user still connects.
func TestLiveConnectionsAreCapped(t *testing.T) {
	ctx, cp, etcd := startControl(t, store.Heartbeat{Region: "dc1"})
	wsURL := "ws" + strings.TrimPrefix(cp.URL(), "http") + "/live"
	_, mine := makeUser(t, etcd.Store, "vera", store.RoleViewer)
	_, other := makeUser(t, etcd.Store, "otto", store.RoleViewer)
	dial := func(token string) (*websocket.Conn, int) {
		c, resp, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {cp.URL()}, "Authorization": {"Bearer " + token}}})
		if err != nil {
			if resp == nil {
				t.Fatal(err)
			}
			return nil, resp.StatusCode
		}
		t.Cleanup(func() { c.CloseNow() })
		return c, http.StatusSwitchingProtocols
	}
	for i := range 16 {
		if _, code := dial(mine); code != http.StatusSwitchingProtocols {
			t.Fatalf("connection %d of one user: %d", i+1, code)
		}
	}
	if _, code := dial(mine); code != http.StatusServiceUnavailable {
		t.Fatalf("the 17th connection of one user: %d, want 503", code)
	}
	if _, code := dial(other); code != http.StatusSwitchingProtocols {
		t.Fatalf("another user's connection: %d", code)
	}
}

// Logging out ends the session's live feed at once (it must not outlive the login).
func TestLiveEndsAtLogout(t *testing.T) {
	ctx, cp, etcd := startControl(t, store.Heartbeat{Region: "dc1"})
	password, _ := makeUser(t, etcd.Store, "lena", store.RoleViewer)
	_, cookie, sess, err := etcd.Store.Login(ctx, "lena", password, store.SessionLimits{Idle: time.Hour, Max: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	wsURL := "ws" + strings.TrimPrefix(cp.URL(), "http") + "/live"
	c, _, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {cp.URL()}, "Cookie": {"lpmos_session=" + cookie}}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if _, _, err := c.Read(ctx); err != nil { // the snapshot
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, cp.URL()+"/logout", strings.NewReader("csrf="+sess.CSRF))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Cookie", "lpmos_session="+cookie)
	req.Header.Set("Origin", cp.URL())
	resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("logout: %d", resp.StatusCode)
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		_, _, err := c.Read(rctx)
		if err == nil {
			continue // a push that was on its way
		}
		if websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
			t.Fatalf("the live feed after logout: %v, want closed as logged out", err)
		}
		return
	}
}

// A session's live feed ends when the session does, idle or at its absolute limit,
// though the page makes no request (a feed is not activity); a bearer token's feed
// and another session's stay open. Short configured limits, no sleeping: the test
// waits for the close, then for a push on the feeds that stay.
func TestLiveEndsWhenSessionExpires(t *testing.T) {
	for _, c := range []struct {
		name string
		lim  store.SessionLimits
	}{
		{"idle", store.SessionLimits{Idle: 3 * time.Second, Max: time.Hour}},
		{"absolute", store.SessionLimits{Idle: time.Hour, Max: 3 * time.Second}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			etcd := storetest.Start(t)
			cp, err := control.Start(ctx, control.Config{Host: "127.0.0.1", EtcdEndpoints: etcd.Endpoints, SessionIdle: c.lim.Idle, SessionMax: c.lim.Max},
				slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cp.Stop() })
			wsURL := "ws" + strings.TrimPrefix(cp.URL(), "http") + "/live"
			password, token := makeUser(t, etcd.Store, "lena", store.RoleViewer)
			dial := func(h http.Header) *websocket.Conn {
				t.Helper()
				h.Set("Origin", cp.URL())
				conn, _, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{HTTPHeader: h})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { conn.CloseNow() })
				if _, _, err := conn.Read(ctx); err != nil { // the snapshot
					t.Fatal(err)
				}
				return conn
			}
			bearer := dial(http.Header{"Authorization": {"Bearer " + token}})
			_, cookie, sess, err := etcd.Store.Login(ctx, "lena", password, c.lim)
			if err != nil {
				t.Fatal(err)
			}
			feed := dial(http.Header{"Cookie": {"lpmos_session=" + cookie}})
			ends := c.lim.Ends(sess)

			rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
			defer rcancel()
			for {
				_, _, err := feed.Read(rctx)
				if err == nil {
					continue // a push on its way
				}
				if websocket.CloseStatus(err) != websocket.StatusPolicyViolation || !strings.Contains(err.Error(), "session expired") {
					t.Fatalf("the feed of an expiring session: %v, want closed as expired", err)
				}
				break
			}
			if early := time.Until(ends); early > 100*time.Millisecond {
				t.Fatalf("the feed closed %s before its session ended", early)
			}
			if _, _, err := etcd.Store.SessionUser(ctx, cookie, c.lim); !errors.Is(err, store.ErrUnauthorized) {
				t.Fatalf("the session after its feed closed: %v, want ended", err)
			}
			// A session opened now, and the bearer token's feed, still get pushes.
			_, cookie2, _, err := etcd.Store.Login(ctx, "lena", password, c.lim)
			if err != nil {
				t.Fatal(err)
			}
			fresh := dial(http.Header{"Cookie": {"lpmos_session=" + cookie2}})
			task, err := etcd.Store.CreateTask(ctx, store.NewTask{RegionID: "dc1", TargetMAC: "00:00:00:00:00:07", OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}})
			if err != nil {
				t.Fatal(err)
			}
			for name, conn := range map[string]*websocket.Conn{"bearer": bearer, "fresh session": fresh} {
				for {
					_, b, err := conn.Read(rctx)
					if err != nil {
						t.Fatalf("the %s feed: %v", name, err)
					}
					var m liveMsg
					if json.Unmarshal(b, &m) == nil && m.Type == "task" && m.Task.ID == task.TaskID {
						break
					}
				}
			}
		})
	}
}
