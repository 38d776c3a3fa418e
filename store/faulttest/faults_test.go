package faulttest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"lpmos.dev/lpmos/internal/proc"
	"lpmos.dev/lpmos/store"
)

// Image stream rates: 16 MiB/s streams the image in 16 s, so a fault at a quarter
// lands mid-stream with seconds to spare; the quorum test streams at 4 MiB/s (64 s) so
// the stream outlasts its 30 s outage.
const (
	rateNormal = 16 << 20
	rateSlow   = 4 << 20
)

// The leader is killed (kill -9) mid-stream: the survivors elect a new one, the
// appliance's and control plane's clients move over, the agent never notices beyond a
// lost progress update, and the task completes once. The killed member, started again
// on its data, catches up.
func TestLeaderKilled(t *testing.T) {
	t.Parallel()
	s := newSystem(t, "leader", rateNormal)
	s.seed()
	s.waitBytes(0.25)
	lead, err := s.leader()
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	s.kill(lead)
	var elected time.Duration
	s.poll("a new leader", 30*time.Second, func() bool {
		m, err := s.leader()
		elected = time.Since(t0)
		return err == nil && m != lead
	})
	s.figure("new_leader", elected, "leader "+lead.name+" killed -9")
	s.figure("t_recover", s.progressAfter(t0, 30*time.Second), "first progress update stored after the kill")
	s.finish()
	s.startMember(lead, s.initialCluster(), "new") // a data dir: the flags are ignored
	s.waitMember(lead)
	s.sameKeys()
}

// Quorum lost (two of three killed) mid-stream, restored after 30 s: meanwhile the
// appliance answers agents 503 with retry_after within its deadline, keeps serving
// boot files and the image, and the agent keeps streaming and waits; nothing is half
// written; once the members are back the heartbeat resumes and the task completes.
func TestQuorumLost(t *testing.T) {
	t.Parallel()
	s := newSystem(t, "quorum", rateSlow)
	s.seed()
	s.waitBytes(0.15)
	lead, err := s.leader()
	if err != nil {
		t.Fatal(err)
	}
	tok := s.agentToken() // before the outage: it reads the task's token generation
	down := []*member{lead}
	for _, m := range s.members {
		if m != lead && len(down) < 2 {
			down = append(down, m)
		}
	}
	for _, m := range down {
		s.kill(m)
	}
	t0 := time.Now()
	outage := time.After(30 * time.Second)
	saw503, served := 0, 0
	for waiting := true; waiting; {
		// What an agent sees: the approval poll answered 503 + retry_after in time.
		start := time.Now()
		code, body := s.call("GET", s.appURL+"/api/approval/"+s.mac, nil)
		if took := time.Since(start); code == http.StatusServiceUnavailable && body["retry_after"] != nil && took < 5*time.Second {
			saw503++
		} else if time.Since(t0) > 5*time.Second { // the first seconds may still be answered from before
			t.Errorf("approval poll with quorum lost: %d %v after %s, want 503 with retry_after within 5 s (2 s deadline + slack for a loaded machine)", code, body, took)
		}
		// What a booting machine needs: boot files and the image, without etcd.
		if getOK(t, s.appURL+"/boot/files/vmlinuz", "", "") && getOK(t, s.appURL+"/images/"+image.File+"?task="+s.taskID, "bytes=0-1023", tok) {
			served++
		}
		select {
		case <-outage:
			waiting = false
		case <-time.After(time.Second):
		}
	}
	if saw503 == 0 || served == 0 {
		t.Fatalf("during the outage: %d answers 503, %d times boot files and image served", saw503, served)
	}
	if task, err := s.task(); err == nil {
		t.Fatalf("the task read without quorum: %v", task.Status)
	}
	t1 := time.Now()
	for _, m := range down {
		s.startMember(m, s.initialCluster(), "new")
	}
	for _, m := range down {
		s.waitMember(m)
	}
	s.figure("quorum_back", time.Since(t1), "two members restarted on their data")
	s.figure("t_recover", s.progressAfter(t1, 60*time.Second), "first progress update stored after quorum came back")
	s.poll("the heartbeat resumed", 30*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		r, err := s.st.GetRegion(ctx, "dc1")
		return err == nil && r.Online && r.Heartbeat != nil && r.Heartbeat.Timestamp.After(t1)
	})
	s.finish()
	if log := s.agent.Log(); !strings.Contains(log, "503") {
		t.Fatalf("the agent never saw a 503 while quorum was lost:\n%s", proc.Tail(log, 30))
	}
	s.figure("outage", t1.Sub(t0), fmt.Sprintf("%d answers 503 + retry_after; boot files and image served %d times", saw503, served))
}

