package wantest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/images"
	"lpmos.dev/lpmos/internal/netlab"
	"lpmos.dev/lpmos/internal/netlab/netlabtest"
	"lpmos.dev/lpmos/internal/proc"
	"lpmos.dev/lpmos/lab/labtest"
	"lpmos.dev/lpmos/store"
)

// The image every machine streams: imageSize at imageRate lasts 24 s, so an install
// started before the cut is mid-stream when the link goes down and done well before
// the 60 s cut ends, and an install started during the cut ends during it too.
const (
	imageSize = 48 << 20
	imageRate = 2 << 20
)

// The addresses of the test's own namespaces (nothing else is ever dialled).
const (
	hqToDC1  = "10.161.1.1" // hq's end of hq<->dc1: the shared etcd listens here for dc1
	dc1ToHQ  = "10.161.1.2"
	hqToDC2  = "10.161.2.1"
	dc2ToHQ  = "10.161.2.2" // dc2's end of hq<->dc2: dc2's embedded etcd listens here for hq
	dc2Link  = "whq"        // dc2's end of the hq<->dc2 veth: the link the tests cut
	applPort = 8081         // each appliance's regional API, on 127.0.0.1 of its namespace
	cpPort   = 8080         // the control plane, on 127.0.0.1 of hq
)

var osRef = contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}

// lab is the three sites and their processes.
type lab struct {
	t            *testing.T
	dir, bin     string
	image        images.Entry
	imagesDir    string
	hq, dc1, dc2 string // namespaces

	etcd, cp, app1, app2 *proc.Proc
	home                 *store.Store // hq's shared etcd, dialled inside hq
	dc2cli               *clientv3.Client
	dc2st                *store.Store // dc2's own etcd, dialled inside dc2 (as on the appliance host)
	cpHTTP, dc1HTTP      *http.Client
	dc2HTTP              *http.Client
	admin                string    // the control plane's API token
	feed                 *liveFeed // the live push, followed through the whole test
	agents               int       // agents started, for unique log names
}

// newLab builds the binaries and the image, creates the namespaces and links, and
// starts hq's etcd, both appliances and the control plane, with an admin token.
func newLab(t *testing.T) *lab {
	netlabtest.Require(t)
	if testing.Short() {
		t.Skip("SKIP: -short (real processes, three namespaces, minutes of WAN cuts)")
	}
	l := &lab{t: t, dir: t.TempDir()}
	l.bin = labtest.BuildBinaries(t, filepath.Join(l.dir, "bin"), "./store/cmd/lpmos-etcd",
		"./appliance/cmd/lpmos-appliance", "./control/cmd/lpmos-control", "./agent-initramfs/cmd/lpmos-agent")
	l.makeImage()

	l.hq, l.dc1, l.dc2 = netlabtest.NS(t, "hq"), netlabtest.NS(t, "dc1"), netlabtest.NS(t, "dc2")
	netlabtest.Link(t, l.hq, "wdc1", hqToDC1+"/24", l.dc1, "whq", dc1ToHQ+"/24")
	netlabtest.Link(t, l.hq, "wdc2", hqToDC2+"/24", l.dc2, dc2Link, dc2ToHQ+"/24")
	l.cpHTTP, l.dc1HTTP, l.dc2HTTP = nsHTTP(l.hq), nsHTTP(l.dc1), nsHTTP(l.dc2)

	l.etcd = l.start("etcd-hq", l.hq, filepath.Join(l.bin, "lpmos-etcd"), "--name=hq", "--data-dir="+filepath.Join(l.dir, "hq.etcd"),
		"--listen-client-urls=http://127.0.0.1:2379,http://"+hqToDC1+":2379", "--advertise-client-urls=http://"+hqToDC1+":2379",
		"--listen-peer-urls=http://127.0.0.1:2380", "--initial-cluster=hq=http://127.0.0.1:2380", "--initial-cluster-token=wantest-hq")
	l.app2 = l.start("appliance-dc2", l.dc2, l.applianceArgs("dc2",
		"--etcd-data-dir="+filepath.Join(l.dir, "dc2.etcd"),
		"--etcd-listen-client-urls=http://127.0.0.1:2379,http://"+dc2ToHQ+":2379",
		"--etcd-listen-peer-urls=http://127.0.0.1:2380")...)
	l.expect(l.etcd, "serving clients", 60*time.Second)
	l.app1 = l.start("appliance-dc1", l.dc1, l.applianceArgs("dc1", "--etcd-endpoints=http://"+hqToDC1+":2379")...)
	l.expect(l.app2, "Regional appliance ready", 60*time.Second)
	l.expect(l.app1, "Regional appliance ready", 60*time.Second)

	homeCli := nsEtcd(t, l.hq, "127.0.0.1:2379")
	l.home = store.New(homeCli)
	l.dc2cli = nsEtcd(t, l.dc2, "127.0.0.1:2379")
	l.dc2st = store.New(l.dc2cli)
	ctx := stepCtx(t, 30*time.Second)
	if _, err := l.home.AddUser(ctx, "admin", store.RoleAdmin, "correct horse battery"); err != nil {
		t.Fatal(err)
	}
	var err error
	if _, l.admin, err = l.home.CreateToken(ctx, "admin", time.Hour); err != nil {
		t.Fatal(err)
	}

	l.cp = l.start("control", l.hq, filepath.Join(l.bin, "lpmos-control"), "--host=127.0.0.1", "--port="+strconv.Itoa(cpPort),
		"--etcd-endpoints=127.0.0.1:2379", "--region=dc2=http://"+dc2ToHQ+":2379")
	l.expect(l.cp, "control plane ready", 60*time.Second)

	// Both regions heartbeat: the control plane lists dc1 from the shared cluster and
	// dc2 from its own.
	l.poll("the control plane lists dc1 (shared) and dc2 (own cluster, reachable) online", 30*time.Second, func() bool {
		r := l.regions()
		d1, d2 := r["dc1"], r["dc2"]
		return d1.Online && d1.Cluster == "shared" && d2.Online && d2.Cluster == "own" && d2.Reachable != nil && *d2.Reachable
	})
	l.feed = l.follow()
	return l
}

