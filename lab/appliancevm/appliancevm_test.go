// Package appliancevm tests the flashable appliance image (scripts/build-appliance-image.sh,
// docs/appliance.md) the way an operator uses it: the image is written onto a virtual
// disk with zstd | dd, lpmos.env is edited on its LPMOS partition with mtools, and the
// disk boots as the "appliance host" VM with two NICs: management (DHCP from the
// operator's network, where the test reaches the appliance, and where the region's etcd
// and the control plane run) and the boot network (the VM lab's site bridge with
// dnsmasq as the site's DHCP). A second VM then PXE-boots through it to the installed
// test OS's marker. `make test-appliance` builds the image and runs these tests;
// without LPMOS_APPLIANCE_IMAGE they skip.
package appliancevm_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/images/testos"
	"lpmos.dev/lpmos/internal/netlab"
	"lpmos.dev/lpmos/internal/qemu"
	"lpmos.dev/lpmos/lab"
	"lpmos.dev/lpmos/lab/labtest"
)

// ImageEnv names the raw image under test (make test-appliance sets it).
const ImageEnv = "LPMOS_APPLIANCE_IMAGE"

// The management network: a bridge on the site, the operator's side of it in the lab's
// appliance-host namespace (etcd, control plane, a DHCP server with one address).
const (
	mgmtBridge = "mgmt0"
	mgmtHostIP = "10.78.0.1"
	mgmtVMIP   = "10.78.0.10" // the only address the management DHCP server gives
	diskGiB    = 3
)