// getOK fetches url (with a Range header when rng is set) and reports a 2xx with a body.
func getOK(t *testing.T, url, rng, token string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Logf("GET %s: %v", url, err)
		return false
	}
	defer resp.Body.Close()
	n, _ := io.Copy(io.Discard, resp.Body)
	return resp.StatusCode/100 == 2 && n > 0
}

// The appliance is killed (kill -9) mid-stream and started again: the agent resumes
// the image where it was (HTTP Range) and its progress lands again. Then the control
// plane is killed and started again: it serves the task at once.
func TestApplianceAndControlKilled(t *testing.T) {
	t.Parallel()
	s := newSystem(t, "appliance", rateNormal)
	s.seed()
	s.waitBytes(0.25)
	s.app.Kill()
	t0 := time.Now()
	s.startAppliance()
	s.figure("appliance_up", time.Since(t0), "appliance killed -9 and started again")
	s.figure("t_recover", s.progressAfter(t0, 60*time.Second), "first progress update stored after the appliance's kill")
	s.waitBytes(0.5)
	s.cp.Kill()
	t1 := time.Now()
	s.startControl()
	s.poll("the control plane serving the task", 30*time.Second, func() bool {
		code, body := s.call("GET", s.cpURL+"/api/v1/tasks/"+s.taskID, nil)
		return code == http.StatusOK && body["task_id"] == s.taskID
	})
	s.figure("t_recover_cp", time.Since(t1), "control plane killed -9, started again, serving the task")
	s.finish()
	if log := s.agent.Log(); !strings.Contains(log, "resuming") {
		t.Fatalf("the agent's image download was never interrupted and resumed:\n%s", proc.Tail(log, 30))
	}
}

// A member's disk is lost mid-stream: it is killed, its data dir deleted, removed from
// the cluster and a new member (empty data dir, --initial-cluster-state existing) added
// in its place; the cluster and the install carry on, and the new member holds every key.
func TestMemberReplaced(t *testing.T) {
	t.Parallel()
	s := newSystem(t, "replace", rateNormal)
	s.seed()
	s.waitBytes(0.25)
	lead, err := s.leader()
	if err != nil {
		t.Fatal(err)
	}
	var old *member
	for _, m := range s.members {
		if m != lead {
			old = m
			break
		}
	}
	t0 := time.Now()
	s.kill(old)
	if err := os.RemoveAll(old.dir); err != nil {
		t.Fatal(err)
	}
	ctx := stepCtx(t, 30*time.Second)
	list, err := s.cli.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range list.Members {
		if m.Name == old.name {
			if _, err := s.cli.MemberRemove(ctx, m.ID); err != nil {
				t.Fatalf("member remove %s: %v", old.name, err)
			}
		}
	}
	old.replaced = true
	repl := &member{name: "m4", dir: filepath.Join(s.dir, "m4.etcd"), client: freePort(t), peer: freePort(t)}
	if _, err := s.cli.MemberAdd(ctx, []string{repl.peerURL()}); err != nil {
		t.Fatalf("member add: %v", err)
	}
	s.members = append(s.members, repl)
	s.startMember(repl, s.initialCluster(), "existing")
	s.waitMember(repl)
	s.sameKeys()
	s.figure("t_replace", time.Since(t0), "member killed, data dir deleted, removed, new member added and caught up")
	list, err = s.cli.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range list.Members {
		names = append(names, m.Name)
		if m.IsLearner || m.Name == "" {
			t.Fatalf("member %x not a started voting member: %+v", m.ID, m)
		}
	}
	if len(list.Members) != 3 || strings.Contains(strings.Join(names, ","), old.name) {
		t.Fatalf("members after the replacement: %v", names)
	}
	s.finish()
}

