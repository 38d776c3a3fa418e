package appliance_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/agent-initramfs/agent"
	"lpmos.dev/lpmos/appliance"
	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/images"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

// The approval gate, end to end with the real agent code against a real appliance and
// control plane: each test is one of the ways a wipe once happened without (or beyond)
// a person's approval.

// fileDisks is a machine whose disks are files: each disk's Path is a sparse file of
// its size, so the test sees which disk the agent wrote. The returned inventory is
// what the agent reports (and finds again before writing).
type fileDisks struct {
	mac   string
	disks []contract.Disk
}

func newFileDisks(t *testing.T, mac string, disks ...contract.Disk) *fileDisks {
	t.Helper()
	dir := t.TempDir()
	m := &fileDisks{mac: mac}
	for _, d := range disks {
		d.Path = filepath.Join(dir, d.Name+".disk")
		f, err := os.Create(d.Path)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(d.SizeBytes); err != nil {
			t.Fatal(err)
		}
		f.Close()
		m.disks = append(m.disks, d)
	}
	return m
}

func (m *fileDisks) inventory() (contract.Hardware, error) {
	return contract.Hardware{
		CPU:   contract.CPU{Cores: 2, Threads: 2},
		Disks: append([]contract.Disk(nil), m.disks...),
		NICs:  []contract.NIC{{Name: "eth0", MAC: m.mac, Link: true}},
	}, nil
}

// written says which disks hold anything but zeros in their first MiB.
func (m *fileDisks) written(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, d := range m.disks {
		f, err := os.Open(d.Path)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1<<20)
		n, _ := f.ReadAt(buf, 0)
		f.Close()
		for _, b := range buf[:n] {
			if b != 0 {
				out = append(out, d.Name)
				break
			}
		}
	}
	return out
}

func (m *fileDisks) agentConfig(url string) agent.Config {
	return agent.Config{RegionalURL: url, MAC: m.mac, Inventory: m.inventory, RetryUnit: time.Millisecond,
		PollInterval: 20 * time.Millisecond, CompletionTimeout: time.Minute, Log: quietLog()}
}

// taskPlan reads the task's plan from GET /api/v1/tasks/{id} (a reported task has
// one: it is written with the hardware).
func taskPlan(t *testing.T, controlURL, id string) contract.Plan {
	t.Helper()
	code, body := call(t, "GET", controlURL+"/api/v1/tasks/"+id, nil)
	raw, ok := body["plan"]
	if code != 200 || !ok {
		t.Fatalf("get task: %d, no plan: %v", code, body)
	}
	b, _ := json.Marshal(raw)
	var p contract.Plan
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatal(err)
	}
	return p
}

// approve approves the task's current plan through the API, as a person would after
// reading it.
func approve(t *testing.T, controlURL, id string) contract.Plan {
	t.Helper()
	p := taskPlan(t, controlURL, id)
	code, body := call(t, "POST", controlURL+"/api/v1/tasks/"+id+"/approve", map[string]string{"plan_digest": p.Digest})
	if code != http.StatusOK || body["status"] != "approved" {
		t.Fatalf("approve: %d %v", code, body)
	}
	return p
}

func createTask(t *testing.T, controlURL, mac string) string {
	t.Helper()
	code, task := call(t, "POST", controlURL+"/api/v1/tasks", map[string]string{
		"region_id": "dc1", "target_mac": mac, "os_type": "ubuntu", "os_version": "22.04"})
	if code != http.StatusCreated {
		t.Fatalf("create: %d %v", code, task)
	}
	return task["task_id"].(string)
}

func runAgent(cfg agent.Config) chan error {
	done := make(chan error, 1)
	go func() { done <- agent.Run(context.Background(), cfg) }()
	return done
}

func waitAgent(t *testing.T, done chan error, within time.Duration) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(within):
		t.Fatalf("the agent did not finish within %s", within)
		return nil
	}
}

