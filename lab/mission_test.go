package lab_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"lpmos.dev/lpmos/agent-initramfs/vmtest"
	"lpmos.dev/lpmos/images/testos"
	"lpmos.dev/lpmos/internal/proc"
	"lpmos.dev/lpmos/internal/qemu"
	"lpmos.dev/lpmos/lab"
	"lpmos.dev/lpmos/lab/labtest"
)

// TestMission is the whole mission on a boot network, the way a datacenter uses it:
// dnsmasq is the site's DHCP server, the appliance answers next to it with
// proxy-DHCP/TFTP/HTTP, machines PXE-boot, the agent reports their real hardware, the
// test approves through the control plane, the agent streams the test OS onto the
// disk, the machine reboots, the appliance tells it to boot its disk, and the
// installed OS prints its marker. BIOS (QEMU's iPXE ROM), UEFI with OVMF's own PXE
// fetching ipxe.efi over TFTP, and a machine nobody created a task for.
func TestMission(t *testing.T) {
	if testing.Short() {
		t.Skip("VM lab skipped in -short mode")
	}
	if os.Geteuid() != 0 {
		t.Skip("VM LAB SKIPPED: needs root for network namespaces, taps and DHCP ports (run `make test` as root, as CI does)")
	}
	for _, b := range []string{qemu.Binary, "dnsmasq"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("VM LAB SKIPPED: %s not installed (.ci/run installs it)", b)
		}
	}
	boot := vmtest.BuildImages(t)
	osImg := testos.Build(t)
	dir := t.TempDir()
	bin := buildBinaries(t, filepath.Join(dir, "bin"))
	imagesDir := filepath.Join(dir, "images")
	os.MkdirAll(imagesDir, 0o755)
	if out, err := exec.Command(filepath.Join(bin, "lpmos-image"), "add", "--dir", imagesDir,
		"--os-type", "testos", "--os-version", "1", osImg+".zst").CombinedOutput(); err != nil {
		t.Fatalf("lpmos-image add: %v\n%s", err, out)
	}
	want, err := os.ReadFile(osImg)
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	l, err := lab.New(ctx, lab.Config{Dir: dir, Bin: bin, Log: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	app, err := l.StartAppliance(ctx, lab.ApplianceConfig{Kernel: boot.Kernel, Initramfs: boot.Initramfs, ImagesDir: imagesDir})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.StartControl(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("appliance log (tail):\n%s", tailOf(app.Log(), 6000))
		}
	})
	etcd, err := clientv3.New(clientv3.Config{
		Endpoints: []string{lab.EtcdEndpoint}, DialTimeout: 10 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return l.Dial(ctx, "tcp", addr)
		})},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer etcd.Close()
	m := &mission{t: t, lab: l, app: app, etcd: etcd, image: want}

	var results []timings
	for _, c := range []struct {
		name  string
		vm    lab.VMConfig
		known bool
	}{
		{"BIOS", lab.VMConfig{Name: "bios", MAC: "52:54:00:12:34:56", Firmware: qemu.BIOS, CPUs: 2, DiskMiB: 64}, true},
		{"UEFI-PXE-TFTP", lab.VMConfig{Name: "uefi", MAC: "52:54:00:12:34:57", Firmware: qemu.UEFI, NoNICROM: true, CPUs: 2, DiskMiB: 96}, true},
		{"UnknownMachine", lab.VMConfig{Name: "unknown", MAC: "52:54:00:12:34:58", Firmware: qemu.BIOS, CPUs: 1, DiskMiB: 64}, false},
	} {
		ok := t.Run(c.name, func(t *testing.T) {
			m.t = t
			results = append(results, m.provision(ctx, c.name, c.vm, c.known))
		})
		if !ok {
			break // one VM at a time; a broken path would fail the rest the same way
		}
	}
	printTimings(t, results)
}

type mission struct {
	t     *testing.T
	lab   *lab.Lab
	app   *proc.Proc
	etcd  *clientv3.Client
	image []byte
}

// timings are the milestones of one machine, from power-on.
type timings struct {
	name  string
	start time.Time
	at    map[string]time.Time
}