// A snapshot of the cluster, restored into a new one-member cluster: a control plane
// on it serves the same tasks, and the keys are the same.
func TestSnapshotRestore(t *testing.T) {
	t.Parallel()
	s := newSystem(t, "snapshot", 0)
	s.seed()
	s.finish()
	before, _, err := memberKeys(s.members[0])
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(s.dir, "lpmos.snapshot.db")
	t0 := time.Now()
	lpmosEtcd(t, "snapshot", "save", file, "--endpoints="+strings.Join(s.endpoints(), ","))
	saved := time.Since(t0)
	r := &member{name: "restored", dir: filepath.Join(s.dir, "restored.etcd"), client: freePort(t), peer: freePort(t)}
	lpmosEtcd(t, "snapshot", "restore", file, "--data-dir="+r.dir, "--name="+r.name,
		"--initial-cluster="+r.name+"="+r.peerURL(), "--initial-advertise-peer-urls="+r.peerURL(), "--initial-cluster-token=restored")
	r.proc = s.start(r.name, []string{filepath.Join(binDir, "lpmos-etcd"), "--name=" + r.name, "--data-dir=" + r.dir,
		"--listen-client-urls=" + r.clientURL(), "--listen-peer-urls=" + r.peerURL(),
		"--initial-cluster=" + r.name + "=" + r.peerURL(), "--initial-cluster-token=restored"})
	s.waitMember(r)
	s.figure("t_restore", time.Since(t0), fmt.Sprintf("snapshot saved in %.2f s, restored, new 1-member cluster serving", saved.Seconds()))

	after, _, err := memberKeys(r)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range before {
		// Leased keys (the heartbeat) may have changed since; everything else is equal.
		if after[k] != v && !strings.HasPrefix(k, "/os/region/") {
			t.Fatalf("restored key %s: %q, was %q", k, after[k], v)
		}
	}
	cpPort := freePort(t)
	s.cpURL = fmt.Sprintf("http://127.0.0.1:%d", cpPort)
	s.cpArgs = []string{filepath.Join(binDir, "lpmos-control"), "--host=127.0.0.1", fmt.Sprintf("--port=%d", cpPort), "--etcd-endpoints=" + r.endpoint()}
	s.cp.Stop(5 * time.Second)
	s.startControl()
	code, body := s.call("GET", s.cpURL+"/api/v1/tasks/"+s.taskID, nil)
	if code != http.StatusOK || body["status"] != string(store.StatusCompleted) {
		t.Fatalf("the restored cluster's control plane: task %d %v", code, body)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{r.endpoint()}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	tasks, err := store.New(cli).ListTasks(stepCtx(t, 10*time.Second), store.ListFilter{Region: "dc1"})
	if err != nil || len(tasks) != 1 || tasks[0].TaskID != s.taskID || tasks[0].Status != store.StatusCompleted {
		t.Fatalf("tasks in the restored cluster: %+v %v", tasks, err)
	}
}

// lpmosEtcd runs the lpmos-etcd binary to its end.
func lpmosEtcd(t *testing.T, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(binDir, "lpmos-etcd"), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("lpmos-etcd %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Logf("lpmos-etcd %s: %s", args[1], strings.TrimSpace(string(out)))
}