// Scenario 1: the dialog named the 32 MiB SATADOM (the control plane chose as if the
// image had no size) while the agent wrote the 48 MiB image to the 500 GB RAID disk.
// Now, for every inventory of the disk-choice cases, the API's plan.disk is the disk
// the agent writes, and a plan that names no disk cannot be approved.
func TestPlannedDiskIsTheDiskWritten(t *testing.T) {
	var image []byte
	sys := startSystemWith(t, func(c *appliance.Config) { image = addImageSized(t, c.ImagesDir, "ubuntu", "22.04", 48<<20) }, "dc1")
	const mib, gb = 1 << 20, 1_000_000_000
	for i, c := range []struct {
		name  string
		disks []contract.Disk
		want  string // the disk written, "" for a plan that refuses
	}{
		{"satadom too small for the image", []contract.Disk{{Name: "sda", SizeBytes: 32 * mib, Model: "SATADOM", Serial: "DOM1"}, {Name: "sdb", SizeBytes: 500 * gb, Model: "DATA-RAID", Serial: "RAID1"}}, "sdb"},
		{"smallest that fits", []contract.Disk{{Name: "sdb", SizeBytes: 4000 * gb, Serial: "HD1"}, {Name: "nvme0n1", SizeBytes: 480 * gb, Serial: "NV1"}}, "nvme0n1"},
		{"usb and removable skipped", []contract.Disk{{Name: "sda", SizeBytes: 64 * gb, Removable: true}, {Name: "sdc", SizeBytes: 100 * gb, Controller: "usb"}, {Name: "vda", SizeBytes: 200 * gb}}, "vda"},
		{"read-only skipped", []contract.Disk{{Name: "sda", SizeBytes: 100 * gb, ReadOnly: true}, {Name: "sdb", SizeBytes: 200 * gb, Serial: "B"}}, "sdb"},
		{"identical smallest: refused", []contract.Disk{{Name: "sda", SizeBytes: 480 * gb, Serial: "A"}, {Name: "sdb", SizeBytes: 480 * gb, Serial: "B"}}, ""},
		{"nothing fits: refused", []contract.Disk{{Name: "sda", SizeBytes: 32 * mib}}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			mac := "52:54:00:00:20:0" + strconv.Itoa(i)
			m := newFileDisks(t, mac, c.disks...)
			id := createTask(t, sys.control.URL(), mac)
			done := runAgent(m.agentConfig(sys.regions["dc1"].URL()))
			sys.etcd.WaitValue(t, "/os/install/task/dc1/"+id+"/status", "pending_approval", 30*time.Second)
			p := taskPlan(t, sys.control.URL(), id)
			if c.want == "" {
				before := sys.etcd.Dump(t, "/os/")
				code, body := call(t, "POST", sys.control.URL()+"/api/v1/tasks/"+id+"/approve", map[string]string{"plan_digest": p.Digest})
				if code != http.StatusConflict || p.Refused == "" || !strings.Contains(body["message"].(string), "cannot be installed") {
					t.Fatalf("approve a refused plan: %d %v (plan %+v)", code, body, p)
				}
				storetest.AssertSame(t, before, sys.etcd.Dump(t, "/os/"))
				call(t, "POST", sys.control.URL()+"/api/v1/tasks/"+id+"/cancel", nil)
				waitAgent(t, done, 30*time.Second)
				if w := m.written(t); len(w) != 0 {
					t.Fatalf("written without an approvable plan: %v", w)
				}
				return
			}
			if p.Disk == nil || p.Disk.Name != c.want {
				t.Fatalf("plan.disk = %+v, want %s (refused: %s)", p.Disk, c.want, p.Refused)
			}
			approve(t, sys.control.URL(), id)
			if err := waitAgent(t, done, 60*time.Second); err != nil {
				t.Fatalf("agent: %v", err)
			}
			if w := m.written(t); len(w) != 1 || w[0] != p.Disk.Name {
				t.Fatalf("plan.disk %s, written %v", p.Disk.Name, w)
			}
			for _, d := range m.disks {
				if d.Name == c.want {
					assertPrefix(t, d.Path, image)
				}
			}
		})
	}
}

// Scenario 2: the hardware changed between the dialog opening and the click, and the
// click approved the old view. Now the stale digest is refused (409, etcd unchanged),
// and the agent installs only the task it reported for.
func TestApprovalOfAChangedReportIsRefused(t *testing.T) {
	sys := startSystemWith(t, func(c *appliance.Config) { addImage(t, c.ImagesDir, "ubuntu", "22.04") }, "dc1")
	const mac = "52:54:00:00:21:01"
	m := newFileDisks(t, mac, contract.Disk{Name: "sda", SizeBytes: 8 << 30, Serial: "S1"})
	id := createTask(t, sys.control.URL(), mac)
	done := runAgent(m.agentConfig(sys.regions["dc1"].URL()))
	sys.etcd.WaitValue(t, "/os/install/task/dc1/"+id+"/status", "pending_approval", 30*time.Second)
	seen := taskPlan(t, sys.control.URL(), id)
	// Something on the boot network reports other disks for that MAC.
	code, _ := call(t, "POST", sys.regions["dc1"].URL()+"/api/report", map[string]any{"mac_address": mac,
		"hardware": map[string]any{"disks": []map[string]any{{"name": "sdz", "path": "/dev/sdz", "size_bytes": 8 << 30, "serial": "EVIL"}}}})
	if code != http.StatusOK {
		t.Fatalf("second report: %d", code)
	}
	before := sys.etcd.Dump(t, "/os/")
	code, body := call(t, "POST", sys.control.URL()+"/api/v1/tasks/"+id+"/approve", map[string]string{"plan_digest": seen.Digest})
	if code != http.StatusConflict || !strings.Contains(body["message"].(string), "the hardware changed, review again") {
		t.Fatalf("stale approval: %d %v", code, body)
	}
	storetest.AssertSame(t, before, sys.etcd.Dump(t, "/os/"))
	// The person reviews the new plan (the forged disk) and cancels instead.
	if p := taskPlan(t, sys.control.URL(), id); p.Disk == nil || p.Disk.Serial != "EVIL" {
		t.Fatalf("current plan = %+v", p)
	}
	call(t, "POST", sys.control.URL()+"/api/v1/tasks/"+id+"/cancel", nil)
	if err := waitAgent(t, done, 30*time.Second); err == nil {
		t.Fatal("the agent succeeded on a cancelled task")
	}
	if w := m.written(t); len(w) != 0 {
		t.Fatalf("written: %v", w)
	}
}

