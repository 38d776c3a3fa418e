package appliance_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/internal/syncbuf"

	"lpmos.dev/lpmos/agent-initramfs/agent"
	"lpmos.dev/lpmos/appliance"
	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

// Agent tokens against a real appliance and control plane (issue 11): issued once by
// the first matched report, required on every agent call after it, reset by an
// operator, carried by the boot script while the task is approved or installing.

// state is etcd without the audit trail and the heartbeat (refreshed meanwhile), and
// the audit entries with their actions.
func state(t *testing.T, sys *system) (map[string]string, []store.AuditEntry) {
	t.Helper()
	all := sys.etcd.Dump(t, "/os/")
	var audit []store.AuditEntry
	for k, v := range all {
		if strings.HasPrefix(k, "/os/audit/") {
			var e store.AuditEntry
			if err := json.Unmarshal([]byte(v), &e); err != nil {
				t.Fatal(err)
			}
			audit = append(audit, e)
			delete(all, k)
		}
	}
	delete(all, "/os/region/dc1/heartbeat")
	return all, audit
}

func reportHW(t *testing.T, url, mac string) map[string]any {
	t.Helper()
	code, body := call(t, "POST", url+"/api/report", map[string]any{"mac_address": mac,
		"hardware": map[string]any{"disks": []map[string]any{{"name": "vda", "path": "/dev/vda", "size_bytes": 1 << 30, "serial": "S-" + mac}}}})
	if code != 200 {
		t.Fatalf("report %s: %d %v", mac, code, body)
	}
	return body
}