// applianceArgs is an appliance's command line: no DHCP/TFTP, the shared image
// catalog at imageRate, agents told to retry after 2 s, and no report or stream caps
// (the catch-up sweep writes a thousand reports from one address).
func (l *lab) applianceArgs(label string, etcd ...string) []string {
	kernel, initrd := filepath.Join(l.dir, "vmlinuz"), filepath.Join(l.dir, "initramfs.cpio.gz")
	os.WriteFile(kernel, bytes.Repeat([]byte("K"), 64<<10), 0o644)
	os.WriteFile(initrd, bytes.Repeat([]byte("I"), 64<<10), 0o644)
	return append([]string{filepath.Join(l.bin, "lpmos-appliance"), "--label=" + label, "--api-host=127.0.0.1",
		"--api-port=" + strconv.Itoa(applPort), "--images-dir=" + l.imagesDir,
		"--agent-token-key=" + filepath.Join(l.dir, label+".agent-token.key"), "--image-rate=" + strconv.Itoa(imageRate),
		"--heartbeat-ttl=10s", "--retry-after=2", "--tftp-addr=", "--kernel=" + kernel, "--initramfs=" + initrd,
		"--report-burst-per-source=0", "--report-burst-per-mac=0", "--max-streams-per-source=0"}, etcd...)
}

// makeImage writes imageSize random bytes (no compression shortcut) into a catalog
// both appliances serve.
func (l *lab) makeImage() {
	l.imagesDir = filepath.Join(l.dir, "images")
	if err := os.Mkdir(l.imagesDir, 0o755); err != nil {
		l.t.Fatal(err)
	}
	path := filepath.Join(l.imagesDir, "ubuntu-22.04.img")
	f, err := os.Create(path)
	if err != nil {
		l.t.Fatal(err)
	}
	if _, err := io.CopyN(f, rand.NewChaCha8([32]byte{'w', 'a', 'n'}), imageSize); err != nil {
		l.t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		l.t.Fatal(err)
	}
	cat, err := images.OpenCatalog(l.imagesDir)
	if err != nil {
		l.t.Fatal(err)
	}
	if l.image, err = cat.Add(context.Background(), osRef, path, images.FormatRaw); err != nil {
		l.t.Fatal(err)
	}
}

// start runs argv in namespace ns, logged to the lab's dir; it is stopped by PID when
// the test ends (its last lines shown if the test failed).
func (l *lab) start(name, ns string, argv ...string) *proc.Proc {
	l.t.Helper()
	return labtest.StartProc(l.t, l.dir, name, ns, argv...)
}

func (l *lab) expect(p *proc.Proc, line string, within time.Duration) {
	l.t.Helper()
	if _, err := p.NextLine(stepCtx(l.t, within), line); err != nil {
		l.t.Fatalf("%v\n%s", err, proc.Tail(p.Log(), 25))
	}
}

// stepCtx is a context for one step of a test.
func stepCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// shortCtx bounds one read: the cluster may be out of reach.
func shortCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 3*time.Second)
}

