package faulttest

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/images"
	"lpmos.dev/lpmos/internal/proc"
	"lpmos.dev/lpmos/lab/labtest"
	"lpmos.dev/lpmos/store"
)

// imageSize is the image every agent streams: large enough that a fault lands
// mid-stream, with --image-rate setting how long the stream lasts.
const imageSize = 256 << 20

var (
	binDir    string       // the four binaries, built once
	imagesDir string       // the shared catalog (read-only to the appliances)
	image     images.Entry // its one image
	timingsMu sync.Mutex   // the timings file is appended to by parallel tests
	osRef     = contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}
)

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		fmt.Println("faulttest: skipped with -short (real processes, a 256 MiB image per test)")
		os.Exit(0)
	}
	tmp, err := os.MkdirTemp("", "lpmos-faulttest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := 1
	if err := setup(tmp); err != nil {
		fmt.Fprintln(os.Stderr, "faulttest setup:", err)
	} else {
		code = m.Run()
	}
	os.RemoveAll(tmp)
	os.Exit(code)
}

// setup builds the binaries and the image catalog every test shares.
func setup(tmp string) error {
	binDir = filepath.Join(tmp, "bin")
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	cmd := exec.Command(gobin, "build", "-o", binDir+"/", "./store/cmd/lpmos-etcd", "./appliance/cmd/lpmos-appliance",
		"./control/cmd/lpmos-control", "./agent-initramfs/cmd/lpmos-agent")
	cmd.Dir = filepath.Join("..", "..")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v\n%s", err, out)
	}
	imagesDir = filepath.Join(tmp, "images")
	if err := os.Mkdir(imagesDir, 0o755); err != nil {
		return err
	}
	// Random bytes (no compression shortcut anywhere), from a fixed seed.
	path := filepath.Join(imagesDir, "ubuntu-22.04.img")
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	rng := rand.NewChaCha8([32]byte{'l', 'p', 'm', 'o', 's'})
	if _, err := io.CopyN(f, rng, imageSize); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	cat, err := images.OpenCatalog(imagesDir)
	if err != nil {
		return err
	}
	image, err = cat.Add(context.Background(), osRef, path, images.FormatRaw)
	return err
}

// freePort is a loopback TCP port nobody listens on right now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// member is one lpmos-etcd process of the cluster.
type member struct {
	name             string
	dir              string
	client, peer     int
	proc             *proc.Proc
	killed, replaced bool
}

func (m *member) clientURL() string { return fmt.Sprintf("http://127.0.0.1:%d", m.client) }
func (m *member) peerURL() string   { return fmt.Sprintf("http://127.0.0.1:%d", m.peer) }
func (m *member) endpoint() string  { return fmt.Sprintf("127.0.0.1:%d", m.client) }

// system is one test's cluster, appliance, control plane and agent.
type system struct {
	t       *testing.T
	dir     string
	members []*member
	token   string // --initial-cluster-token
	cli     *clientv3.Client
	st      *store.Store

	appArgs, cpArgs []string
	app, cp         *proc.Proc
	appURL, cpURL   string
	admin           string // the control plane's API token

	mac    string
	target string
	agent  *proc.Proc
	taskID string
}