func TestAgentTokenRequired(t *testing.T) {
	sys := startSystemWith(t, func(c *appliance.Config) { addImage(t, c.ImagesDir, "ubuntu", "22.04") }, "dc1")
	ctl, dc1 := sys.control.URL(), sys.regions["dc1"].URL()
	const macA, macB = "52:54:00:00:70:01", "52:54:00:00:70:02"
	idA, idB := createTask(t, ctl, macA), createTask(t, ctl, macB)
	tokA, _ := reportHW(t, dc1, macA)["agent_token"].(string)
	tokB, _ := reportHW(t, dc1, macB)["agent_token"].(string)
	if len(tokA) != 64 || len(tokB) != 64 || tokA == tokB {
		t.Fatalf("tokens issued by the first reports: %q %q", tokA, tokB)
	}
	// Only the hash is stored, under the task's own prefix.
	if v, ok := sys.etcd.Get(t, "/os/install/task/dc1/"+idA+"/agent_token"); !ok || strings.Contains(v, tokA) || !strings.Contains(v, `"generation":1`) {
		t.Fatalf("agent_token key: %q %v", v, ok)
	}
	approve(t, ctl, idA)

	progressA := map[string]any{"mac_address": macA, "task_id": idA, "stage": "downloading", "percentage": 5}
	for _, c := range []struct {
		name, method, url, token string
		body                     any
		code                     int
		rejected                 bool // logged and audited as a bad token
	}{
		{"approval: no token gets no plan", "GET", dc1 + "/api/approval/" + macA, "", nil, 200, false},
		{"approval: wrong token", "GET", dc1 + "/api/approval/" + macA, strings.Repeat("0", 64), nil, 401, true},
		{"approval: another task's token", "GET", dc1 + "/api/approval/" + macA, tokB, nil, 401, true},
		{"approval: long poll with another task's token", "GET", dc1 + "/api/approval/" + macB + "?wait=5", tokA, nil, 401, true},
		{"progress: no token", "POST", dc1 + "/api/progress", "", progressA, 401, true},
		{"progress: wrong token", "POST", dc1 + "/api/progress", "not-a-token", progressA, 401, true},
		{"progress: another task's token", "POST", dc1 + "/api/progress", tokB, progressA, 401, true},
		{"replayed first report: no token again", "POST", dc1 + "/api/report", "", map[string]any{"mac_address": macA,
			"hardware": map[string]any{"disks": []map[string]any{{"name": "vda", "path": "/dev/vda", "size_bytes": 1 << 30, "serial": "S-" + macA}}}}, 200, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			before, audBefore := state(t, sys)
			logBefore := len(sys.logs["dc1"].String())
			code, body := callAuth(t, c.method, c.url, c.token, c.body)
			if code != c.code {
				t.Fatalf("got %d %v, want %d", code, body, c.code)
			}
			for _, k := range []string{"plan", "image", "disk", "os_type", "agent_token"} {
				if _, ok := body[k]; ok {
					t.Errorf("answer has %s: %v", k, body)
				}
			}
			if code == 200 && strings.Contains(c.url, "/api/approval/") && (body["approved"] != false || body["task_status"] != "approved" || body["task_id"] != idA) {
				t.Errorf("tokenless approval answer: %v", body)
			}
			after, audAfter := state(t, sys)
			storetest.AssertSame(t, before, after)
			newLog := sys.logs["dc1"].String()[logBefore:]
			if !c.rejected {
				if len(audAfter) != len(audBefore) {
					t.Errorf("audit entries %d -> %d", len(audBefore), len(audAfter))
				}
				return
			}
			if body["status"] != "error" {
				t.Errorf("401 body: %v", body)
			}
			if !regexp.MustCompile(`\[dc1\] WARN: rejected (GET|POST) /api/\S+ from 127\.0\.0\.1:\d+: bad agent token`).MatchString(newLog) {
				t.Errorf("no rejection log line in:\n%s", newLog)
			}
			if len(audAfter) != len(audBefore)+1 || !hasAction(audAfter, store.AuditAgentTokenReject) {
				t.Errorf("audit: %d entries before, %d after, want one more %s", len(audBefore), len(audAfter), store.AuditAgentTokenReject)
			}
		})
	}

	// The task's own token gets the plan.
	if code, body := callAuth(t, "GET", dc1+"/api/approval/"+macA, tokA, nil); code != 200 || body["approved"] != true || body["plan"] == nil || body["image"] == nil {
		t.Fatalf("approval with the token: %d %v", code, body)
	}

	// Reset: the old token is refused at once; the next matched report issues the
	// new generation's token.
	code, body := call(t, "POST", ctl+"/api/v1/tasks/"+idB+"/reset-agent-token", nil)
	if at, _ := body["agent_token"].(map[string]any); code != 200 || at["generation"] != 2.0 || at["issued_at"] != nil {
		t.Fatalf("reset: %d %v", code, body)
	}
	if code, _ := callAuth(t, "GET", dc1+"/api/approval/"+macB, tokB, nil); code != 401 {
		t.Fatalf("old token after reset: %d", code)
	}
	tokB2, _ := reportHW(t, dc1, macB)["agent_token"].(string)
	if tokB2 == "" || tokB2 == tokB {
		t.Fatalf("report after reset: token %q (old %q)", tokB2, tokB)
	}
	if _, again := reportHW(t, dc1, macB)["agent_token"]; again {
		t.Fatal("a second report after the reset got a token again")
	}
	if code, body := callAuth(t, "GET", dc1+"/api/approval/"+macB, tokB2, nil); code != 200 || body["task_id"] != idB {
		t.Fatalf("new token: %d %v", code, body)
	}
	if code, _ := callAuth(t, "GET", dc1+"/api/approval/"+macB, tokB, nil); code != 401 {
		t.Fatalf("old token after the new one was issued: %d", code)
	}
	_, aud := state(t, sys)
	if !hasAction(aud, store.AuditAgentTokenReset) {
		t.Error("no audit entry for the reset")
	}

	// The task ended: its token writes nothing more (the agent's account of a
	// cancelled install excepted), and a reset is refused.
	if code, _ := call(t, "POST", ctl+"/api/v1/tasks/"+idA+"/cancel", map[string]string{"reason": "test"}); code != 200 {
		t.Fatalf("cancel: %d", code)
	}
	before, _ := state(t, sys)
	if code, body := callAuth(t, "POST", dc1+"/api/progress", tokA, progressA); code != 401 {
		t.Fatalf("progress with the token of a cancelled task: %d %v", code, body)
	}
	if code, _ := callAuth(t, "GET", dc1+"/api/approval/"+macA, tokA, nil); code != 404 {
		t.Fatalf("approval of a cancelled task: %d", code)
	}
	after, _ := state(t, sys)
	storetest.AssertSame(t, before, after)
	if code, _ := callAuth(t, "POST", dc1+"/api/progress", tokA, map[string]any{"mac_address": macA, "task_id": idA, "stage": "cancelled", "bytes_done": 0}); code != 200 {
		t.Fatalf("the account of the cancelled install: %d", code)
	}
	if code, _ := call(t, "POST", ctl+"/api/v1/tasks/"+idA+"/reset-agent-token", nil); code != 409 {
		t.Fatalf("reset of a cancelled task: %d", code)
	}
}