func (m *mission) provision(ctx context.Context, name string, cfg lab.VMConfig, known bool) timings {
	t := m.t
	ctx, cancel := context.WithTimeout(ctx, 8*time.Minute)
	defer cancel()
	tm := timings{name: name, at: map[string]time.Time{}}
	mark := func(s string) {
		if _, ok := tm.at[s]; !ok {
			tm.at[s] = time.Now()
			t.Logf("%s: %s after %.1fs", name, s, time.Since(tm.start).Seconds())
		}
	}
	var id string
	if known {
		id = m.createTask(ctx, cfg.MAC)
		if v := m.get(ctx, "/os/install/task/dc1/"+id+"/status"); v != "pending" {
			t.Fatalf("new task status %q", v)
		}
	}
	// Every progress write, seen through an etcd watch on the region's tasks.
	var progMu sync.Mutex
	var progress []map[string]any
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	wch := m.etcd.Watch(wctx, "/os/install/task/dc1/", clientv3.WithPrefix())
	go func() {
		for wr := range wch {
			for _, ev := range wr.Events {
				if strings.HasSuffix(string(ev.Kv.Key), "/progress") {
					var p map[string]any
					json.Unmarshal(ev.Kv.Value, &p)
					progMu.Lock()
					progress = append(progress, map[string]any{"key": string(ev.Kv.Key), "v": p})
					progMu.Unlock()
				}
			}
		}
	}()

	tm.start = time.Now()
	vm, err := m.lab.StartVM(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		vm.Stop(5 * time.Second)
		if t.Failed() {
			t.Logf("%s serial console (tail):\n%s", cfg.Name, tailOf(vm.SerialLog(), 5000))
		}
	})
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	prefix := ""
poll:
	for {
		select {
		case <-ctx.Done():
			t.Fatalf("%s: gave up waiting (task %q, milestones %v)", name, id, keys(tm.at))
		case <-vm.Done():
			t.Fatalf("%s: QEMU exited early: %v", name, vm.Err())
		case <-tick.C:
		}
		log := m.app.Log()
		if hasLine(log, "proxy-DHCP: boot information sent", "mac="+cfg.MAC) {
			mark("dhcp")
		}
		if hasLine(log, "boot script served", "mac="+cfg.MAC) {
			mark("script")
		}
		if id == "" {
			// Unknown machine: its report must land at the exact v2.1 key, then a
			// task created for its MAC picks it up (auto-matching), no reboot needed.
			resp, err := m.etcd.Get(ctx, "/os/unmatched_reports/dc1/", clientv3.WithPrefix())
			if err != nil {
				t.Fatal(err)
			}
			for _, kv := range resp.Kvs {
				if strings.HasSuffix(string(kv.Key), "-"+cfg.MAC) {
					mark("report")
					var r map[string]any
					json.Unmarshal(kv.Value, &r)
					if r["mac_address"] != cfg.MAC || r["region"] != "dc1" || r["hardware"] == nil {
						t.Fatalf("unmatched report %s = %s", kv.Key, kv.Value)
					}
					if !hasLine(log, "Failed to find task for MAC "+cfg.MAC) {
						t.Fatalf("appliance did not log the unmatched report")
					}
					id = m.createTask(ctx, cfg.MAC)
					if v := m.get(ctx, "/os/install/task/dc1/"+id+"/status"); v != "pending_approval" {
						t.Fatalf("auto-matched task status %q", v)
					}
					if n := m.count(ctx, "/os/unmatched_reports/dc1/"); n != 0 {
						t.Fatalf("%d unmatched reports left after auto-match", n)
					}
				}
			}
			continue
		}
		prefix = "/os/install/task/dc1/" + id + "/"
		switch st := m.get(ctx, prefix+"status"); st {
		case "pending":
		case "pending_approval":
			mark("report")
			if _, ok := tm.at["approved"]; !ok {
				m.checkHardware(ctx, prefix, cfg)
				// Approve what the API shows: the stored plan, by its digest.
				var task struct {
					Plan struct {
						Digest  string `json:"digest"`
						Refused string `json:"refused"`
						Disk    struct {
							Path string `json:"path"`
						} `json:"disk"`
					} `json:"plan"`
				}
				if code, err := m.lab.API(ctx, "GET", lab.ControlURL()+"/api/v1/tasks/"+id, nil, &task); err != nil || code != 200 || task.Plan.Disk.Path != "/dev/vda" {
					t.Fatalf("plan: %d %+v %v", code, task, err)
				}
				var out map[string]any
				if code, err := m.lab.API(ctx, "POST", lab.ControlURL()+"/api/v1/tasks/"+id+"/approve", map[string]string{"plan_digest": task.Plan.Digest}, &out); err != nil || code != 200 {
					t.Fatalf("approve: %d %v %v", code, out, err)
				}
				mark("approved")
			}
		case "approved":
			mark("approved")
		case "installing":
			mark("installing")
		case "completed":
			mark("installing")
			mark("completed")
			break poll
		default:
			t.Fatalf("%s: task status %q: %s", name, st, m.get(ctx, prefix+"metadata"))
		}
	}
	line, err := vm.WaitSerial(ctx, testos.Marker)
	if err != nil {
		t.Fatal(err)
	}
	mark("marker")
	t.Logf("%s: %s", name, line)
	if !strings.Contains(line, "firmware="+string(cfg.Firmware)) {
		t.Errorf("installed OS booted with the wrong firmware: %s", line)
	}
	// After the install the appliance hands the machine to its disk: iPXE (BIOS's NIC
	// ROM) gets the local-disk script; a UEFI firmware's own PXE gets a boot file
	// that fails, and moves on to the disk by itself.
	if cfg.NoNICROM {
		if !hasLine(m.app.Log(), "DHCP: installed machine", "mac="+cfg.MAC, "stage=firmware") {
			t.Errorf("the appliance did not send the installed %s to its disk", cfg.MAC)
		}
	} else if !hasLine(m.app.Log(), "boot script served", "mac="+cfg.MAC, "local_disk=true") {
		t.Errorf("the appliance never told %s to boot its local disk", cfg.MAC)
	}
	select { // the test OS powers off after its marker
	case <-vm.Done():
	case <-ctx.Done():
		t.Fatal("the installed OS did not power off")
	}

	// The disk holds the image, byte for byte.
	f, err := os.Open(vm.Disk)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(m.image))
	_, err = f.ReadAt(got, 0)
	f.Close()
	if err != nil || !bytes.Equal(got, m.image) {
		t.Fatalf("disk does not hold the image (%v)", err)
	}
	// Every key of the task, at its v2.1 path.
	var meta, prog, appr map[string]any
	json.Unmarshal([]byte(m.get(ctx, prefix+"metadata")), &meta)
	json.Unmarshal([]byte(m.get(ctx, prefix+"progress")), &prog)
	json.Unmarshal([]byte(m.get(ctx, prefix+"approval")), &appr)
	if meta["task_id"] != id || meta["target_mac"] != cfg.MAC || meta["os_type"] != "testos" || meta["finished_at"] == nil {
		t.Errorf("metadata = %v", meta)
	}
	if prog["stage"] != "completed" || prog["percentage"] != 100.0 {
		t.Errorf("progress = %v", prog)
	}
	if appr["status"] != "approved" || appr["plan_digest"] == nil || appr["disk_path"] != "/dev/vda" || appr["image_sha256"] == nil {
		t.Errorf("approval = %v", appr)
	}
	if n := m.count(ctx, "/os/index/mac/dc1/"+cfg.MAC); n != 0 {
		t.Errorf("MAC index kept after completion")
	}
	progMu.Lock()
	stages := map[string]bool{}
	for _, p := range progress {
		if strings.Contains(p["key"].(string), id) {
			stages[fmt.Sprint(p["v"].(map[string]any)["stage"])] = true
		}
	}
	progMu.Unlock()
	for _, s := range []string{"downloading", "verifying", "completed"} {
		if !stages[s] {
			t.Errorf("progress never showed stage %q (saw %v)", s, keys2(stages))
		}
	}
	return tm
}

