package store_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"

	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

// The agent token's store side: issued once per generation by a matched report (only
// its hash stored), never by a second report, even concurrent ones; a reset makes the
// next report issue the next generation; a task that ended cannot be reset.
func TestAgentTokenIssueAndReset(t *testing.T) {
	e := storetest.Start(t)
	ctx := ctxT(t)
	const mac = "52:54:00:00:72:01"
	task, err := e.Store.CreateTask(ctx, store.NewTask{RegionID: "dc1", TargetMAC: mac, OSRef: ubuntuImage.OSRef})
	if err != nil {
		t.Fatal(err)
	}
	mint := func(id string, gen int64) string { return "tok-" + id + ":" + strconv.FormatInt(gen, 10) }
	hw := json.RawMessage(`{"disks":[]}`)

	// Ten agents report at once: exactly one gets the token.
	var mu sync.Mutex
	var tokens []string
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			res, err := e.Store.ReportIssuing(ctx, "dc1", mac, hw, mint)
			if err != nil {
				t.Error(err)
				return
			}
			if res.AgentToken != "" {
				mu.Lock()
				tokens = append(tokens, res.AgentToken)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(tokens) != 1 || tokens[0] != mint(task.TaskID, 1) {
		t.Fatalf("tokens issued: %v", tokens)
	}
	v, _ := e.Get(t, "/os/install/task/dc1/"+task.TaskID+"/agent_token")
	sum := sha256.Sum256([]byte(tokens[0]))
	if strings.Contains(v, tokens[0]) || !strings.Contains(v, hex.EncodeToString(sum[:])) {
		t.Fatalf("stored: %s", v)
	}
	got, _ := e.Store.GetTask(ctx, task.TaskID)
	if !got.AgentToken.Matches(tokens[0]) || got.AgentToken.Matches(mint(task.TaskID, 2)) || got.AgentToken.Matches("") {
		t.Fatal("Matches")
	}
	if b, _ := json.Marshal(got); strings.Contains(string(b), hex.EncodeToString(sum[:])) {
		t.Fatalf("the hash leaks into the task's JSON: %s", b)
	}

	reset, err := e.Store.ResetAgentToken(ctx, task.TaskID)
	if err != nil || reset.AgentToken.Generation != 2 || reset.AgentToken.Issued() || reset.AgentToken.Matches(tokens[0]) {
		t.Fatalf("reset: %+v %v", reset.AgentToken, err)
	}
	res, err := e.Store.ReportIssuing(ctx, "dc1", mac, hw, mint)
	if err != nil || res.AgentToken != mint(task.TaskID, 2) || !res.Task.AgentToken.Matches(res.AgentToken) {
		t.Fatalf("report after reset: %q %v", res.AgentToken, err)
	}
	if res, _ := e.Store.ReportIssuing(ctx, "dc1", mac, hw, mint); res.AgentToken != "" {
		t.Fatal("second report after reset got a token")
	}
	audit, _ := e.Store.ListAudit(ctx, store.AuditFilter{TaskID: task.TaskID, Action: "agent_token"})
	if len(audit) != 1 || audit[0].Action != store.AuditAgentTokenReset || audit[0].Detail["generation"] != "2" {
		t.Fatalf("audit: %+v", audit)
	}

	if _, err := e.Store.CancelTask(ctx, task.TaskID, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Store.ResetAgentToken(ctx, task.TaskID); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("reset of a cancelled task: %v", err)
	}
}