func hasAction(entries []store.AuditEntry, action string) bool {
	for _, e := range entries {
		if e.Action == action {
			return true
		}
	}
	return false
}

// An agent that restarts after its first report gets its token from the boot path:
// the iPXE script of an approved task carries lpmos.token=, derived again from the
// region key, and an agent given only that token installs. Without it, the agent
// stops before writing (the appliance gives a tokenless agent no plan).
func TestAgentRestartTakesTokenFromBootScript(t *testing.T) {
	sys := startSystemWith(t, func(c *appliance.Config) { addImage(t, c.ImagesDir, "ubuntu", "22.04") }, "dc1")
	ctl, dc1 := sys.control.URL(), sys.regions["dc1"].URL()
	m := newFileDisks(t, "52:54:00:00:71:01", contract.Disk{Name: "vda", SizeBytes: 1 << 30, Serial: "R1"})
	id := createTask(t, ctl, m.mac)
	hw, _ := m.inventory()
	hwJSON, _ := json.Marshal(hw)
	// The first report (its token lost with the agent that made it).
	code, rep := call(t, "POST", dc1+"/api/report", map[string]any{"mac_address": m.mac, "hardware": json.RawMessage(hwJSON)})
	if code != 200 || rep["agent_token"] == nil {
		t.Fatalf("first report: %d %v", code, rep)
	}
	approve(t, ctl, id)

	// Restarted without a token: stops, writes nothing.
	err := waitAgent(t, runAgent(m.agentConfig(dc1)), 30*time.Second)
	if !errors.Is(err, agent.ErrNoToken) || len(m.written(t)) != 0 {
		t.Fatalf("agent without a token: %v, wrote %v", err, m.written(t))
	}

	_, script := getText(t, dc1+"/boot/52-54-00-00-71-01.ipxe")
	tok := regexp.MustCompile(`lpmos\.token=([0-9a-f]{64}) `).FindStringSubmatch(script)
	if tok == nil || tok[1] != rep["agent_token"] {
		t.Fatalf("boot script of the approved task: want lpmos.token=%v:\n%s", rep["agent_token"], script)
	}
	cfg := m.agentConfig(dc1)
	cfg.AgentToken = tok[1]
	if err := waitAgent(t, runAgent(cfg), 60*time.Second); err != nil {
		t.Fatalf("agent with the boot path's token: %v", err)
	}
	if st, _ := sys.etcd.Get(t, "/os/install/task/dc1/"+id+"/status"); st != "completed" || len(m.written(t)) != 1 {
		t.Fatalf("status %s, wrote %v", st, m.written(t))
	}
}

// The region key is created once, mode 0600, and kept across restarts.
func TestAgentTokenKeyFile(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "keys", "dc1.key")
	sys := startSystemWith(t, func(c *appliance.Config) { c.AgentTokenKey = key }, "dc1")
	fi, err := os.Stat(key)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	b, _ := os.ReadFile(key)
	if len(strings.TrimSpace(string(b))) != 64 {
		t.Fatalf("key file content: %d bytes", len(b))
	}
	sys.regions["dc1"].Stop()
	cfg := appliance.Config{Label: "dc1", APIHost: "127.0.0.1", EtcdEndpoints: sys.etcd.Endpoints,
		HeartbeatTTL: 5 * time.Second, RetryAfter: 2, ImagesDir: t.TempDir(), AgentTokenKey: key}
	a, err := appliance.Start(t.Context(), cfg, &syncbuf.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	a.Stop()
	if b2, _ := os.ReadFile(key); string(b2) != string(b) {
		t.Fatal("the key changed across restarts")
	}
	os.WriteFile(key, []byte("short\n"), 0o600)
	if _, err := appliance.Start(t.Context(), cfg, &syncbuf.Buffer{}); err == nil || !strings.Contains(err.Error(), "--agent-token-key") {
		t.Fatalf("bad key file: %v", err)
	}
}
