package appliance_test

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/appliance"
	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/images"
)

const testKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops@example"

// gptImage is a 16 MiB raw image partitioned by sfdisk (GPT, two partitions).
func gptImage(t *testing.T, dir string) string {
	t.Helper()
	if _, err := exec.LookPath("sfdisk"); err != nil {
		t.Skip("sfdisk not installed (apt-get install fdisk)")
	}
	path := filepath.Join(dir, "gpt.img")
	if err := os.WriteFile(path, bytes.Repeat([]byte("LPMOS-GPT-IMAGE!"), 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", path)
	cmd.Stdin = strings.NewReader("label: gpt\nsize=4MiB\nsize=8MiB\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	return path
}

// A task with cloud-init fields: the plan places the seed, the agent (host mode)
// fetches the files from NoCloud-net with its token, writes the image, then the
// CIDATA partition; mtools reads the files back. The secret in user-data is in no
// log and no API answer; NoCloud-net refuses a caller without the token.
func TestCloudInitSeedInstall(t *testing.T) {
	if _, err := exec.LookPath("mtype"); err != nil {
		t.Skip("mtools not installed")
	}
	var imageFile string
	sys := startSystemWith(t, func(c *appliance.Config) {
		imageFile = gptImage(t, t.TempDir())
		catalogAdd(t, c.ImagesDir, "debian", "12", imageFile, images.FormatRaw)
	}, "dc1")
	const secret = "s3cret-Pa55-LPMOS"
	userData := "#cloud-config\nchpasswd:\n  list: |\n    root:" + secret + "\n"
	code, task := call(t, "POST", sys.control.URL()+"/api/v1/tasks", map[string]any{
		"region_id": "dc1", "target_mac": "52:54:00:00:00:15", "os_type": "debian", "os_version": "12",
		"hostname": "web-15", "ssh_authorized_keys": []string{testKey}, "user_data": userData})
	if code != http.StatusCreated || task["hostname"] != "web-15" || strings.Contains(task["user_data"].(string), secret) {
		t.Fatalf("create: %d %v", code, task)
	}
	id := task["task_id"].(string)

	target := filepath.Join(t.TempDir(), "disk.img")
	m := newFileDisks(t, "52:54:00:00:00:15", contract.Disk{Name: "vda", SizeBytes: 256 << 20, Serial: "V15"})
	cfg := m.agentConfig(sys.regions["dc1"].URL())
	cfg.Target = target
	agentErr := runAgent(cfg)
	sys.etcd.WaitValue(t, "/os/install/task/dc1/"+id+"/status", "pending_approval", 30*time.Second)
	plan := approve(t, sys.control.URL(), id)
	if plan.Seed == nil || plan.Seed.Table != "gpt" || plan.Seed.Partition != 3 || plan.Seed.StartBytes != 13<<20 {
		t.Fatalf("plan seed: %+v", plan.Seed)
	}
	select {
	case err := <-agentErr:
		if err != nil {
			t.Fatalf("agent: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("agent did not finish")
	}
	if v, _ := sys.etcd.Get(t, "/os/install/task/dc1/"+id+"/status"); v != "completed" {
		t.Fatalf("status %q", v)
	}
	if out, err := exec.Command("sfdisk", "--verify", target).CombinedOutput(); err != nil || !strings.Contains(string(out), "No errors detected") {
		t.Fatalf("sfdisk --verify: %v %s", err, out)
	}
	img := fmt.Sprintf("%s@@%d", target, plan.Seed.StartBytes)
	for name, want := range map[string]string{"user-data": userData, "meta-data": "local-hostname: \"web-15\""} {
		out, err := exec.Command("mtype", "-i", img, "::"+name).Output()
		if err != nil || !strings.Contains(string(out), want) {
			t.Fatalf("seed %s: %v %q", name, err, out)
		}
	}
	// NoCloud-net: the token is required.
	resp, err := http.Get(sys.regions["dc1"].URL() + "/nocloud/" + id + "/user-data")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("user-data without a token: %d", resp.StatusCode)
	}
	code, got := call(t, "GET", sys.control.URL()+"/api/v1/tasks/"+id, nil)
	if code != 200 || strings.Contains(got["user_data"].(string), secret) || !strings.Contains(got["user_data"].(string), "masked") {
		t.Fatalf("task as shown: %v", got["user_data"])
	}
	if strings.Contains(sys.logs["dc1"].String(), secret) {
		t.Fatal("the appliance logged the user-data secret")
	}
}

// Bad cloud-init fields: 400 naming the field, nothing stored.
func TestCloudInitBadInput(t *testing.T) {
	sys := startSystem(t, "dc1")
	base := map[string]any{"region_id": "dc1", "target_mac": "52:54:00:00:00:16", "os_type": "debian", "os_version": "12"}
	cases := map[string]map[string]any{
		"user_data":           {"user_data": "#cloud-config\n" + strings.Repeat("a: b\n", 8000)},
		"user_data ":          {"user_data": "#cloud-config\nusers: [\n  - name: x\n"},
		"hostname":            {"hostname": "bad_host!"},
		"ssh_authorized_keys": {"ssh_authorized_keys": []string{"ssh-ed25519 not-base64"}},
		"network_config":      {"network_config": "version: 1\n"},
	}
	for field, extra := range cases {
		body := map[string]any{}
		for k, v := range base {
			body[k] = v
		}
		for k, v := range extra {
			body[k] = v
		}
		code, resp := call(t, "POST", sys.control.URL()+"/api/v1/tasks", body)
		if code != http.StatusBadRequest || resp["field"] != strings.TrimSpace(field) {
			t.Errorf("%s: %d %v", field, code, resp)
		}
	}
	if kvs := sys.etcd.Dump(t, "/os/install/task/"); len(kvs) != 0 {
		t.Fatalf("refused tasks stored: %v", kvs)
	}
}

// A task with cloud-init data for an image without a partition table: the plan
// refuses at approval time, before a byte is written.
func TestCloudInitRefusedAtPlan(t *testing.T) {
	sys := startSystemWith(t, func(c *appliance.Config) { addImage(t, c.ImagesDir, "ubuntu", "22.04") }, "dc1")
	code, task := call(t, "POST", sys.control.URL()+"/api/v1/tasks", map[string]any{
		"region_id": "dc1", "target_mac": "52:54:00:00:00:17", "os_type": "ubuntu", "os_version": "22.04", "hostname": "h17"})
	if code != http.StatusCreated {
		t.Fatalf("create: %d %v", code, task)
	}
	id := task["task_id"].(string)
	m := newFileDisks(t, "52:54:00:00:00:17", contract.Disk{Name: "vda", SizeBytes: 1 << 30, Serial: "V17"})
	cfg := m.agentConfig(sys.regions["dc1"].URL())
	cfg.Target = filepath.Join(t.TempDir(), "disk.img")
	cfg.MaxAttempts = 1
	runAgent(cfg)
	sys.etcd.WaitValue(t, "/os/install/task/dc1/"+id+"/status", "pending_approval", 30*time.Second)
	p := taskPlan(t, sys.control.URL(), id)
	if p.Approvable() || !strings.Contains(p.Refused, "cannot add the cloud-init seed: the image has no partition table") {
		t.Fatalf("plan: %+v", p)
	}
	code, body := call(t, "POST", sys.control.URL()+"/api/v1/tasks/"+id+"/approve", map[string]string{"plan_digest": p.Digest})
	if code != http.StatusConflict {
		t.Fatalf("approve: %d %v", code, body)
	}
}

// Region defaults: an admin sets the region's SSH keys and user-data; a new task
// starts from them (its own keys added, its user-data winning). A hostname on the
// region is refused, by field.
func TestCloudInitRegionDefaults(t *testing.T) {
	sys := startSystem(t, "dc1")
	const orgKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE5J0YbGtq0g2Y3m2Zt6mP7Oq8o4aV7v7Vf8Kx9yWcVd org@example"
	url := sys.control.URL() + "/api/v1/regions/dc1/cloud-init"
	if code, body := call(t, "PUT", url, map[string]any{"hostname": "x"}); code != http.StatusBadRequest || body["field"] != "hostname" {
		t.Fatalf("region hostname: %d %v", code, body)
	}
	if code, body := call(t, "PUT", url, map[string]any{"ssh_authorized_keys": []string{orgKey}, "user_data": "#cloud-config\npackages: [htop]\n"}); code != 200 || !strings.Contains(body["user_data"].(string), "masked") {
		t.Fatalf("set region defaults: %d %v", code, body)
	}
	if code, body := call(t, "GET", url, nil); code != 200 || len(body["ssh_authorized_keys"].([]any)) != 1 {
		t.Fatalf("get region defaults: %d %v", code, body)
	}
	code, task := call(t, "POST", sys.control.URL()+"/api/v1/tasks", map[string]any{
		"region_id": "dc1", "target_mac": "52:54:00:00:00:18", "os_type": "debian", "os_version": "12",
		"hostname": "h18", "ssh_authorized_keys": []string{testKey}})
	if code != http.StatusCreated {
		t.Fatalf("create: %d %v", code, task)
	}
	keys := fmt.Sprint(task["ssh_authorized_keys"])
	if !strings.Contains(keys, "org@example") || !strings.Contains(keys, "ops@example") || !strings.Contains(task["user_data"].(string), "masked: 31 bytes") {
		t.Fatalf("task from region defaults: %v", task)
	}
	if code, _ := call(t, "PUT", url, map[string]any{}); code != 200 {
		t.Fatalf("remove defaults: %d", code)
	}
	if v, ok := sys.etcd.Get(t, "/os/region/dc1/cloud_init"); ok {
		t.Fatalf("defaults kept after removal: %s", v)
	}
}
