package control_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/control"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

// login logs the browser in through the login page (which any page redirects to).
func (b *browser) login(base, name, password string) {
	b.t.Helper()
	b.do("open the login page", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.ID("login-form")))
	b.submit("log in as "+name, http.StatusOK, chromedp.SetValue(chromedp.ID("name"), name),
		chromedp.SetValue(chromedp.ID("password"), password), chromedp.Click(chromedp.ID("login-button")))
	if got := b.text("#who-name"); got != name {
		b.t.Fatalf("logged in as %q, want %q", got, name)
	}
}

// testClock is a clock the test moves.
type testClock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *testClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().UTC().Add(c.offset)
}

func (c *testClock) advance(d time.Duration) { c.mu.Lock(); c.offset += d; c.mu.Unlock() }

// The web UI's identities in a real browser: the login page (a wrong password, then
// back to the page asked for), name and role in the layout, a viewer who sees no
// action and whose forged approval is refused, a form without its anti-CSRF token
// refused, logout, and a session that ends after its idle time.
func TestWebUIAuth(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		fmt.Fprintf(os.Stderr, "\n*** SKIPPING TestWebUIAuth: %s not found (apt-get install chromium): the web UI is NOT tested ***\n\n", chromiumPath)
		t.Skipf("SKIP LOUDLY: %s not found", chromiumPath)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	etcd := storetest.Start(t)
	clk := &testClock{}
	cp, err := control.Start(ctx, control.Config{Host: "127.0.0.1", EtcdEndpoints: etcd.Endpoints, Clock: clk.now},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cp.Stop() })
	base := cp.URL()
	beat, err := etcd.Store.StartHeartbeat(ctx, func() store.Heartbeat {
		return store.Heartbeat{Region: "dc1", Images: []contract.ImageRef{ubuntuImage}}
	}, 10*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { beat.Stop(context.Background()) })
	adminPW, _ := makeUser(t, etcd.Store, "admin", store.RoleAdmin)
	viewerPW, _ := makeUser(t, etcd.Store, "vera", store.RoleViewer)
	task, err := etcd.Store.CreateTask(ctx, store.NewTask{RegionID: "dc1", TargetMAC: "52:54:00:12:34:56", OSRef: ubuntuImage.OSRef})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := etcd.Store.Report(ctx, "dc1", task.TargetMAC, json.RawMessage(testHardware)); err != nil {
		t.Fatal(err)
	}
	planned, _ := etcd.Store.GetTask(ctx, task.TaskID)
	taskURL := base + "/tasks/" + task.TaskID

	b := newBrowser(t, ctx)
	// A page asked for without a session leads to the login page, and back after it.
	b.do("open a task page logged out", chromedp.Navigate(taskURL), chromedp.WaitVisible(chromedp.ID("login-form")))
	if b.eval(`!!document.querySelector("nav") || !!document.getElementById("who")`) {
		t.Fatal("the login page shows the navigation to nobody")
	}
	b.shot("login")
	b.submit("a wrong password", http.StatusUnauthorized, chromedp.SetValue(chromedp.ID("name"), "vera"),
		chromedp.SetValue(chromedp.ID("password"), "not vera's password"), chromedp.Click(chromedp.ID("login-button")))
	if !strings.Contains(b.text("#login-error"), "Wrong user name or password") {
		t.Fatalf("login error = %q", b.text("#login-error"))
	}
	b.submit("log in as the viewer", http.StatusOK, chromedp.SetValue(chromedp.ID("password"), viewerPW), chromedp.Click(chromedp.ID("login-button")))
	if b.attr("body", "data-task") != task.TaskID || b.text("#who-name") != "vera" || b.text("#who-role") != "viewer" {
		t.Fatalf("after login: task %q, who %q %q", b.attr("body", "data-task"), b.text("#who-name"), b.text("#who-role"))
	}
	// A viewer sees the hardware and the plan but no control.
	if !strings.Contains(b.text("#main"), "S45NNE0M123456") {
		t.Fatal("the viewer does not see the hardware")
	}
	for _, id := range []string{"approve-button", "approve-dialog", "reject-button", "cancel-button"} {
		if b.eval(`!!document.getElementById("` + id + `")`) {
			t.Errorf("the viewer is shown #%s", id)
		}
	}
	if !b.eval(`!!document.getElementById("no-actions") && !document.querySelector('nav a[href="/tasks/create"]')`) {
		t.Error("the viewer's page does not say why there are no actions, or links to Add task")
	}
	b.shot("task-viewer")
	// Forged from the page itself, with the session's own anti-CSRF token: the role decides.
	before := etcd.Dump(t, "/os/install/")
	forge := `fetch("/tasks/` + task.TaskID + `/approve", {method: "POST", body: new URLSearchParams({confirm: "yes", plan_digest: "` + planned.Plan.Digest + `",
		csrf: document.querySelector("input[name=csrf]").value})}).then(r => r.status)`
	if code := evalInt(t, b, forge); code != http.StatusForbidden {
		t.Fatalf("a viewer's forged approval: HTTP %d, want 403", code)
	}
	if code := evalInt(t, b, `fetch("/tasks/create").then(r => r.status)`); code != http.StatusForbidden {
		t.Fatalf("a viewer's add-task page: HTTP %d, want 403", code)
	}
	storetest.AssertSame(t, before, etcd.Dump(t, "/os/install/"))

	// Logout ends the session on the server, not only in this browser.
	b.submit("log out", http.StatusOK, chromedp.Click(chromedp.ID("logout-button")))
	if !b.eval(`!!document.getElementById("login-form")`) || len(etcd.Dump(t, "/os/auth/sessions/")) != 0 {
		t.Fatalf("after logout: login form %v, sessions %v", b.eval(`!!document.getElementById("login-form")`), etcd.Dump(t, "/os/auth/sessions/"))
	}
	b.do("the task page again", chromedp.Navigate(taskURL), chromedp.WaitVisible(chromedp.ID("login-form")))

	// An operator's form posted without its anti-CSRF token is refused.
	b.submit("log in as the admin", http.StatusOK, chromedp.SetValue(chromedp.ID("name"), "admin"),
		chromedp.SetValue(chromedp.ID("password"), adminPW), chromedp.Click(chromedp.ID("login-button")))
	if b.text("#who-role") != "admin" || !b.eval(`!!document.getElementById("approve-button")`) {
		t.Fatal("the admin is not shown the approve button")
	}
	b.submit("cancel without the anti-CSRF token", http.StatusForbidden,
		chromedp.Evaluate[chromedp.Void](`document.querySelector("form.cancel-form input[name=csrf]").remove()`),
		chromedp.Click(chromedp.ID("cancel-button")))
	if !strings.Contains(b.text("#main"), "anti-CSRF") {
		t.Fatalf("refusal page = %q", b.text("#main"))
	}
	storetest.AssertSame(t, before, etcd.Dump(t, "/os/install/"))

	// The session ends after 30 idle minutes (the control plane's clock moves).
	b.do("the task page", chromedp.Navigate(taskURL), chromedp.WaitVisible(chromedp.ID("approve-button")))
	clk.advance(control.DefaultSessionIdle + time.Second)
	b.do("the task page after 30 idle minutes", chromedp.Navigate(taskURL), chromedp.WaitVisible(chromedp.ID("login-form")))
	if len(etcd.Dump(t, "/os/auth/sessions/")) != 0 {
		t.Fatal("the idle session is still stored")
	}
}

func evalInt(t *testing.T, b *browser, expr string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[int](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("%s: %v", expr, err)
	}
	return v
}