// ctx is a context for one step of a test.
func stepCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// newSystem starts three members, the appliance (image streams at rate bytes/s, 0:
// unlimited) and the control plane, and an admin token.
func newSystem(t *testing.T, name string, rate int64) *system {
	s := &system{t: t, dir: t.TempDir(), token: "faulttest-" + name, mac: "52:54:00:fa:00:01"}
	for i := range 3 {
		s.members = append(s.members, &member{name: fmt.Sprintf("m%d", i+1), dir: filepath.Join(s.dir, fmt.Sprintf("m%d.etcd", i+1)),
			client: freePort(t), peer: freePort(t)})
	}
	cluster := s.initialCluster()
	for _, m := range s.members {
		s.startMember(m, cluster, "new")
	}
	for _, m := range s.members {
		s.waitMember(m)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: s.endpoints(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	s.cli, s.st = cli, store.New(cli)
	ctx := stepCtx(t, 30*time.Second)
	if _, err := s.st.AddUser(ctx, "admin", store.RoleAdmin, "correct horse battery"); err != nil {
		t.Fatal(err)
	}
	if _, s.admin, err = s.st.CreateToken(ctx, "admin", time.Hour); err != nil {
		t.Fatal(err)
	}

	kernel, initrd := filepath.Join(s.dir, "vmlinuz"), filepath.Join(s.dir, "initramfs.cpio.gz")
	os.WriteFile(kernel, bytes.Repeat([]byte("K"), 64<<10), 0o644)
	os.WriteFile(initrd, bytes.Repeat([]byte("I"), 64<<10), 0o644)
	appPort := freePort(t)
	s.appURL = fmt.Sprintf("http://127.0.0.1:%d", appPort)
	s.appArgs = []string{filepath.Join(binDir, "lpmos-appliance"), "--label=dc1", "--api-host=127.0.0.1", "--api-port=" + strconv.Itoa(appPort),
		"--etcd-endpoints=" + strings.Join(s.endpoints(), ","), "--images-dir=" + imagesDir,
		"--agent-token-key=" + filepath.Join(s.dir, "dc1.agent-token.key"), "--image-rate=" + strconv.FormatInt(rate, 10),
		"--heartbeat-ttl=10s", "--retry-after=2", "--tftp-addr=", "--kernel=" + kernel, "--initramfs=" + initrd}
	s.startAppliance()
	cpPort := freePort(t)
	s.cpURL = fmt.Sprintf("http://127.0.0.1:%d", cpPort)
	s.cpArgs = []string{filepath.Join(binDir, "lpmos-control"), "--host=127.0.0.1", "--port=" + strconv.Itoa(cpPort),
		"--etcd-endpoints=" + strings.Join(s.endpoints(), ",")}
	s.startControl()
	return s
}

func (s *system) initialCluster() string {
	var parts []string
	for _, m := range s.members {
		if !m.replaced {
			parts = append(parts, m.name+"="+m.peerURL())
		}
	}
	return strings.Join(parts, ",")
}

// endpoints are every member's client address, as the appliance and control plane
// take them (the replaced member's stays: clients cope with a dead endpoint).
func (s *system) endpoints() []string {
	var eps []string
	for _, m := range s.members {
		eps = append(eps, m.endpoint())
	}
	return eps
}

func (s *system) start(name string, argv []string) *proc.Proc {
	s.t.Helper()
	return labtest.StartProc(s.t, s.dir, name, "", argv...)
}

func (s *system) startMember(m *member, cluster, state string) {
	m.killed = false
	m.proc = s.start(m.name, []string{filepath.Join(binDir, "lpmos-etcd"), "--name=" + m.name, "--data-dir=" + m.dir,
		"--listen-client-urls=" + m.clientURL(), "--advertise-client-urls=" + m.clientURL(),
		"--listen-peer-urls=" + m.peerURL(), "--initial-advertise-peer-urls=" + m.peerURL(),
		"--initial-cluster=" + cluster, "--initial-cluster-state=" + state, "--initial-cluster-token=" + s.token})
}

func (s *system) waitMember(m *member) {
	s.t.Helper()
	if _, err := m.proc.NextLine(stepCtx(s.t, 90*time.Second), "serving clients"); err != nil {
		s.t.Fatalf("member %s: %v\n%s", m.name, err, proc.Tail(m.proc.Log(), 20))
	}
}

func (s *system) kill(m *member) {
	m.proc.Kill()
	m.killed = true
}

func (s *system) startAppliance() {
	s.t.Helper()
	s.app = s.start("appliance", s.appArgs)
	if _, err := s.app.NextLine(stepCtx(s.t, 60*time.Second), "Regional appliance ready"); err != nil {
		s.t.Fatal(err)
	}
}

func (s *system) startControl() {
	s.t.Helper()
	s.cp = s.start("control", s.cpArgs)
	if _, err := s.cp.NextLine(stepCtx(s.t, 60*time.Second), "control plane ready"); err != nil {
		s.t.Fatal(err)
	}
}

// call is one HTTP request with the admin's token; it returns the status and the
// JSON body (code 0 when nothing answered).
func (s *system) call(method, url string, body any) (int, map[string]any) {
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, method, url, r)
	req.Header.Set("Authorization", "Bearer "+s.admin)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	out := map[string]any{}
	json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// poll calls cond every 100 ms until it holds; it fails the test after d.
func (s *system) poll(what string, d time.Duration, cond func() bool) {
	s.t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			s.t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(100 * time.Millisecond) // a poll with a deadline, not a synchronisation
	}
}

// task reads the task (a short deadline: the store may be away).
func (s *system) task() (store.Task, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return s.st.GetTask(ctx, s.taskID)
}

// seed creates the task through the control plane, starts the agent in host mode,
// approves the plan the agent's report produced, and returns once the image streams.
// agentToken is the task's agent token as the appliance derives it (HMAC-SHA256 of the
// region key file over "task id:generation", appliance/agenttoken.go): what the agent
// holds, for fetching the image as the agent does.
func (s *system) agentToken() string {
	s.t.Helper()
	t, err := s.task()
	if err != nil || !t.AgentToken.Issued() {
		s.t.Fatalf("agent token of %s: %v (issued %v)", s.taskID, err, t.AgentToken.Issued())
	}
	b, err := os.ReadFile(filepath.Join(s.dir, "dc1.agent-token.key"))
	if err != nil {
		s.t.Fatal(err)
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		s.t.Fatal(err)
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte(s.taskID + ":" + strconv.FormatInt(t.AgentToken.Generation, 10)))
	tok := hex.EncodeToString(m.Sum(nil))
	if !t.AgentToken.Matches(tok) {
		s.t.Fatal("the derived agent token does not match the task's (appliance/agenttoken.go changed?)")
	}
	return tok
}

func (s *system) seed() {
	s.t.Helper()
	code, body := s.call("POST", s.cpURL+"/api/v1/tasks", map[string]any{"region_id": "dc1", "target_mac": s.mac, "os_type": osRef.OSType, "os_version": osRef.OSVersion})
	if code != http.StatusCreated {
		s.t.Fatalf("create task: %d %v", code, body)
	}
	s.taskID = body["task_id"].(string)
	hw := contract.Hardware{CPU: contract.CPU{Cores: 2, Threads: 2}, Disks: []contract.Disk{
		{Name: "vdb", Path: "/dev/vdb", SizeBytes: 8 << 30, Model: "FAULTDISK", Serial: "FAULT-" + s.taskID[:8]}}}
	hwFile := filepath.Join(s.dir, "hardware.json")
	b, _ := json.Marshal(hw)
	if err := os.WriteFile(hwFile, b, 0o644); err != nil {
		s.t.Fatal(err)
	}
	s.target = filepath.Join(s.dir, "disk.img")
	s.agent = s.start("agent", []string{filepath.Join(binDir, "lpmos-agent"), "--regional-url=" + s.appURL, "--mac=" + s.mac,
		"--target=" + s.target, "--hardware=" + hwFile, "--poll-interval=1s"})
	var digest string
	s.poll("the agent's report and its plan", 60*time.Second, func() bool {
		t, err := s.task()
		if err == nil && t.Status == store.StatusPendingApproval && t.Plan != nil && t.Plan.Approvable() {
			digest = t.Plan.Digest
		}
		return digest != ""
	})
	if code, body := s.call("POST", s.cpURL+"/api/v1/tasks/"+s.taskID+"/approve", map[string]any{"plan_digest": digest}); code != http.StatusOK {
		s.t.Fatalf("approve: %d %v", code, body)
	}
}

// waitBytes waits until the agent has reported at least frac of the image.
func (s *system) waitBytes(frac float64) {
	s.t.Helper()
	s.poll(fmt.Sprintf("%.0f%% of the image streamed", frac*100), 3*time.Minute, func() bool {
		t, err := s.task()
		return err == nil && t.Progress != nil && float64(t.Progress.BytesDone) >= frac*imageSize
	})
}

// progressAfter waits until etcd holds a progress update stored after t0 and returns
// how long after t0 it was stored: the write path end to end (agent, appliance, etcd).
func (s *system) progressAfter(t0 time.Time, within time.Duration) time.Duration {
	s.t.Helper()
	var at time.Time
	s.poll("a progress update stored after the fault", within, func() bool {
		t, err := s.task()
		if err == nil && t.Progress != nil && t.Progress.UpdatedAt.After(t0) {
			at = t.Progress.UpdatedAt
		}
		return !at.IsZero()
	})
	return at.Sub(t0)
}

// figure records a recovery time in the test log and the timings file `make test`
// prints (go test hides a passing test's log).
func (s *system) figure(name string, d time.Duration, note string) {
	line := fmt.Sprintf("faults %-34s %-14s %6.2f s  %s", s.t.Name(), name, d.Seconds(), note)
	s.t.Log(line)
	if f := os.Getenv("LPMOS_TIMINGS_FILE"); f != "" {
		timingsMu.Lock()
		defer timingsMu.Unlock()
		os.MkdirAll(filepath.Dir(f), 0o755)
		if w, err := os.OpenFile(f, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
			fmt.Fprintln(w, line)
			w.Close()
		}
	}
}

// finish waits for the agent to exit and checks the outcome every fault must leave:
// the agent succeeded, the appliance's task watch saw the completion, the file holds exactly the image, the task completed once
// with its whole timeline, the indexes agree, and every running member holds the same
// keys at the same revision.
func (s *system) finish() {
	s.t.Helper()
	select {
	case <-s.agent.Done():
	case <-time.After(5 * time.Minute):
		s.t.Fatalf("agent still running after 5 min:\n%s", proc.Tail(s.agent.Log(), 20))
	}
	if err := s.agent.Err(); err != nil {
		s.t.Fatalf("agent: %v\n%s", err, proc.Tail(s.agent.Log(), 30))
	}
	// The appliance's task watch saw the end: it resumed after whatever broke it.
	if _, err := s.app.NextLine(stepCtx(s.t, 30*time.Second), "Task "+s.taskID+" status: completed"); err != nil {
		s.t.Fatalf("the appliance's task watch: %v", err)
	}
	if got := labtest.FileSHA256(s.t, s.target); got != image.SHA256 {
		s.t.Fatalf("target holds sha256 %s, the image is %s", got, image.SHA256)
	}
	ctx := stepCtx(s.t, 30*time.Second)
	t, err := s.st.GetTask(ctx, s.taskID)
	if err != nil || t.Status != store.StatusCompleted {
		s.t.Fatalf("task: %v %v", t.Status, err)
	}
	for _, at := range []*time.Time{&t.CreatedAt, t.ReportedAt, t.ApprovedAt, t.StartedAt, t.FinishedAt} {
		if at == nil || at.IsZero() {
			s.t.Fatalf("timeline incomplete: created %v reported %v approved %v started %v finished %v", t.CreatedAt, t.ReportedAt, t.ApprovedAt, t.StartedAt, t.FinishedAt)
		}
	}
	if !(t.ReportedAt.Before(*t.ApprovedAt) && t.ApprovedAt.Before(*t.StartedAt) && t.StartedAt.Before(*t.FinishedAt)) {
		s.t.Fatalf("timeline out of order: %+v", t.Metadata)
	}
	trail, err := s.st.ListAudit(ctx, store.AuditFilter{TaskID: s.taskID})
	if err != nil {
		s.t.Fatal(err)
	}
	count := map[string]int{}
	for _, e := range trail {
		count[e.Action]++
	}
	for _, a := range []string{store.AuditTaskCreate, store.AuditTaskApprove, store.AuditTaskStart, store.AuditTaskComplete} {
		if count[a] != 1 {
			s.t.Fatalf("audit trail: %d %s entries, want exactly 1 (all: %v)", count[a], a, count)
		}
	}
	if count[store.AuditTaskReport] < 1 {
		s.t.Fatalf("audit trail without the report: %v", count)
	}
	// The indexes agree with the task: in the completed list once, in no other, the
	// MAC free for a new task and its last task this one.
	for _, st := range store.Statuses {
		list, err := s.st.ListTasks(ctx, store.ListFilter{Region: "dc1", Status: st})
		if err != nil {
			s.t.Fatal(err)
		}
		n := 0
		for _, l := range list {
			if l.TaskID == s.taskID {
				n++
			}
		}
		if want := map[bool]int{true: 1, false: 0}[st == store.StatusCompleted]; n != want {
			s.t.Fatalf("status index %s lists the task %d times, want %d", st, n, want)
		}
	}
	if _, err := s.st.OpenTaskForMAC(ctx, "dc1", s.mac); !errors.Is(err, store.ErrNotFound) {
		s.t.Fatalf("open task for the MAC after completion: %v", err)
	}
	if last, err := s.st.LatestTaskForMAC(ctx, "dc1", s.mac); err != nil || last.TaskID != s.taskID {
		s.t.Fatalf("latest task for the MAC: %v %v", last.TaskID, err)
	}
	s.sameKeys()
}

// sameKeys waits until every running member holds the same keys and values at the
// same revision, each read from that member alone (serializable).
func (s *system) sameKeys() {
	s.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		diff := s.keysDiffer()
		if diff == "" {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("members still differ after 30 s: %s", diff)
		}
		time.Sleep(100 * time.Millisecond) // a poll with a deadline
	}
}