func TestApplianceImage(t *testing.T) {
	img := os.Getenv(ImageEnv)
	switch {
	case testing.Short():
		t.Skip("appliance image VM test skipped in -short mode")
	case img == "":
		t.Skipf("APPLIANCE IMAGE TEST SKIPPED: %s not set (make test-appliance builds the image and sets it)", ImageEnv)
	case os.Geteuid() != 0:
		t.Skip("APPLIANCE IMAGE TEST SKIPPED: needs root for network namespaces and taps")
	}
	for _, b := range []string{qemu.Binary, "dnsmasq", "zstd", "dd", "mcopy", "ssh", "ssh-keygen"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("APPLIANCE IMAGE TEST SKIPPED: %s not installed (.ci/run installs it)", b)
		}
	}
	if _, err := os.Stat(img + ".zst"); err != nil {
		t.Fatalf("%s: %v", img+".zst", err)
	}
	t0 := time.Now()
	osImg := testos.Build(t)
	dir := t.TempDir()
	bin := buildBinaries(t, filepath.Join(dir, "bin"))
	key, pub := labtest.SSHKey(t, dir)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	l, err := lab.New(ctx, lab.Config{Dir: dir, Bin: bin, Log: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	// The operator's network: a bridge on the site, the control host cabled to it.
	if err := netlab.AddBridge(ctx, l.NS, mgmtBridge); err != nil {
		t.Fatal(err)
	}
	if err := netlab.Plug(ctx, l.NS, mgmtBridge, "vmgmt", l.AppNS, "mgmt", mgmtHostIP+"/24"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.StartIn(l.AppNS, "mgmt-dnsmasq", netlab.Dnsmasq{Interface: "mgmt",
		Range: mgmtVMIP + "," + mgmtVMIP + ",255.255.255.0,1h", LeaseFile: filepath.Join(dir, "mgmt.leases"), LogDHCP: true}.Argv()...); err != nil {
		t.Fatal(err)
	}
	// The region's etcd on the operator's network; the control plane beside it.
	etcd, err := l.StartIn(l.AppNS, "etcd", filepath.Join(bin, "lpmos-etcd"), "--name=site",
		"--data-dir="+filepath.Join(dir, "site.etcd"),
		"--listen-client-urls=http://127.0.0.1:2379,http://"+mgmtHostIP+":2379", "--listen-peer-urls=http://127.0.0.1:2380")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := etcd.NextLine(ctx, "serving clients"); err != nil {
		t.Fatalf("etcd: %v\n%s", err, etcd.Log())
	}
	if _, err := l.StartControl(ctx); err != nil {
		t.Fatal(err)
	}

	env := map[string]string{
		"REGION_LABEL":        "dc1",
		"ETCD_ENDPOINTS":      "http://" + mgmtHostIP + ":2379",
		"SSH_AUTHORIZED_KEYS": strings.TrimSpace(pub),
		"EXTRA_ARGS":          "--retry-after=2 --heartbeat-ttl=6s",
	}
	a := &applianceVM{t: t, lab: l, dir: dir, key: key}

	t.Run("BIOS", func(t *testing.T) {
		a.t = t
		vm := a.boot(ctx, "bios", qemu.BIOS, img, env)
		a.waitHealthy(ctx, vm)
		a.checkHost(ctx, vm)
		a.addImage(ctx, osImg)
		a.provision(ctx, osImg)
		vm.Stop(10 * time.Second)
	})
	t.Run("UEFI-BadConfig", func(t *testing.T) {
		a.t = t
		bad := map[string]string{}
		for k, v := range env {
			bad[k] = v
		}
		bad["REGION_LABEL"] = ""
		vm := a.boot(ctx, "uefi", qemu.UEFI, img, bad)
		a.badConfig(ctx, vm)
		vm.Stop(10 * time.Second)
	})
	t.Logf("whole run: %.1fs", time.Since(t0).Seconds())
}

type applianceVM struct {
	t        *testing.T
	lab      *lab.Lab
	dir, key string
	taps     int
}

// boot flashes the image onto a fresh virtual disk as docs/appliance.md says, writes
// lpmos.env on its LPMOS partition, and powers the appliance host on.
func (a *applianceVM) boot(ctx context.Context, name string, fw qemu.Firmware, img string, env map[string]string) *qemu.VM {
	t := a.t
	disk := filepath.Join(a.dir, name+".disk")
	if err := os.WriteFile(disk, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, diskGiB<<30); err != nil {
		t.Fatal(err)
	}
	// docs/appliance.md: zstd -dc lpmos-appliance.img.zst | dd of=/dev/sdX bs=4M oflag=direct status=progress
	// (a file here: sparse, no O_DIRECT).
	run(t, "sh", "-c", fmt.Sprintf("zstd -dc %q | dd of=%q bs=4M conv=notrunc,sparse status=none", img+".zst", disk))
	a.editEnv(disk, env)

	a.taps++
	mtap, btap := fmt.Sprintf("tapm%d", a.taps), fmt.Sprintf("tapb%d", a.taps)
	if err := netlab.AddTap(ctx, a.lab.NS, mtap, mgmtBridge); err != nil {
		t.Fatal(err)
	}
	if err := netlab.AddTap(ctx, a.lab.NS, btap, lab.Bridge); err != nil {
		t.Fatal(err)
	}
	vm, err := qemu.Start(qemu.Config{Name: "appliance-" + name, Dir: a.dir, NetNS: a.lab.NS,
		Firmware: fw, CPUs: 2, MemMiB: 1536,
		// PCI order: management first, boot network second (lpmos.env's "auto").
		NICs: []qemu.NIC{
			{Tap: mtap, MAC: "52:54:00:aa:00:01", NoROM: true},
			{Tap: btap, MAC: "52:54:00:aa:00:02", NoROM: true},
		},
		Disks: []qemu.Disk{{Path: disk, BootIndex: 1}},
		RNG:   true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := a.sshCmd(context.Background(), "journalctl -b -u lpmos-appliance -u lpmos-data -u lpmos-network -u lpmos-ssh --no-pager | grep -v 'status: \\|New task\\|ready for PXE' | tail -n 60; findmnt /var/lib/lpmos; ls -la /var/lib/lpmos/images; nsenter -t $(systemctl show -p MainPID --value lpmos-appliance) -m ls -la /var/lib/lpmos/images; nsenter -t $(systemctl show -p MainPID --value lpmos-appliance) -m findmnt /var/lib/lpmos").CombinedOutput()
			t.Logf("%s journal (tail):\n%s", vm.Name, out)
			t.Logf("%s serial console (tail):\n%s", vm.Name, vm.SerialTail(40))
		}
		vm.Stop(10 * time.Second)
	})
	return vm
}

// editEnv does what an operator does with a text editor on the LPMOS partition: take
// lpmos.env, set the values, put it back (partition 1 starts at 1 MiB).
func (a *applianceVM) editEnv(disk string, set map[string]string) {
	t := a.t
	part := disk + "@@1M"
	orig := filepath.Join(a.dir, "lpmos.env.orig")
	os.Remove(orig)
	run(t, "mcopy", "-n", "-i", part, "::/lpmos.env", orig)
	b, err := os.ReadFile(orig)
	if err != nil {
		t.Fatal(err)
	}
	left := map[string]string{}
	for k, v := range set {
		left[k] = v
	}
	var out []string
	for _, line := range strings.Split(strings.TrimRight(string(b), "\r\n"), "\n") {
		line = strings.TrimRight(line, "\r")
		k, _, _ := strings.Cut(strings.TrimPrefix(line, "#"), "=")
		if v, ok := left[k]; ok {
			line = k + "=" + v
			delete(left, k)
		}
		out = append(out, line+"\r")
	}
	for k, v := range left {
		out = append(out, k+"="+v+"\r")
	}
	edited := filepath.Join(a.dir, "lpmos.env")
	if err := os.WriteFile(edited, []byte(strings.Join(out, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "mcopy", "-o", "-i", part, edited, "::/lpmos.env")
}

// waitHealthy polls /api/health on the management address until it says ok.
func (a *applianceVM) waitHealthy(ctx context.Context, vm *qemu.VM) {
	t := a.t
	ctx, cancel := context.WithTimeout(ctx, 8*time.Minute)
	defer cancel()
	url := fmt.Sprintf("http://%s:%d/api/health", mgmtVMIP, lab.APIPort)
	cl := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: a.lab.Dial}}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var last string
	for {
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		if resp, err := cl.Do(req); err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			last = fmt.Sprintf("HTTP %d %s", resp.StatusCode, body)
			var h struct {
				Status        string `json:"status"`
				RegionLabel   string `json:"region_label"`
				EtcdReachable bool   `json:"etcd_reachable"`
			}
			if resp.StatusCode == 200 && json.Unmarshal(body, &h) == nil && h.Status == "ok" && h.RegionLabel == "dc1" && h.EtcdReachable {
				t.Logf("%s: boot to healthy API on the management address: %.1fs (%s)", vm.Name, time.Since(vm.Started).Seconds(), strings.TrimSpace(string(body)))
				return
			}
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: %s never healthy (last: %s)", vm.Name, url, last)
		case <-vm.Done():
			t.Fatalf("%s: QEMU exited: %v", vm.Name, vm.Err())
		case <-tick.C:
		}
	}
}