// Scenario 3: a cancel at 3% of a 4 GiB image left the agent writing all of it. Now the
// agent stops within 5 s, the task ends cancelled with the bytes written recorded, and
// the task says the disk is partially written.
func TestCancelStopsTheWrite(t *testing.T) {
	const size = 2 << 30 // a multi-GiB stream, sparse: the disk and the image are files
	sys := startSystemWith(t, func(c *appliance.Config) {
		c.ImageRate = 64 << 20 // 32 s for the whole image: the cancel lands mid-stream
		addSparseImage(t, c.ImagesDir, "ubuntu", "22.04", size)
	}, "dc1")
	const mac = "52:54:00:00:22:01"
	m := newFileDisks(t, mac, contract.Disk{Name: "sda", SizeBytes: 4 << 30, Serial: "S1"})
	id := createTask(t, sys.control.URL(), mac)
	done := runAgent(m.agentConfig(sys.regions["dc1"].URL()))
	sys.etcd.WaitValue(t, "/os/install/task/dc1/"+id+"/status", "pending_approval", 30*time.Second)
	approve(t, sys.control.URL(), id)
	waitProgress(t, sys.etcd, id, func(p contract.Progress) bool { return p.BytesDone > 0 })
	cancelled := time.Now()
	if code, body := call(t, "POST", sys.control.URL()+"/api/v1/tasks/"+id+"/cancel", nil); code != 200 {
		t.Fatalf("cancel: %d %v", code, body)
	}
	err := waitAgent(t, done, 5*time.Second)
	stopped := time.Since(cancelled)
	if !errors.Is(err, agent.ErrCancelled) {
		t.Fatalf("agent: %v", err)
	}
	fi, _ := os.Stat(m.disks[0].Path)
	task, gerr := sys.etcd.Store.GetTask(context.Background(), id)
	if gerr != nil || task.Status != store.StatusCancelled || task.Progress == nil || task.Progress.Stage != contract.StageCancelled ||
		task.Progress.BytesDone <= 0 || task.Progress.BytesDone >= size || !strings.Contains(task.Error, "partially written") {
		t.Fatalf("after cancel: %+v %v", task, gerr)
	}
	t.Logf("cancel -> agent stopped in %s after writing %d MiB of %d MiB", stopped.Round(10*time.Millisecond), task.Progress.BytesDone>>20, size>>20)
	if fi.Size() != 4<<30 {
		t.Fatalf("disk file size changed: %d", fi.Size())
	}
}