// keysDiffer says how the running members' keys differ ("" when they agree).
func (s *system) keysDiffer() string {
	var first map[string]string
	var firstRev int64
	var firstName string
	for _, m := range s.members {
		if m.killed || m.replaced {
			continue
		}
		kvs, rev, err := memberKeys(m)
		if err != nil {
			return fmt.Sprintf("%s: %v", m.name, err)
		}
		if first == nil {
			first, firstRev, firstName = kvs, rev, m.name
			continue
		}
		if rev != firstRev || len(kvs) != len(first) {
			return fmt.Sprintf("%s at revision %d with %d keys, %s at %d with %d", m.name, rev, len(kvs), firstName, firstRev, len(first))
		}
		for k, v := range first {
			if kvs[k] != v {
				return fmt.Sprintf("key %s differs between %s and %s", k, m.name, firstName)
			}
		}
	}
	if len(first) == 0 {
		return "no member answered with keys"
	}
	return ""
}

// memberKeys reads every key from one member alone.
func memberKeys(m *member) (map[string]string, int64, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{m.endpoint()}, DialTimeout: 2 * time.Second})
	if err != nil {
		return nil, 0, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "/", clientv3.WithPrefix(), clientv3.WithSerializable())
	if err != nil {
		return nil, 0, err
	}
	out := make(map[string]string, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out[string(kv.Key)] = string(kv.Value)
	}
	return out, resp.Header.Revision, nil
}

// leader is the member etcd elected, asked of the running members.
func (s *system) leader() (*member, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	ids := map[uint64]*member{}
	var lead uint64
	for _, m := range s.members {
		if m.killed || m.replaced {
			continue
		}
		st, err := s.cli.Status(ctx, m.endpoint())
		if err != nil {
			continue
		}
		ids[st.Header.MemberId] = m
		if st.Leader != 0 {
			lead = st.Leader
		}
	}
	if m := ids[lead]; m != nil {
		return m, nil
	}
	return nil, errors.New("no leader")
}