// nsHTTP is an HTTP client whose connections are opened inside namespace ns.
func nsHTTP(ns string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return netlab.Dial(ctx, ns, network, addr)
		},
		MaxIdleConnsPerHost: 16,
	}}
}

// nsEtcd is an etcd client whose connections are opened inside namespace ns.
func nsEtcd(t *testing.T, ns, endpoint string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return netlab.Dial(ctx, ns, "tcp", addr)
		})}})
	if err != nil {
		t.Fatalf("etcd client in %s: %v", ns, err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// poll calls cond every 100 ms until it holds; it fails the test after d.
func (l *lab) poll(what string, d time.Duration, cond func() bool) {
	l.t.Helper()
	if !pollUntil(d, cond) {
		l.t.Fatalf("%s: not within %s", what, d)
	}
}

// pollUntil calls cond every 100 ms until it holds (true) or d passes (false).
func pollUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond) // a poll with a deadline, not a synchronisation
	}
	return true
}

// call is one request to the control plane with the admin's token: the status (0 when
// nothing answered) and the body; a JSON body is decoded into out when out is not nil.
func (l *lab) call(method, path string, body, out any) (int, string) {
	return call(l.cpHTTP, method, "http://127.0.0.1:"+strconv.Itoa(cpPort)+path, l.admin, body, out)
}

func call(c *http.Client, method, u, token string, body, out any) (int, string) {
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, method, u, r)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, fmt.Sprintf("%s (not JSON: %v)", b, err)
		}
	}
	return resp.StatusCode, string(b)
}

// The control API's answers, as the design's "Observable API" names them.
type (
	apiRegion struct {
		Region           string         `json:"region"`
		Online           bool           `json:"online"`
		Counts           map[string]int `json:"counts"`
		Unmatched        int            `json:"unmatched"`
		Cluster          string         `json:"cluster"`
		Reachable        *bool          `json:"reachable"`
		UnreachableSince string         `json:"unreachable_since"`
		Stale            bool           `json:"stale"`
	}
	apiTask struct {
		store.Task
		Stale bool `json:"stale"`
	}
	apiTasks struct {
		Tasks        []apiTask `json:"tasks"`
		Next         string    `json:"next"`
		StaleRegions []string  `json:"stale_regions"`
	}
	apiUnmatched struct {
		Reports []struct {
			ID         string `json:"id"`
			MACAddress string `json:"mac_address"`
		} `json:"reports"`
		Next string `json:"next"`
	}
	apiAudit struct {
		Entries []store.AuditEntry `json:"entries"`
		Next    string             `json:"next"`
	}
	apiError struct {
		Status     string `json:"status"`
		Message    string `json:"message"`
		RetryAfter int    `json:"retry_after"`
	}
)

// regions is GET /api/v1/regions by name (empty when the control plane does not answer).
func (l *lab) regions() map[string]apiRegion {
	var out struct {
		Regions []apiRegion `json:"regions"`
	}
	m := map[string]apiRegion{}
	if code, _ := l.call("GET", "/api/v1/regions", nil, &out); code == http.StatusOK {
		for _, r := range out.Regions {
			m[r.Region] = r
		}
	}
	return m
}

// machine is a host-mode agent playing one server of a region.
type machine struct {
	name, region, ns, mac string
	target, hwFile        string
	taskID                string
	agent                 *proc.Proc
}

var macSeq struct {
	sync.Mutex
	n int
}

// newMachine is a machine of region with a fresh MAC and an 8 GiB disk.
func (l *lab) newMachine(name, region string) *machine {
	macSeq.Lock()
	macSeq.n++
	n := macSeq.n
	macSeq.Unlock()
	ns := map[string]string{"dc1": l.dc1, "dc2": l.dc2}[region]
	m := &machine{name: name, region: region, ns: ns, mac: fmt.Sprintf("52:54:00:16:%02x:%02x", n>>8, n&0xff),
		target: filepath.Join(l.dir, name+".disk"), hwFile: filepath.Join(l.dir, name+".hardware.json")}
	hw := contract.Hardware{CPU: contract.CPU{Cores: 2, Threads: 2}, Disks: []contract.Disk{
		{Name: "vdb", Path: "/dev/vdb", SizeBytes: 8 << 30, Model: "WANDISK", Serial: "WAN-" + name}}}
	b, _ := json.Marshal(hw)
	if err := os.WriteFile(m.hwFile, b, 0o644); err != nil {
		l.t.Fatal(err)
	}
	return m
}

