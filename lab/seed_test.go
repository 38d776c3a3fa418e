package lab_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"lpmos.dev/lpmos/internal/syncbuf"

	"lpmos.dev/lpmos/internal/netlab/netlabtest"
)

// TestSeedFlowsWithMakeRun starts `make run` as a user would (in a network namespace of
// its own, so its fixed ports 8080, 8081 and 2379 never collide with anything) and
// replays the seed's curl commands against it, then stops it with Ctrl-C.
func TestSeedFlowsWithMakeRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	if os.Geteuid() != 0 {
		t.Skip("SEED FLOWS SKIPPED: needs root for a network namespace (CI runs as root)")
	}
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("SEED FLOWS SKIPPED: curl not installed")
	}
	ns := netlabtest.NS(t, "seed")

	runDir := t.TempDir()
	cmd := exec.Command("ip", "netns", "exec", ns, "make", "run")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "RUN_DIR="+runDir)
	out := &syncbuf.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // Ctrl-C goes to the whole group, as in a terminal
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if t.Failed() {
			t.Logf("make run output:\n%s", out.String())
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	curl := func(args ...string) map[string]any {
		t.Helper()
		b, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, "curl", "-s", "--max-time", "10"}, args...)...).Output()
		if err != nil {
			t.Fatalf("curl %v: %v", args, err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("curl %v: not JSON: %s", args, b)
		}
		return m
	}
	// Wait for "LPMOS is running" (make builds first).
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for !strings.Contains(out.String(), "LPMOS is running") {
		select {
		case err := <-exited:
			t.Fatalf("make run exited: %v", err)
		case <-ctx.Done():
			t.Fatal("make run did not come up")
		case <-tick.C:
		}
	}
	// make run bootstrapped the admin before starting the control plane: README's
	// control calls carry its token.
	tok, err := os.ReadFile(runDir + "/admin-token")
	if err != nil {
		t.Fatalf("make run left no admin token: %v", err)
	}
	if fi, _ := os.Stat(runDir + "/admin-token"); fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin-token has mode %v", fi.Mode().Perm())
	}
	auth := "Authorization: Bearer " + strings.TrimSpace(string(tok))
	if pw, err := os.ReadFile(runDir + "/admin-password"); err != nil || !strings.Contains(out.String(), strings.TrimSpace(string(pw))) {
		t.Fatalf("make run did not print the admin password it wrote: %v", err)
	}
	for {
		b, _ := exec.Command("ip", "netns", "exec", ns, "curl", "-s", "-H", auth, "http://localhost:8080/api/v1/regions").Output()
		if strings.Contains(string(b), `"regions"`) {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("control plane did not answer")
		case <-tick.C:
		}
	}

	h := curl("http://localhost:8081/api/health")
	if h["region_label"] != "dc1" || h["etcd_reachable"] != true {
		t.Fatalf("health: %v", h)
	}
	// Test 1: the normal flow. A small image for ubuntu 22.04 first, as the README
	// says; the appliance publishes it in its heartbeat within seconds.
	img := runDir + "/u.img"
	if err := os.WriteFile(img, make([]byte, 4<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command("../bin/lpmos-image", "add", "--dir", runDir+"/images", "--os-type", "ubuntu", "--os-version", "22.04", img).CombinedOutput(); err != nil {
		t.Fatalf("lpmos-image add: %v\n%s", err, b)
	}
	// Without the token the control plane answers 401.
	if m := curl("http://localhost:8080/api/v1/regions"); m["status"] != "error" {
		t.Fatalf("control plane without a token: %v", m)
	}
	for !strings.Contains(fmt.Sprint(curl("-H", auth, "http://localhost:8080/api/v1/regions")), "ubuntu") {
		select {
		case <-ctx.Done():
			t.Fatal("the region never advertised the image")
		case <-tick.C:
		}
	}
	task := curl("-X", "POST", "http://localhost:8080/api/v1/tasks", "-H", auth, "-H", "Content-Type: application/json",
		"-d", `{"region_id":"dc1","target_mac":"00:1a:2b:3c:4d:5e","os_type":"ubuntu","os_version":"22.04"}`)
	id, _ := task["task_id"].(string)
	if id == "" || task["status"] != "pending" {
		t.Fatalf("create: %v", task)
	}
	rep := curl("-X", "POST", "http://localhost:8081/api/report", "-H", "Content-Type: application/json",
		"-d", `{"mac_address":"00:1A:2B:3C:4D:5E","hardware":{"cpu":{"cores":4},"memory":{"total_bytes":8589934592},"disks":[{"name":"sda","path":"/dev/sda","size_bytes":480000000000,"serial":"S1"}]}}`)
	agentTok, _ := rep["agent_token"].(string)
	if rep["status"] != "ok" || rep["task_id"] != id || agentTok == "" {
		t.Fatalf("report: %v", rep)
	}
	agentAuth := "Authorization: Bearer " + agentTok // every agent call after the report
	if a := curl("-H", agentAuth, "http://localhost:8081/api/approval/00:1a:2b:3c:4d:5e"); a["approved"] != false || a["task_status"] != "pending_approval" {
		t.Fatalf("approval before approve: %v", a)
	}
	plan, _ := curl("-H", auth, "http://localhost:8080/api/v1/tasks/"+id)["plan"].(map[string]any)
	if plan == nil || plan["disk"].(map[string]any)["serial"] != "S1" {
		t.Fatalf("plan: %v", plan)
	}
	if a := curl("-X", "POST", "http://localhost:8080/api/v1/tasks/"+id+"/approve", "-H", auth, "-H", "Content-Type: application/json",
		"-d", `{"plan_digest":"`+plan["digest"].(string)+`"}`); a["status"] != "approved" {
		t.Fatalf("approve: %v", a)
	}
	if a := curl("-H", agentAuth, "http://localhost:8081/api/approval/00:1a:2b:3c:4d:5e"); a["approved"] != true {
		t.Fatalf("approval: %v", a)
	}
	p := curl("-X", "POST", "http://localhost:8081/api/progress", "-H", "Content-Type: application/json", "-H", agentAuth,
		"-d", `{"mac_address":"00:1a:2b:3c:4d:5e","task_id":"`+id+`","stage":"downloading","percentage":45,"message":"Downloaded 450 MB / 1000 MB"}`)
	if p["status"] != "ok" {
		t.Fatalf("progress: %v", p)
	}
	got := curl("-H", auth, "http://localhost:8080/api/v1/tasks/"+id)
	if got["status"] != "installing" || got["progress"].(map[string]any)["percentage"] != 45.0 {
		t.Fatalf("task after progress: %v", got)
	}
	// Test 2: an unmatched MAC.
	um := curl("-X", "POST", "http://localhost:8081/api/report", "-H", "Content-Type: application/json",
		"-d", `{"mac_address":"fe:b7:02:c0:95:e0","hardware":{}}`)
	if um["status"] != "error" || um["message"] != "No task found for MAC fe:b7:02:c0:95:e0 in region dc1" || um["retry_after"] != 10.0 {
		t.Fatalf("unmatched report: %v", um)
	}
	if l := curl("-H", auth, "http://localhost:8080/api/v1/unmatched?region=dc1"); l["count"] != 1.0 {
		t.Fatalf("unmatched list: %v", l)
	}
	if !strings.Contains(out.String(), "[dc1] Failed to find task for MAC fe:b7:02:c0:95:e0: no task found") {
		t.Fatalf("appliance did not log the unmatched report")
	}

	// Ctrl-C stops both, cleanly.
	syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		t.Fatal("make run did not stop on Ctrl-C")
	}
	if !strings.Contains(out.String(), "[dc1] Region marked offline") {
		t.Fatalf("appliance did not shut down cleanly")
	}
	if b, _ := exec.Command("ip", "netns", "pids", ns).Output(); strings.TrimSpace(string(b)) != "" {
		t.Fatalf("processes left in the namespace after Ctrl-C: %s", b)
	}
}