// checkHardware asserts the report describes the VM as QEMU was started.
func (m *mission) checkHardware(ctx context.Context, prefix string, cfg lab.VMConfig) {
	t := m.t
	var hw struct {
		Firmware string `json:"firmware"`
		CPU      struct {
			Threads int `json:"threads"`
		} `json:"cpu"`
		Disks []struct {
			Name      string `json:"name"`
			SizeBytes int64  `json:"size_bytes"`
		} `json:"disks"`
		NICs []struct {
			MAC string `json:"mac"`
		} `json:"nics"`
	}
	raw := m.get(ctx, prefix+"hardware")
	if err := json.Unmarshal([]byte(raw), &hw); err != nil {
		t.Fatalf("hardware: %v: %s", err, raw)
	}
	if hw.CPU.Threads != cfg.CPUs {
		t.Errorf("reported %d CPUs, the VM has %d", hw.CPU.Threads, cfg.CPUs)
	}
	foundDisk, foundNIC := false, false
	for _, d := range hw.Disks {
		foundDisk = foundDisk || (d.Name == "vda" && d.SizeBytes == int64(cfg.DiskMiB)<<20)
	}
	for _, n := range hw.NICs {
		foundNIC = foundNIC || n.MAC == cfg.MAC
	}
	if !foundDisk || !foundNIC {
		t.Errorf("hardware lacks vda of %d MiB or NIC %s: %s", cfg.DiskMiB, cfg.MAC, raw)
	}
	if want := map[qemu.Firmware]string{qemu.BIOS: "bios", qemu.UEFI: "uefi"}[cfg.Firmware]; hw.Firmware != want {
		t.Errorf("reported firmware %q, want %q", hw.Firmware, want)
	}
}