// regionStore reads a region's keys directly: dc1's in hq's etcd, dc2's in its own.
func (l *lab) regionStore(region string) *store.Store {
	if region == "dc2" {
		return l.dc2st
	}
	return l.home
}

// create creates m's task through the control plane.
func (l *lab) create(m *machine) {
	l.t.Helper()
	var t apiTask
	if code, body := l.call("POST", "/api/v1/tasks", store.NewTask{RegionID: m.region, TargetMAC: m.mac, OSRef: osRef}, &t); code != http.StatusCreated {
		l.t.Fatalf("create %s: %d %s", m.name, code, body)
	}
	m.taskID = t.TaskID
}

// boot starts m's agent (in its region's namespace, against its appliance).
func (l *lab) boot(m *machine, extra ...string) {
	l.t.Helper()
	l.agents++
	m.agent = l.start(fmt.Sprintf("agent-%s-%d", m.name, l.agents), m.ns, append([]string{filepath.Join(l.bin, "lpmos-agent"),
		"--regional-url=http://127.0.0.1:" + strconv.Itoa(applPort), "--mac=" + m.mac, "--target=" + m.target,
		"--hardware=" + m.hwFile, "--poll-interval=1s"}, extra...)...)
}

// task reads m's task directly in its region's etcd.
func (l *lab) task(m *machine) (store.Task, error) {
	ctx, cancel := shortCtx()
	defer cancel()
	return l.regionStore(m.region).GetTask(ctx, m.taskID)
}

// waitStatus waits until m's task (read directly) is in status st and returns it.
func (l *lab) waitStatus(m *machine, st store.Status, within time.Duration) store.Task {
	l.t.Helper()
	var t store.Task
	l.poll(fmt.Sprintf("%s's task %s", m.name, st), within, func() bool {
		var err error
		t, err = l.task(m)
		return err == nil && t.Status == st
	})
	return t
}

// reported waits for m's report and its approvable plan and returns the plan's digest.
func (l *lab) reported(m *machine) string {
	l.t.Helper()
	t := l.waitStatus(m, store.StatusPendingApproval, 60*time.Second)
	if t.Plan == nil || !t.Plan.Approvable() {
		l.t.Fatalf("%s's plan is not approvable: %+v", m.name, t.Plan)
	}
	return t.Plan.Digest
}

// approve approves m's plan through the control plane.
func (l *lab) approve(m *machine, digest string) {
	l.t.Helper()
	if code, body := l.call("POST", "/api/v1/tasks/"+m.taskID+"/approve", map[string]any{"plan_digest": digest}, nil); code != http.StatusOK {
		l.t.Fatalf("approve %s: %d %s", m.name, code, body)
	}
}

// waitBytes waits until m's agent has reported at least frac of the image.
func (l *lab) waitBytes(m *machine, frac float64) {
	l.t.Helper()
	l.poll(fmt.Sprintf("%s: %.0f%% of the image streamed", m.name, frac*100), 60*time.Second, func() bool {
		t, err := l.task(m)
		return err == nil && t.Progress != nil && float64(t.Progress.BytesDone) >= frac*imageSize
	})
}

// applianceHTTP is the client reaching region's appliance (from inside its namespace).
func (l *lab) applianceHTTP(region string) *http.Client {
	if region == "dc2" {
		return l.dc2HTTP
	}
	return l.dc1HTTP
}

var tokenRE = regexp.MustCompile(`lpmos\.token=([0-9a-f]{64})\b`)

// bootScript is the iPXE script m's appliance serves m (what its firmware fetches).
func (l *lab) bootScript(m *machine) string {
	l.t.Helper()
	code, body := call(l.applianceHTTP(m.region), "GET", fmt.Sprintf("http://127.0.0.1:%d/boot/%s.ipxe", applPort,
		strings.ReplaceAll(m.mac, ":", "-")), "", nil, nil)
	if code != http.StatusOK {
		l.t.Fatalf("%s's boot script: %d %s", m.name, code, body)
	}
	return body
}

// bootToken is the agent token m's boot script carries (lpmos.token=): a machine that
// reported, was powered off and boots again gets it on its kernel command line.
func (l *lab) bootToken(m *machine) string {
	l.t.Helper()
	script := l.bootScript(m)
	tok := tokenRE.FindStringSubmatch(script)
	if tok == nil {
		l.t.Fatalf("%s's boot script carries no lpmos.token=:\n%s", m.name, script)
	}
	return tok[1]
}