// checkHost asserts what the image promises besides the API: /metrics on the
// management address, the data partition grown to the disk's end, SSH with the
// configured key, the console status.
func (a *applianceVM) checkHost(ctx context.Context, vm *qemu.VM) {
	t := a.t
	code, _ := a.lab.API(ctx, "GET", fmt.Sprintf("http://%s:%d/metrics", mgmtVMIP, lab.APIPort), nil, nil)
	if code != 200 {
		t.Errorf("/metrics on the management address: HTTP %d", code)
	}
	a.waitSSH(ctx)
	a.checkFirmware(ctx, vm)
	// Partition 3 starts at 1 GiB and ends at the disk's end.
	size := strings.TrimSpace(a.ssh(ctx, "lsblk -bno SIZE /dev/vda3"))
	if want := fmt.Sprint(int64(diskGiB-1) << 30); size != want {
		t.Errorf("data partition is %s bytes, want %s (the rest of the disk)", size, want)
	}
	if got := a.ssh(ctx, "findmnt -no SOURCE,FSTYPE /var/lib/lpmos"); !strings.Contains(got, "/dev/vda3 ext4") {
		t.Errorf("/var/lib/lpmos: %q", got)
	}
	if got := a.ssh(ctx, "systemctl is-enabled ssh.service; systemctl is-active systemd-timesyncd.service systemd-journald.service"); !strings.Contains(got, "disabled\nactive\nactive") {
		t.Errorf("ssh (enabled only through lpmos.env), time sync, journald: %q", got)
	}
	line := a.waitSerial(ctx, vm, "==== LPMOS appliance: region dc1, service active, API ok")
	t.Logf("console: %s", line)
	a.waitSerial(ctx, vm, "etcd        reachable")
	t.Logf("console status (serial capture):\n%s", consoleStatus(vm.SerialLog()))
}

// checkFirmware: the image booted through the firmware's own path (syslinux under
// BIOS, systemd-boot from EFI/BOOT/BOOTX64.EFI under UEFI).
func (a *applianceVM) checkFirmware(ctx context.Context, vm *qemu.VM) {
	got := strings.TrimSpace(a.ssh(ctx, "if [ -d /sys/firmware/efi ]; then echo uefi; else echo bios; fi"))
	if want := string(vm.Config.Firmware); got != want {
		a.t.Errorf("%s booted under %s, want %s", vm.Name, got, want)
	}
}