// Scenario 4: the appliance was killed during an install; the agent's one completion
// POST failed, the task stayed installing and the next boot rewrote the disk without
// approval. Now the agent resends its final status until the restarted appliance
// acknowledges it: completed exactly once, the disk written once, the timeline whole.
func TestApplianceKilledDuringInstall(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills the appliance binary")
	}
	e := storetest.Start(t)
	bin := buildBinary(t, "./appliance/cmd/lpmos-appliance")
	imagesDir := t.TempDir()
	image := addImageSized(t, imagesDir, "ubuntu", "22.04", 96<<20)
	port := freePort(t)
	url := "http://127.0.0.1:" + strconv.Itoa(port)
	start := func() *exec.Cmd {
		cmd := exec.Command(bin, "--label=dc1", "--api-host=127.0.0.1", "--api-port="+strconv.Itoa(port), "--tftp-addr=",
			"--images-dir="+imagesDir, "--image-rate="+strconv.Itoa(16<<20), "--heartbeat-ttl=3s", "--etcd-endpoints="+strings.Join(e.Endpoints, ","))
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		// Its API listens before it goes online.
		e.WaitMatch(t, "/os/region/dc1/heartbeat", 30*time.Second, func(_ string, ok bool) bool { return ok })
		return cmd
	}
	cmd := start()
	const mac = "52:54:00:00:23:01"
	task, err := e.Store.CreateTask(context.Background(), store.NewTask{RegionID: "dc1", TargetMAC: mac, OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}})
	if err != nil {
		t.Fatal(err)
	}
	m := newFileDisks(t, mac, contract.Disk{Name: "sda", SizeBytes: 1 << 30, Serial: "S1"})
	done := runAgent(m.agentConfig(url))
	e.WaitValue(t, "/os/install/task/dc1/"+task.TaskID+"/status", "pending_approval", 30*time.Second)
	got, _ := e.Store.GetTask(context.Background(), task.TaskID)
	if _, err := e.Store.ApproveTask(store.WithActor(context.Background(), store.Actor{Kind: store.ActorUser, Name: "alice"}), task.TaskID, got.Plan.Digest); err != nil {
		t.Fatal(err)
	}
	waitProgress(t, e, task.TaskID, func(p contract.Progress) bool { return p.BytesDone > 16<<20 })
	cmd.Process.Kill() // kill -9 mid-stream
	cmd.Wait()
	killed := time.Now()
	e.WaitGone(t, "/os/region/dc1/heartbeat", 10*time.Second) // its lease ran out
	// Down for a while: the agent's stream and progress fail; it keeps what it has.
	downFor := 8 * time.Second
	timer := time.NewTimer(downFor)
	select {
	case err := <-done:
		t.Fatalf("the agent ended while the appliance was down: %v", err)
	case <-timer.C:
	}
	start()
	if err := waitAgent(t, done, 90*time.Second); err != nil {
		t.Fatalf("agent: %v", err)
	}
	t.Logf("appliance down %s; install completed %s after the kill", downFor, time.Since(killed).Round(100*time.Millisecond))
	final, err := e.Store.GetTask(context.Background(), task.TaskID)
	if err != nil || final.Status != store.StatusCompleted || final.StartedAt == nil || final.FinishedAt == nil || final.ApprovedAt == nil || final.ReportedAt == nil {
		t.Fatalf("final task: %+v %v", final, err)
	}
	assertPrefix(t, m.disks[0].Path, image)
	// Completed exactly once: the status index holds the task once, under completed.
	idx := e.Dump(t, "/os/index/status/dc1/")
	if len(idx) != 1 {
		t.Fatalf("status index = %v", idx)
	}
	for k := range idx {
		if !strings.HasSuffix(k, "/completed/"+task.TaskID) {
			t.Fatalf("status index = %v", idx)
		}
	}
}

// Helpers.

func addImageSized(t *testing.T, dir, osType, osVersion string, size int) []byte {
	t.Helper()
	image := make([]byte, size)
	for i := range image {
		image[i] = byte(i*7 + i>>12) // not zeros: a written disk is told from a blank one
	}
	path := filepath.Join(dir, osType+"-"+osVersion+".img")
	if err := os.WriteFile(path, image, 0o644); err != nil {
		t.Fatal(err)
	}
	catalogAdd(t, dir, osType, osVersion, path, images.FormatRaw)
	return image
}

// addSparseImage adds a raw image of size bytes that is all zeros but its first MiB.
func addSparseImage(t *testing.T, dir, osType, osVersion string, size int64) {
	t.Helper()
	path := filepath.Join(dir, osType+"-"+osVersion+".img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	head := make([]byte, 1<<20)
	for i := range head {
		head[i] = 0xA5
	}
	f.Write(head)
	f.Truncate(size)
	f.Close()
	catalogAdd(t, dir, osType, osVersion, path, images.FormatRaw)
}

// assertPrefix checks that the file at path starts with want (the image).
func assertPrefix(t *testing.T, path string, want []byte) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := make([]byte, len(want))
	if _, err := f.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	gs, ws := sha256.Sum256(got), sha256.Sum256(want)
	if gs != ws {
		t.Fatalf("%s holds sha256 %s, the image is %s", path, hex.EncodeToString(gs[:]), hex.EncodeToString(ws[:]))
	}
}

func waitProgress(t *testing.T, e *storetest.Etcd, id string, ok func(contract.Progress) bool) {
	t.Helper()
	e.WaitMatch(t, "/os/install/task/dc1/"+id+"/progress", 60*time.Second, func(v string, exists bool) bool {
		var p contract.Progress
		return exists && json.Unmarshal([]byte(v), &p) == nil && ok(p)
	})
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