// installed waits for m's agent to exit and checks the install: the agent succeeded,
// the target holds exactly the image, the task (read in its region's etcd) completed,
// and the boot script now boots the local disk.
func (l *lab) installed(m *machine, within time.Duration) {
	l.t.Helper()
	select {
	case <-m.agent.Done():
	case <-time.After(within):
		l.t.Fatalf("%s's agent still running after %s:\n%s", m.name, within, proc.Tail(m.agent.Log(), 20))
	}
	if err := m.agent.Err(); err != nil {
		l.t.Fatalf("%s's agent: %v\n%s", m.name, err, proc.Tail(m.agent.Log(), 30))
	}
	if got := labtest.FileSHA256(l.t, m.target); got != l.image.SHA256 {
		l.t.Fatalf("%s's disk holds sha256 %s, the image is %s", m.name, got, l.image.SHA256)
	}
	l.waitStatus(m, store.StatusCompleted, 10*time.Second)
	if s := l.bootScript(m); !strings.Contains(s, "booting from local disk") {
		l.t.Fatalf("%s completed, but its boot script does not boot the local disk:\n%s", m.name, s)
	}
}

// setLink brings dc2's end of the hq<->dc2 veth down (the WAN cut: packets to and from
// hq vanish, nothing answers, as on a cut fibre) or up again.
func (l *lab) setLink(up bool) {
	l.t.Helper()
	state := "down"
	if up {
		state = "up"
	}
	netlabtest.Run(l.t, "ip", "-n", l.dc2, "link", "set", dc2Link, state)
}

// breakGlass runs `lpmos-appliance tasks ARGS` on dc2's appliance host (its namespace,
// against its embedded etcd on 127.0.0.1) and returns its output and error.
func (l *lab) breakGlass(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	argv := append([]string{"netns", "exec", l.dc2, filepath.Join(l.bin, "lpmos-appliance"), "tasks"}, args...)
	argv = append(argv, "--label=dc2", "--etcd-endpoints=http://127.0.0.1:2379")
	out, err := exec.CommandContext(ctx, "ip", argv...).CombinedOutput()
	return string(out), err
}

// regionState is what the control plane must show of a region: each task's status,
// the unmatched reports, and how many audit entries each task's trail holds (compared
// only where both sides read it: the control plane keeps no trail in memory).
type regionState struct {
	tasks     map[string]store.Status
	unmatched map[string]string // id -> MAC
	audit     map[string]int    // task id -> entries
}

func (s regionState) String() string {
	n := 0
	for _, c := range s.audit {
		n += c
	}
	return fmt.Sprintf("%d tasks with %d audit entries, %d unmatched reports", len(s.tasks), n, len(s.unmatched))
}

// diff says how got differs from s ("" when equal).
func (s regionState) diff(got regionState) string {
	var d []string
	for id, st := range s.tasks {
		if got.tasks[id] != st {
			d = append(d, fmt.Sprintf("task %s: %q, want %q", id, got.tasks[id], st))
		}
	}
	for id := range got.tasks {
		if _, ok := s.tasks[id]; !ok {
			d = append(d, "task "+id+" shown, not in the region")
		}
	}
	missing, extra := 0, 0
	for id := range s.unmatched {
		if _, ok := got.unmatched[id]; !ok {
			missing++
		}
	}
	for id := range got.unmatched {
		if _, ok := s.unmatched[id]; !ok {
			extra++
		}
	}
	if missing+extra > 0 {
		d = append(d, fmt.Sprintf("unmatched reports: %d missing, %d not in the region", missing, extra))
	}
	for id, n := range s.audit {
		if got.audit != nil && got.audit[id] != n {
			d = append(d, fmt.Sprintf("task %s's audit trail: %d entries, want %d", id, got.audit[id], n))
		}
	}
	if len(d) > 5 {
		d = append(d[:5], fmt.Sprintf("... (%d differences)", len(d)))
	}
	return strings.Join(d, "; ")
}

// dc2State reads dc2's state directly in its etcd (the truth, reachable from dc2).
func (l *lab) dc2State() regionState {
	l.t.Helper()
	ctx := stepCtx(l.t, 10*time.Second)
	s := regionState{tasks: map[string]store.Status{}, unmatched: map[string]string{}, audit: map[string]int{}}
	tasks, _, err := l.dc2st.TaskPage(ctx, "dc2", "", store.Page{Limit: store.MaxPageLimit})
	if err != nil {
		l.t.Fatalf("dc2's tasks: %v", err)
	}
	for _, t := range tasks {
		s.tasks[t.TaskID] = t.Status
		trail, err := l.dc2st.ListAudit(ctx, store.AuditFilter{Region: "dc2", TaskID: t.TaskID})
		if err != nil {
			l.t.Fatalf("dc2's audit trail of %s: %v", t.TaskID, err)
		}
		s.audit[t.TaskID] = len(trail)
	}
	reports, _, err := l.dc2st.UnmatchedPage(ctx, "dc2", store.Page{Limit: store.MaxPageLimit}, false)
	if err != nil {
		l.t.Fatalf("dc2's unmatched reports: %v", err)
	}
	for _, u := range reports {
		s.unmatched[u.ID] = u.MACAddress
	}
	return s
}