// addImage copies the test OS onto the appliance over SSH and catalogs it, as an
// operator adds an OS image.
func (a *applianceVM) addImage(ctx context.Context, osImg string) {
	t := a.t
	f, err := os.Open(osImg + ".zst")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := a.sshIn(ctx, f, "cat >/var/lib/lpmos/testos.img.zst && lpmos-image add --dir /var/lib/lpmos/images --os-type testos --os-version 1 /var/lib/lpmos/testos.img.zst && rm /var/lib/lpmos/testos.img.zst")
	t.Logf("lpmos-image add: %s", strings.TrimSpace(out))
}

// provision PXE-boots a second VM on the boot network through the appliance VM: task,
// report, approval through the control plane, install, the installed OS's marker.
func (a *applianceVM) provision(ctx context.Context, osImg string) {
	t := a.t
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	const mac = "52:54:00:12:34:60"
	var created struct {
		TaskID  string `json:"task_id"`
		Warning any    `json:"warning"`
	}
	// The catalog reaches etcd within seconds of lpmos-image add; until then a task
	// gets a warning: cancel it and try again.
	pctx, pcancel := context.WithTimeout(ctx, time.Minute)
	defer pcancel()
	if err := poll(pctx, 2*time.Second, func() bool {
		created.TaskID, created.Warning = "", nil // Unmarshal leaves absent fields as they were
		code, err := a.lab.API(ctx, "POST", lab.ControlURL()+"/api/v1/tasks",
			map[string]string{"region_id": "dc1", "target_mac": mac, "os_type": "testos", "os_version": "1"}, &created)
		if err != nil || code != 201 {
			t.Fatalf("create task: %d %v", code, err)
		}
		if created.Warning != nil {
			a.lab.API(ctx, "POST", lab.ControlURL()+"/api/v1/tasks/"+created.TaskID+"/cancel", nil, nil)
		}
		return created.Warning == nil
	}); err != nil {
		t.Fatalf("task created with a warning: %v", created.Warning)
	}
	start := time.Now()
	vm, err := a.lab.StartVM(ctx, lab.VMConfig{Name: "target", MAC: mac, Firmware: qemu.BIOS, CPUs: 1, DiskMiB: 64})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		vm.Stop(5 * time.Second)
		if t.Failed() {
			t.Logf("target serial console (tail):\n%s", vm.SerialTail(60))
		}
	})
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	approved := false
	for done := false; !done; {
		select {
		case <-ctx.Done():
			t.Fatalf("target: gave up waiting (approved %v)", approved)
		case <-vm.Done():
			t.Fatalf("target: QEMU exited early: %v", vm.Err())
		case <-tick.C:
		}
		var task struct {
			Status string `json:"status"`
			Plan   struct {
				Digest string `json:"digest"`
			} `json:"plan"`
		}
		if code, err := a.lab.API(ctx, "GET", lab.ControlURL()+"/api/v1/tasks/"+created.TaskID, nil, &task); err != nil || code != 200 {
			t.Fatalf("get task: %d %v", code, err)
		}
		switch task.Status {
		case "pending_approval":
			if !approved {
				t.Logf("target: reported after %.1fs; approving", time.Since(start).Seconds())
				if code, err := a.lab.API(ctx, "POST", lab.ControlURL()+"/api/v1/tasks/"+created.TaskID+"/approve",
					map[string]string{"plan_digest": task.Plan.Digest}, nil); err != nil || code != 200 {
					t.Fatalf("approve: %d %v", code, err)
				}
				approved = true
			}
		case "completed":
			t.Logf("target: installed after %.1fs", time.Since(start).Seconds())
			done = true
		case "failed", "cancelled", "expired":
			t.Fatalf("target: task %s", task.Status)
		}
	}
	line, err := vm.WaitSerial(ctx, testos.Marker)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("target: installed OS booted after %.1fs: %s", time.Since(start).Seconds(), line)
	want, err := os.ReadFile(osImg)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	f, err := os.Open(vm.Disk)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("target disk does not hold the test OS (%v)", err)
	}
}

