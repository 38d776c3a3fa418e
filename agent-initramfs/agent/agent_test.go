package agent

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"lpmos.dev/lpmos/contract"
)

// The agent against a scripted regional API (httptest): how it treats each answer.
// The real appliance is exercised end to end in appliance/ and the VM lab.

type fakeAPI struct {
	mu        sync.Mutex
	reports   int
	report    func(n int) (int, any) // status and body of the n-th report (1-based)
	approval  func(r *http.Request) (int, any)
	progress  func(p contract.ProgressRequest) (int, any)
	posted    []contract.ProgressRequest
	approvals []string // the query of each approval poll
	// token is the agent token approval and progress require (as the appliance
	// does): set by a report answer that carries one, or by the test.
	token   string
	refused int // calls answered 401
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var code int
	var body any
	// The scripted answers run outside the lock: one may hold a long poll.
	switch {
	case r.URL.Path == "/api/report":
		f.mu.Lock()
		f.reports++
		n := f.reports
		f.mu.Unlock()
		code, body = f.report(n)
		if m, ok := body.(map[string]any); ok && m["agent_token"] != nil {
			f.mu.Lock()
			f.token = m["agent_token"].(string)
			f.mu.Unlock()
		}
	case f.badToken(r):
		code, body = 401, map[string]any{"status": "error", "message": "agent token missing or invalid for this task"}
	case strings.HasPrefix(r.URL.Path, "/api/approval/"):
		f.mu.Lock()
		f.approvals = append(f.approvals, r.URL.RawQuery)
		f.mu.Unlock()
		code, body = f.approval(r)
	case r.URL.Path == "/api/progress":
		var p contract.ProgressRequest
		json.NewDecoder(r.Body).Decode(&p)
		f.mu.Lock()
		f.posted = append(f.posted, p)
		f.mu.Unlock()
		code, body = f.progress(p)
	default:
		code, body = 404, map[string]any{"status": "error", "message": "no such endpoint"}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(body)
}

// badToken is a call after the report without the required token.
func (f *fakeAPI) badToken(r *http.Request) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.URL.Path == "/api/report" || r.Header.Get("Authorization") == "Bearer "+f.token {
		return false
	}
	f.refused++
	return true
}

func (f *fakeAPI) stages() []contract.Stage {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []contract.Stage
	for _, p := range f.posted {
		out = append(out, p.Stage)
	}
	return out
}

var testDisk = contract.Disk{Name: "vda", Path: "/dev/vda", SizeBytes: 1 << 30, Serial: "V1"}