// apiState reads dc2's state through the control API, every page (with each task's
// audit trail when withAudit), and says how many tasks were marked stale and whether
// the lists named dc2 in stale_regions.
func (l *lab) apiState(withAudit bool) (s regionState, staleTasks int, staleList bool, err error) {
	s = regionState{tasks: map[string]store.Status{}, unmatched: map[string]string{}}
	for after := ""; ; {
		var page apiTasks
		code, body := l.call("GET", "/api/v1/tasks?region=dc2&limit=500&after="+url.QueryEscape(after), nil, &page)
		if code != http.StatusOK {
			return s, 0, false, fmt.Errorf("GET /api/v1/tasks?region=dc2: %d %s", code, body)
		}
		for _, t := range page.Tasks {
			if _, dup := s.tasks[t.TaskID]; dup {
				return s, 0, false, fmt.Errorf("task %s listed twice", t.TaskID)
			}
			s.tasks[t.TaskID] = t.Status
			if t.Stale {
				staleTasks++
			}
		}
		staleList = staleList || slices.Contains(page.StaleRegions, "dc2")
		if after = page.Next; after == "" {
			break
		}
	}
	for after := ""; ; {
		var page apiUnmatched
		code, body := l.call("GET", "/api/v1/unmatched?region=dc2&limit=500&after="+url.QueryEscape(after), nil, &page)
		if code != http.StatusOK {
			return s, 0, false, fmt.Errorf("GET /api/v1/unmatched?region=dc2: %d %s", code, body)
		}
		for _, u := range page.Reports {
			if _, dup := s.unmatched[u.ID]; dup {
				return s, 0, false, fmt.Errorf("unmatched report %s listed twice", u.ID)
			}
			s.unmatched[u.ID] = u.MACAddress
		}
		if after = page.Next; after == "" {
			break
		}
	}
	if !withAudit {
		return s, staleTasks, staleList, nil
	}
	s.audit = map[string]int{}
	for id := range s.tasks {
		var page apiAudit
		code, body := l.call("GET", "/api/v1/audit?region=dc2&limit=500&task="+id, nil, &page)
		if code != http.StatusOK {
			return s, 0, false, fmt.Errorf("GET /api/v1/audit?region=dc2&task=%s: %d %s", id, code, body)
		}
		s.audit[id] = len(page.Entries)
	}
	return s, staleTasks, staleList, nil
}

// awaitUnreachable waits until the control plane shows dc2 unreachable, and returns
// how long that took from cut.
func (l *lab) awaitUnreachable(cut time.Time) time.Duration {
	l.t.Helper()
	var r apiRegion
	l.poll("the control plane shows dc2 unreachable", 15*time.Second, func() bool {
		r = l.regions()["dc2"]
		return r.Reachable != nil && !*r.Reachable
	})
	took := time.Since(cut)
	since, err := time.Parse(time.RFC3339, r.UnreachableSince)
	if err != nil || since.Before(cut.Add(-2*time.Second)) || since.After(time.Now().Add(time.Second)) {
		l.t.Fatalf("dc2 unreachable_since %q (%v): want the time of the cut, %s", r.UnreachableSince, err, cut.UTC().Format(time.RFC3339))
	}
	if !r.Stale || r.Cluster != "own" {
		l.t.Fatalf("dc2 unreachable but stale=%v cluster=%q: %+v", r.Stale, r.Cluster, r)
	}
	if d := l.regions()["dc1"]; d.Reachable == nil || !*d.Reachable || d.Stale {
		l.t.Fatalf("dc1 while dc2 is cut: %+v", d)
	}
	return took
}

// staleView checks, during a cut, that the control plane serves dc2 from memory with
// exactly want: what it caught up with after the previous cut (each task marked stale,
// the list naming dc2 stale).
func (l *lab) staleView(want regionState) {
	l.t.Helper()
	var got regionState
	var staleTasks int
	var staleList bool
	var err error
	if !pollUntil(5*time.Second, func() bool {
		got, staleTasks, staleList, err = l.apiState(false)
		return err == nil && staleList && want.diff(got) == ""
	}) {
		l.t.Fatalf("dc2 as the control plane shows it during the cut (from memory): err %v, stale_regions has dc2: %v; differs from dc2's etcd: %s",
			err, staleList, want.diff(got))
	}
	if staleTasks != len(got.tasks) {
		l.t.Fatalf("during the cut %d of dc2's %d tasks are marked stale, want all", staleTasks, len(got.tasks))
	}
}