func (m *mission) createTask(ctx context.Context, mac string) string {
	var out map[string]any
	code, err := m.lab.API(ctx, "POST", lab.ControlURL()+"/api/v1/tasks",
		map[string]string{"region_id": "dc1", "target_mac": mac, "os_type": "testos", "os_version": "1"}, &out)
	if err != nil || code != 201 {
		m.t.Fatalf("create task: %d %v %v", code, out, err)
	}
	if out["warning"] != nil {
		m.t.Errorf("unexpected warning: %v", out["warning"])
	}
	return out["task_id"].(string)
}

func (m *mission) get(ctx context.Context, key string) string {
	resp, err := m.etcd.Get(ctx, key)
	if err != nil {
		m.t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return ""
	}
	return string(resp.Kvs[0].Value)
}

func (m *mission) count(ctx context.Context, prefix string) int64 {
	resp, err := m.etcd.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		m.t.Fatal(err)
	}
	return resp.Count
}

// hasLine reports whether one log line contains every part.
func hasLine(log string, parts ...string) bool {
	for _, line := range strings.Split(log, "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			return true
		}
	}
	return false
}

func printTimings(t *testing.T, rs []timings) {
	var b strings.Builder
	fmt.Fprintf(&b, "\nstage timings (seconds):\n%-16s %8s %8s %8s %8s %8s %8s %8s\n", "machine",
		"fw->dhcp", "->script", "->report", "approve", "->stream", "stream", "->marker")
	total := 0.0
	for _, r := range rs {
		d := func(from, to string) string {
			a, ok1 := r.at[from]
			if from == "" {
				a, ok1 = r.start, true
			}
			z, ok2 := r.at[to]
			if !ok1 || !ok2 {
				return "-"
			}
			return fmt.Sprintf("%.1f", z.Sub(a).Seconds())
		}
		fmt.Fprintf(&b, "%-16s %8s %8s %8s %8s %8s %8s %8s", r.name, d("", "dhcp"), d("dhcp", "script"), d("script", "report"),
			d("report", "approved"), d("approved", "installing"), d("installing", "completed"), d("completed", "marker"))
		if end, ok := r.at["marker"]; ok {
			fmt.Fprintf(&b, "   total %.1f", end.Sub(r.start).Seconds())
			total += end.Sub(r.start).Seconds()
		}
		b.WriteByte('\n')
	}
	fmt.Fprintf(&b, "all machines: %.1f s\n", total)
	t.Log(b.String())
	appendTimings(t, b.String())
}

// appendTimings adds s to LPMOS_TIMINGS_FILE: go test hides a passing package's
// output, and `make test` prints this file after the run, so CI's log shows the
// timings and a slowdown is visible. Appended: the fault tests (store/faulttest), the
// Vagrant lab and the Debian SSH test add theirs too.
func appendTimings(t *testing.T, s string) {
	f := os.Getenv("LPMOS_TIMINGS_FILE")
	if f == "" {
		return
	}
	os.MkdirAll(filepath.Dir(f), 0o755)
	w, err := os.OpenFile(f, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err == nil {
		_, err = w.WriteString(s)
		err = errors.Join(err, w.Close())
	}
	if err != nil {
		t.Errorf("timings file: %v", err)
	}
}

// buildBinaries builds what the lab runs: the appliance, the control plane, lpmos-image.
func buildBinaries(t *testing.T, dir string) string {
	return labtest.BuildBinaries(t, dir, "./appliance/cmd/lpmos-appliance", "./control/cmd/lpmos-control", "./images/cmd/lpmos-image")
}

func tailOf(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func keys(m map[string]time.Time) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func keys2(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