// badConfig: with no REGION_LABEL the console and the journal name it, the service
// keeps retrying, and fixing the file and restarting the service brings the API up.
func (a *applianceVM) badConfig(ctx context.Context, vm *qemu.VM) {
	t := a.t
	start := time.Now()
	line := a.waitSerial(ctx, vm, "last error  ")
	for !strings.Contains(line, "REGION_LABEL is missing in /boot/lpmos/lpmos.env") {
		line = a.waitSerialAfter(ctx, vm, "last error  ", line)
	}
	t.Logf("console names the bad setting %.1fs after power-on: %s", time.Since(vm.Started).Seconds(), line)
	a.waitSSH(ctx)
	a.checkFirmware(ctx, vm)
	journal := a.ssh(ctx, "journalctl -b -u lpmos-appliance.service -p err -o cat --no-pager")
	if !strings.Contains(journal, "REGION_LABEL is missing") {
		t.Fatalf("journal (priority err) lacks the error:\n%s", journal)
	}
	if n := strings.Count(journal, "REGION_LABEL is missing"); n < 2 {
		t.Errorf("the service tried %d time(s); it should keep retrying", n)
	}
	if got := a.ssh(ctx, "systemctl show -p NRestarts --value lpmos-appliance.service; systemctl is-active lpmos-appliance.service"); got != "0\nactive\n" {
		t.Errorf("retries with backoff inside the service, no crash loop: %q", got)
	}
	// The operator fixes lpmos.env (here over SSH, with the key from the same file).
	a.ssh(ctx, "sed -i 's/^REGION_LABEL=.*/REGION_LABEL=dc1/' /boot/lpmos/lpmos.env && systemctl restart lpmos-appliance")
	a.waitHealthy(ctx, vm)
	a.waitSerial(ctx, vm, "==== LPMOS appliance: region dc1, service active, API ok")
	t.Logf("recovered %.1fs after the test started waiting", time.Since(start).Seconds())
}

func (a *applianceVM) waitSerial(ctx context.Context, vm *qemu.VM, s string) string {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	line, err := vm.WaitSerial(ctx, s)
	if err != nil {
		a.t.Fatal(err)
	}
	return line
}

// waitSerialAfter waits for a line with s other than prev (the console repeats its
// status when it changes).
func (a *applianceVM) waitSerialAfter(ctx context.Context, vm *qemu.VM, s, prev string) string {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	err := poll(ctx, 500*time.Millisecond, func() bool {
		for _, l := range strings.Split(vm.SerialLog(), "\n") {
			if i := strings.Index(l, s); i >= 0 && strings.TrimRight(l[i:], "\r") != prev {
				prev = strings.TrimRight(l[i:], "\r")
				return true
			}
		}
		return false
	})
	if err != nil {
		a.t.Fatalf("no new %q on the console: %v", s, err)
	}
	return prev
}

func (a *applianceVM) ssh(ctx context.Context, cmd string) string {
	return a.sshIn(ctx, nil, cmd)
}

// waitSSH waits until sshd answers with the configured key (lpmos-ssh starts it once
// lpmos.env is read; its host keys are made on that first start).
func (a *applianceVM) waitSSH(ctx context.Context) {
	t := a.t
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	var last []byte
	if err := poll(ctx, 2*time.Second, func() bool {
		var err error
		last, err = a.sshCmd(ctx, "true").CombinedOutput()
		return err == nil
	}); err != nil {
		t.Fatalf("SSH with the key from lpmos.env: %v: %s", err, last)
	}
}

func (a *applianceVM) sshCmd(ctx context.Context, cmd string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", "netns", "exec", a.lab.AppNS, "ssh", "-i", a.key, "-o", "BatchMode=yes",
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
		"-o", "ConnectTimeout=10", "root@"+mgmtVMIP, cmd)
}

func (a *applianceVM) sshIn(ctx context.Context, stdin io.Reader, cmd string) string {
	t := a.t
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	c := a.sshCmd(ctx, cmd)
	c.Stdin = stdin
	var stderr bytes.Buffer
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		t.Fatalf("ssh %q: %v\n%s%s", cmd, err, out, stderr.String())
	}
	return string(out)
}

// consoleStatus is the last status block the console printed.
func consoleStatus(serial string) string {
	i := strings.LastIndex(serial, "==== LPMOS appliance")
	if i < 0 {
		return ""
	}
	block := serial[i:]
	lines := strings.Split(block, "\n")
	if len(lines) > 6 {
		lines = lines[:6]
	}
	return strings.ReplaceAll(strings.Join(lines, "\n"), "\r", "")
}

// poll calls f every interval until it returns true or ctx ends.
func poll(ctx context.Context, interval time.Duration, f func() bool) error {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for !f() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}

func run(t *testing.T, argv ...string) {
	t.Helper()
	if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
}

// buildBinaries builds what runs beside the appliance VM: the control plane,
// lpmos-etcd, lpmos-image.
func buildBinaries(t *testing.T, dir string) string {
	return labtest.BuildBinaries(t, dir, "./control/cmd/lpmos-control", "./store/cmd/lpmos-etcd", "./images/cmd/lpmos-image")
}