// awaitCatchUp waits, after the link came back at up, until the control plane shows
// dc2 reachable and fresh with exactly want, and returns how long after up that was.
func (l *lab) awaitCatchUp(want regionState, up time.Time, within time.Duration) time.Duration {
	l.t.Helper()
	var got regionState
	var staleTasks int
	var staleList bool
	var err error
	var r apiRegion
	ok := pollUntil(within, func() bool {
		r = l.regions()["dc2"]
		if r.Reachable == nil || !*r.Reachable || r.Stale {
			return false
		}
		got, staleTasks, staleList, err = l.apiState(true)
		return err == nil && staleTasks == 0 && !staleList && want.diff(got) == ""
	})
	took := time.Since(up)
	if !ok {
		l.t.Fatalf("%s after the link came back the control plane still differs from dc2's etcd (%s): region %+v, err %v, %d stale tasks, stale list %v: %s",
			within, want, r, err, staleTasks, staleList, want.diff(got))
	}
	return took
}

// catchUpMetric is the control plane's lpmos_control_region_catchup_seconds histogram
// for dc2 (count and sum).
func (l *lab) catchUpMetric() (count, sum float64) {
	l.t.Helper()
	m := l.metrics()
	return m["lpmos_control_region_catchup_seconds_count"], m["lpmos_control_region_catchup_seconds_sum"]
}

// metrics are the control plane's lpmos_control_ series for dc2 (labelled
// region="dc2", or not labelled by region at all), by name.
func (l *lab) metrics() map[string]float64 {
	l.t.Helper()
	code, body := l.call("GET", "/metrics", nil, nil)
	if code != http.StatusOK {
		l.t.Fatalf("GET /metrics: %d %.300s", code, body)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, "lpmos_control_") {
			continue
		}
		series, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		name, labels, _ := strings.Cut(series, "{")
		if strings.Contains(labels, "region=") && !strings.Contains(labels, `region="dc2"`) || strings.Contains(labels, "le=") {
			continue
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(value), 64); err == nil {
			out[name] += v
		}
	}
	return out
}

// mirrorCaughtUp waits until the catch-up histogram counts one more catch-up than
// before and returns that catch-up's duration (link back -> mirror at the cluster's
// revision, as the control plane measures it).
func (l *lab) mirrorCaughtUp(before struct{ count, sum float64 }, within time.Duration) time.Duration {
	l.t.Helper()
	var count, sum float64
	l.poll("lpmos_control_region_catchup_seconds counts dc2's catch-up", within, func() bool {
		count, sum = l.catchUpMetric()
		return count > before.count
	})
	return time.Duration((sum - before.sum) / (count - before.count) * float64(time.Second))
}

var timingsMu sync.Mutex

// figure records a duration in the test log and the timings file `make test` prints
// (go test hides a passing test's log).
func figure(t *testing.T, name string, d time.Duration, note string) {
	record(t, name, fmt.Sprintf("%7.2f s", d.Seconds()), note)
}

func record(t *testing.T, name, value, note string) {
	line := fmt.Sprintf("wan %-24s %-26s %11s  %s", t.Name(), name, value, note)
	t.Log(line)
	f := os.Getenv("LPMOS_TIMINGS_FILE")
	if f == "" {
		return
	}
	timingsMu.Lock()
	defer timingsMu.Unlock()
	os.MkdirAll(filepath.Dir(f), 0o755)
	w, err := os.OpenFile(f, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err == nil {
		_, err = fmt.Fprintln(w, line)
		err = errors.Join(err, w.Close())
	}
	if err != nil {
		t.Errorf("timings file: %v", err)
	}
}

// liveFeed follows the control plane's live push (/live, what every open page gets)
// for the whole test, as a browser does: dialled again whenever it drops.
type liveFeed struct {
	mu     sync.Mutex
	events []liveEvent
}

// liveEvent is one pushed message: the tasks and regions it carries.
type liveEvent struct {
	at    time.Time
	Type  string     `json:"type"`
	Task  *liveTask  `json:"task"`
	Tasks []liveTask `json:"tasks"`
	// Regions as the dashboard's rows.
	Regions []struct {
		Name      string `json:"name"`
		Reachable bool   `json:"reachable"`
		Stale     bool   `json:"stale"`
	} `json:"regions"`
}

type liveTask struct {
	ID     string `json:"id"`
	Region string `json:"region"`
	Status string `json:"status"`
	Stale  bool   `json:"stale"`
}

// follow starts the feed; it ends with the test.
func (l *lab) follow() *liveFeed {
	f := &liveFeed{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	l.t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			f.read(ctx, l)
			select {
			case <-ctx.Done():
			case <-time.After(500 * time.Millisecond): // the browser's reconnect delay
			}
		}
	}()
	return f
}