func testConfig(url string) Config {
	return Config{
		RegionalURL: url, MAC: "52:54:00:00:30:01", RetryUnit: time.Millisecond, PollInterval: time.Millisecond,
		CompletionTimeout: 5 * time.Second, MaxAttempts: 3,
		Inventory: func() (contract.Hardware, error) { return contract.Hardware{Disks: []contract.Disk{testDisk}}, nil },
		Log:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

// ok matches the report to taskID; the first report gets the task's agent token.
func ok(taskID string) func(int) (int, any) {
	return func(n int) (int, any) {
		if n > 1 {
			return 200, map[string]any{"status": "ok", "task_id": taskID}
		}
		return 200, map[string]any{"status": "ok", "task_id": taskID, "agent_token": "token-of-" + taskID}
	}
}

func approvedPlan(taskID string) contract.ApprovalResponse {
	img := &contract.ImageRef{OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}, SHA256: strings.Repeat("a", 64), Size: 1 << 20}
	return contract.ApprovalResponse{Status: "ok", TaskID: taskID, TaskStatus: "approved", Approved: true,
		Plan:  &contract.Plan{Disk: &contract.PlanDisk{Name: "vda", Path: "/dev/vda", SizeBytes: 1 << 30, Serial: "V1"}, Image: img, Digest: "d1"},
		Image: &contract.Image{URL: "http://x/images/u.img", Format: "raw", Size: img.Size, SHA256: img.SHA256}}
}

// 404 with retry_after: the agent waits that many units and tries again, at most
// MaxAttempts times, then gives up with ErrNoTask.
func TestReportRetriesOn404(t *testing.T) {
	f := &fakeAPI{report: func(int) (int, any) {
		return 404, map[string]any{"status": "error", "message": "No task found", "retry_after": 7}
	}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	cfg := testConfig(srv.URL)
	cfg.RetryUnit = 5 * time.Millisecond
	start := time.Now()
	err := Run(t.Context(), cfg)
	if !errors.Is(err, ErrNoTask) || f.reports != 3 {
		t.Fatalf("err %v after %d reports", err, f.reports)
	}
	if min := 2 * 7 * cfg.RetryUnit; time.Since(start) < min { // two waits of retry_after units
		t.Fatalf("retried after %s, before retry_after (%s)", time.Since(start), min)
	}
}

// Another 4xx is our request's fault: no retry. A 5xx or a dead appliance is retried.
func TestReportErrorClasses(t *testing.T) {
	f := &fakeAPI{report: func(int) (int, any) {
		return 400, map[string]any{"status": "error", "message": "hardware: is required"}
	}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	if err := Run(t.Context(), testConfig(srv.URL)); err == nil || !strings.Contains(err.Error(), "report refused") || f.reports != 1 {
		t.Fatalf("400: %v after %d reports", err, f.reports)
	}
	f2 := &fakeAPI{report: func(n int) (int, any) {
		if n < 3 {
			return 503, map[string]any{"status": "error", "message": "store unavailable"}
		}
		return 404, map[string]any{"status": "error", "message": "No task found", "retry_after": 1}
	}}
	srv2 := httptest.NewServer(f2)
	defer srv2.Close()
	if err := Run(t.Context(), testConfig(srv2.URL)); !errors.Is(err, ErrNoTask) || f2.reports != 3 {
		t.Fatalf("503 then 404: %v after %d reports", err, f2.reports)
	}
}

// A 503 with retry_after (the appliance's store is away: quorum lost) spends no
// attempt: the agent waits through an outage longer than MaxAttempts reports.
func TestReportWaitsOutStoreOutage(t *testing.T) {
	f := &fakeAPI{report: func(n int) (int, any) {
		if n <= 6 {
			return 503, map[string]any{"status": "error", "message": "store unavailable: etcd does not answer; try again later", "retry_after": 5}
		}
		return ok("t1")(n - 6)
	}, approval: func(*http.Request) (int, any) {
		return 404, map[string]any{"status": "error", "message": "No open task"}
	}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	err := Run(t.Context(), testConfig(srv.URL)) // MaxAttempts 3
	if f.reports != 7 || err == nil || !strings.Contains(err.Error(), "task is gone") {
		t.Fatalf("after 6 answers 503: %v after %d reports, want the report matched on the 7th", err, f.reports)
	}
}

// The approval poll is a long poll (wait=20); a 404 while waiting means the task is
// gone; an approval for another task than the one reported for is never installed.
func TestApprovalPoll(t *testing.T) {
	f := &fakeAPI{report: ok("t1"), approval: func(r *http.Request) (int, any) {
		return 404, map[string]any{"status": "error", "message": "No open task"}
	}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	if err := Run(t.Context(), testConfig(srv.URL)); err == nil || !strings.Contains(err.Error(), "task is gone") {
		t.Fatalf("404 while waiting: %v", err)
	}
	if f.approvals[0] != "wait=20" {
		t.Fatalf("approval poll query %q, want a long poll", f.approvals[0])
	}
	f.approval = func(*http.Request) (int, any) { return 200, approvedPlan("t2") }
	f.posted, f.reports = nil, 0 // a new task: its first report gets a token
	if err := Run(t.Context(), testConfig(srv.URL)); err == nil || !strings.Contains(err.Error(), "not t1") || len(f.stages()) != 0 {
		t.Fatalf("approval of another task: %v, posted %v", err, f.stages())
	}
}

// The plan is enforced before a byte is written: a disk the inventory lacks, or an
// image other than the plan's, fails the task with the reason and installs nothing.
func TestPlanEnforcedBeforeWriting(t *testing.T) {
	for name, c := range map[string]struct {
		edit func(*contract.ApprovalResponse)
		want string
	}{
		"disk swapped":   {func(a *contract.ApprovalResponse) { a.Plan.Disk.Serial = "OTHER" }, "disk_mismatch"},
		"disk resized":   {func(a *contract.ApprovalResponse) { a.Plan.Disk.SizeBytes = 2 << 30 }, "disk_mismatch"},
		"image replaced": {func(a *contract.ApprovalResponse) { a.Image.SHA256 = strings.Repeat("b", 64) }, "image_mismatch"},
		"no plan":        {func(a *contract.ApprovalResponse) { a.Plan = nil }, "without a plan"},
	} {
		t.Run(name, func(t *testing.T) {
			resp := approvedPlan("t1")
			c.edit(&resp)
			f := &fakeAPI{report: ok("t1"), approval: func(*http.Request) (int, any) { return 200, resp },
				progress: func(contract.ProgressRequest) (int, any) { return 200, map[string]any{"status": "ok"} }}
			srv := httptest.NewServer(f)
			defer srv.Close()
			cfg := testConfig(srv.URL)
			installed := false
			cfg.Install = func(context.Context, Job, *Progress) error { installed = true; return nil }
			err := Run(t.Context(), cfg)
			st := f.stages()
			if err == nil || !strings.Contains(err.Error(), c.want) || installed || len(st) != 1 || st[0] != contract.StageFailed ||
				!strings.Contains(f.posted[0].Message, c.want) {
				t.Fatalf("err %v, installed %v, posted %v", err, installed, st)
			}
		})
	}
}

// The completion is resent until acknowledged (the appliance was down), and a 409 to
// a progress post stops the install (the task was cancelled).
func TestCompletionRetriedAndRefusalStops(t *testing.T) {
	down := 2 // two refusals: acknowledged at the third try, 3 s of backoff
	f := &fakeAPI{report: ok("t1"), approval: func(r *http.Request) (int, any) {
		if r.URL.Query().Get("status") != "" {
			<-r.Context().Done() // the install watch: held until the agent stops it
			return 200, approvedPlan("t1")
		}
		return 200, approvedPlan("t1")
	}, progress: func(p contract.ProgressRequest) (int, any) {
		if p.Stage == contract.StageCompleted && down > 0 {
			down--
			return 503, map[string]any{"status": "error", "message": "store unavailable"}
		}
		return 200, map[string]any{"status": "ok"}
	}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	cfg := testConfig(srv.URL)
	var job Job
	cfg.Install = func(ctx context.Context, j Job, p *Progress) error { job = j; return nil }
	if err := Run(t.Context(), cfg); err != nil {
		t.Fatalf("agent: %v", err)
	}
	if st := f.stages(); len(st) != 3 || st[2] != contract.StageCompleted || job.Disk.Serial != "V1" || job.Target != "/dev/vda" {
		t.Fatalf("posted %v, job %+v", st, job)
	}

	f.posted, down, f.reports = nil, 0, 0
	f.progress = func(p contract.ProgressRequest) (int, any) {
		if p.Stage == contract.StageCancelled {
			return 200, map[string]any{"status": "ok"}
		}
		return 409, map[string]any{"status": "error", "message": "task t1 is cancelled"}
	}
	cfg.Install = func(ctx context.Context, j Job, p *Progress) error {
		p.Update(ctx, contract.Progress{Stage: contract.StageWriting, BytesDone: 4096, BytesTotal: 1 << 20}, true)
		<-ctx.Done() // a real writer stops when its context ends
		return ctx.Err()
	}
	err := Run(t.Context(), cfg)
	st := f.stages()
	if !errors.Is(err, ErrCancelled) || st[len(st)-1] != contract.StageCancelled || f.posted[len(f.posted)-1].BytesDone != 4096 {
		t.Fatalf("refused progress: %v, posted %v", err, st)
	}
}

// The token: the report's, else the boot path's (an agent that restarted gets none
// from its second report); without any, an approved task is not carried out (the
// appliance would not hand out the plan); a refused token is renewed by reporting
// again once (a reset), else the agent stops.
func TestAgentToken(t *testing.T) {
	secondReport := func(int) (int, any) { return 200, map[string]any{"status": "ok", "task_id": "t1"} }
	approved := func(*http.Request) (int, any) { return 200, approvedPlan("t1") }
	acked := func(contract.ProgressRequest) (int, any) { return 200, map[string]any{"status": "ok"} }
	noInstall := func(ctx context.Context, j Job, p *Progress) error { return nil }

	t.Run("from the boot path", func(t *testing.T) {
		f := &fakeAPI{report: secondReport, approval: approved, progress: acked, token: "from-cmdline"}
		srv := httptest.NewServer(f)
		defer srv.Close()
		cfg := testConfig(srv.URL)
		cfg.AgentToken, cfg.Install = "from-cmdline", noInstall
		if err := Run(t.Context(), cfg); err != nil || f.refused != 0 {
			t.Fatalf("agent: %v, %d refused", err, f.refused)
		}
	})
	t.Run("the report's wins", func(t *testing.T) {
		f := &fakeAPI{report: ok("t1"), approval: approved, progress: acked}
		srv := httptest.NewServer(f)
		defer srv.Close()
		cfg := testConfig(srv.URL)
		cfg.AgentToken, cfg.Install = "stale-from-cmdline", noInstall
		if err := Run(t.Context(), cfg); err != nil || f.refused != 0 {
			t.Fatalf("agent: %v, %d refused", err, f.refused)
		}
	})
	t.Run("none and approved", func(t *testing.T) {
		// The limited answer an appliance gives without a token.
		f := &fakeAPI{report: secondReport, token: "unknown-to-the-agent", approval: func(*http.Request) (int, any) {
			return 200, map[string]any{"status": "ok", "task_id": "t1", "task_status": "approved", "approved": false}
		}, progress: acked}
		srv := httptest.NewServer(tokenless{f})
		defer srv.Close()
		cfg := testConfig(srv.URL)
		cfg.Install = noInstall
		if err := Run(t.Context(), cfg); !errors.Is(err, ErrNoToken) || len(f.stages()) != 0 {
			t.Fatalf("agent: %v, posted %v", err, f.stages())
		}
	})
	t.Run("refused, renewed by a new report", func(t *testing.T) {
		f := &fakeAPI{approval: approved, progress: acked}
		f.report = func(n int) (int, any) {
			if n == 1 {
				// Reset before the agent's first poll: the token it got is dead.
				return 200, map[string]any{"status": "ok", "task_id": "t1", "agent_token": "generation-1"}
			}
			return 200, map[string]any{"status": "ok", "task_id": "t1", "agent_token": "generation-2"}
		}
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			f.ServeHTTP(w, r)
			f.mu.Lock()
			if r.URL.Path == "/api/report" && f.reports == 1 {
				f.token = "generation-2" // what the appliance holds after the reset
			}
			f.mu.Unlock()
		}))
		defer srv.Close()
		cfg := testConfig(srv.URL)
		cfg.Install = noInstall
		if err := Run(t.Context(), cfg); err != nil || f.refused != 1 || f.reports != 2 {
			t.Fatalf("agent: %v, %d refused, %d reports", err, f.refused, f.reports)
		}
	})
	t.Run("refused for good", func(t *testing.T) {
		f := &fakeAPI{report: ok("t1"), approval: approved, progress: acked}
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			f.ServeHTTP(w, r)
			f.mu.Lock()
			f.token = "someone-else"
			f.mu.Unlock()
		}))
		defer srv.Close()
		cfg := testConfig(srv.URL)
		cfg.Install = noInstall
		if err := Run(t.Context(), cfg); !errors.Is(err, ErrTokenRefused) || len(f.stages()) != 0 {
			t.Fatalf("agent: %v, posted %v", err, f.stages())
		}
	})
}