func (f *liveFeed) read(ctx context.Context, l *lab) {
	origin := "http://127.0.0.1:" + strconv.Itoa(cpPort)
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	c, _, err := websocket.Dial(dctx, "ws://127.0.0.1:"+strconv.Itoa(cpPort)+"/live", &websocket.DialOptions{
		HTTPClient: l.cpHTTP, HTTPHeader: http.Header{"Authorization": {"Bearer " + l.admin}, "Origin": {origin}}})
	cancel()
	if err != nil {
		return
	}
	defer c.CloseNow()
	c.SetReadLimit(64 << 20) // the first message is a snapshot of every region's newest tasks
	for {
		_, b, err := c.Read(ctx)
		if err != nil {
			return
		}
		e := liveEvent{at: time.Now()}
		if json.Unmarshal(b, &e) != nil {
			continue
		}
		f.mu.Lock()
		f.events = append(f.events, e)
		f.mu.Unlock()
	}
}

// since returns the events pushed at or after t.
func (f *liveFeed) since(t time.Time) []liveEvent {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []liveEvent
	for _, e := range f.events {
		if !e.at.Before(t) {
			out = append(out, e)
		}
	}
	return out
}

// regionPushed waits until a push at or after t shows dc2 reachable (or not), and
// returns when it came.
func (l *lab) regionPushed(f *liveFeed, t time.Time, reachable bool, within time.Duration) time.Time {
	l.t.Helper()
	var at time.Time
	l.poll(fmt.Sprintf("the live push shows dc2 reachable=%v", reachable), within, func() bool {
		for _, e := range f.since(t) {
			for _, r := range e.Regions {
				if r.Name == "dc2" && r.Reachable == reachable && r.Stale == !reachable {
					at = e.at
					return true
				}
			}
		}
		return false
	})
	return at
}

// tasksPushed waits until pushes at or after t have shown every task of want in its
// status, fresh, and returns when the last of them came.
func (l *lab) tasksPushed(f *liveFeed, t time.Time, want map[string]store.Status, within time.Duration) time.Time {
	l.t.Helper()
	var last time.Time
	var missing []string
	if !pollUntil(within, func() bool {
		seen := map[string]time.Time{}
		for _, e := range f.since(t) {
			tasks := e.Tasks
			if e.Task != nil {
				tasks = append(tasks, *e.Task)
			}
			for _, tk := range tasks {
				if st, ok := want[tk.ID]; ok && tk.Status == string(st) && !tk.Stale {
					if _, already := seen[tk.ID]; !already {
						seen[tk.ID] = e.at
					}
				}
			}
		}
		missing = missing[:0]
		last = time.Time{}
		for id := range want {
			at, ok := seen[id]
			if !ok {
				missing = append(missing, id)
			}
			if at.After(last) {
				last = at
			}
		}
		return len(missing) == 0
	}) {
		l.t.Fatalf("the live push did not show %d of %d tasks in their status within %s: %v", len(missing), len(want), within, missing)
	}
	return last
}

var resyncsRE = regexp.MustCompile(`msg="region mirror caught up".* region=dc2 .*resyncs=(\d+)`)

// mirrorLog is how many times the control plane logged dc2's mirror caught up, and
// the full reloads (resyncs) the last of those lines counts.
func (l *lab) mirrorLog() (lines, resyncs int) {
	for _, m := range resyncsRE.FindAllStringSubmatch(l.cp.Log(), -1) {
		lines++
		resyncs, _ = strconv.Atoi(m[1])
	}
	return lines, resyncs
}

// resyncsAfter waits for a caught-up line after the first `lines` and returns the
// resyncs it counts: 0 after a watch resumed from its revision, one more after a
// reload (the revision was compacted).
func (l *lab) resyncsAfter(lines int) int {
	l.t.Helper()
	var n, r int
	l.poll("the control plane logs dc2's mirror caught up", catchUpWithin, func() bool {
		n, r = l.mirrorLog()
		return n > lines
	})
	return r
}