// tokenless lets approval polls through without a token (the appliance's limited
// answer) and requires it elsewhere.
type tokenless struct{ f *fakeAPI }

func (t tokenless) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/api/approval/") && r.Header.Get("Authorization") == "" {
		code, body := t.f.approval(r)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(body)
		return
	}
	t.f.ServeHTTP(w, r)
}

// The token goes with the image download only to the regional API's own origin: an
// image URL on another host (or scheme) gets no token.
func TestImageAuthOnlyToTheRegionalAPI(t *testing.T) {
	api := &contract.Client{BaseURL: "http://10.77.0.1:8081", Token: "tok"}
	for u, want := range map[string]string{
		"http://10.77.0.1:8081/images/u.img?task=t1": "Bearer tok",
		"http://10.77.0.1:8082/images/u.img":         "",
		"https://10.77.0.1:8081/images/u.img":        "",
		"http://mirror.example/images/u.img":         "",
		"::not a url":                                "",
	} {
		if got := imageAuth(u, api).Get("Authorization"); got != want {
			t.Errorf("%s: Authorization %q, want %q", u, got, want)
		}
	}
	if h := imageAuth("http://10.77.0.1:8081/images/u.img", &contract.Client{BaseURL: api.BaseURL}); h != nil {
		t.Errorf("no token, still a header: %v", h)
	}
}
