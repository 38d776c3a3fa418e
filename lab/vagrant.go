package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"lpmos.dev/lpmos/internal/netlab"
	"lpmos.dev/lpmos/internal/proc"
)

// The Vagrant lab's boot network, as the Vagrantfile defines it (keep in step).
const (
	VagrantNetwork = "lpmos-boot"
	VagrantBridge  = "lpmosbr0"
	VagrantHostIP  = "10.88.0.1"
	VagrantRange   = "10.88.0.100,10.88.0.200"
	vagrantMarker  = "LPMOS-TESTOS-BOOTED"
	libvirtSocket  = "/run/libvirt/libvirt-sock"
	libvirtURI     = "qemu:///system"
)

// ErrLibvirtRunning: a libvirtd this run did not start already serves qemu:///system.
// The run needs its own, inside its network namespace, so that the boot network and
// every address on it stay off the host's network.
var ErrLibvirtRunning = errors.New("a libvirtd already runs on this host")

// VagrantConfig is one run of the Vagrant/libvirt lab (`make vagrant-lab`, the CI test).
type VagrantConfig struct {
	Repo      string // repository root: the Vagrantfile
	Dir       string // state: logs, pool, etcd, serial consoles (created)
	Bin       string // lpmos-appliance, lpmos-control, lpmos-image
	Kernel    string // the agent's kernel and initramfs
	Initramfs string
	Image     string // the test OS image (.zst), added to dc1's catalog as testos 1
	VMs       int    // LPMOS_LAB_VMS
	Firmware  string // LPMOS_LAB_FIRMWARE: mixed, bios or uefi
	Driver    string // LPMOS_LAB_DRIVER: kvm or qemu; "" detects as the Vagrantfile does
	Out       io.Writer
}

// VagrantMachine is one VM of the run and its milestones.
type VagrantMachine struct {
	Name, MAC, Firmware string
	TaskID              string
	Up                  time.Time // `vagrant up` returned: the VM is powered on
	At                  map[string]time.Time
	MarkerLine          string
}

// KVMUsable is the Vagrantfile's rule: /dev/kvm can be opened and the CPU shows vmx or
// svm. A nested paravirtual /dev/kvm without them (this lab's CI machine) cannot boot
// a kernel.
func KVMUsable() bool {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	cpu, err := os.ReadFile("/proc/cpuinfo")
	return err == nil && regexp.MustCompile(`(?m)^flags\s*:.*\b(vmx|svm)\b`).Match(cpu)
}

// VagrantMachines are the VMs the Vagrantfile defines for n and firmware.
func VagrantMachines(n int, firmware string) []*VagrantMachine {
	var ms []*VagrantMachine
	for i := 1; i <= n; i++ {
		fw := "bios"
		if firmware == "uefi" || (firmware == "mixed" && i%2 == 0) {
			fw = "uefi"
		}
		nn := fmt.Sprintf("%02x", i)
		ms = append(ms, &VagrantMachine{Name: "pxe" + nn + "-" + fw, MAC: "52:54:00:88:00:" + nn, Firmware: fw, At: map[string]time.Time{}})
	}
	return ms
}

// vagrantLab is a running Vagrant lab; undo holds its teardown, newest first.
type vagrantLab struct {
	c    VagrantConfig
	ns   string
	undo []func()
	app  *proc.Proc
	tok  string
	http *http.Client
}

func (v *vagrantLab) logf(format string, args ...any) {
	fmt.Fprintf(v.c.Out, "vagrant-lab: "+format+"\n", args...)
}

func (v *vagrantLab) defer_(f func()) { v.undo = append(v.undo, f) }

func (v *vagrantLab) close() {
	for i := len(v.undo) - 1; i >= 0; i-- {
		v.undo[i]()
	}
}

// Vagrant runs the whole Vagrant lab once, as a person following docs/vagrant.md would
// and as CI does: in a network namespace of its own, virtlogd and libvirtd (started
// here, ended here by PID), a storage pool and the boot network; the appliance in
// full-DHCP mode on the network's bridge and the control plane; a task per VM;
// `vagrant up`; each machine's report approved through the API by its plan's digest;
// the installed test OS's marker on each serial console; then `vagrant destroy -f`
// and every libvirt object, process and file it created removed.
func Vagrant(ctx context.Context, c VagrantConfig) (ms []*VagrantMachine, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the Vagrant lab needs root (libvirtd, network namespace, DHCP ports)")
	}
	for _, b := range []string{"vagrant", "virsh", "libvirtd", "virtlogd", "qemu-img", "qemu-system-x86_64"} {
		if _, err := exec.LookPath(b); err != nil {
			return nil, fmt.Errorf("%s not installed (apt-get install vagrant vagrant-libvirt libvirt-daemon-system qemu-utils qemu-system-x86 ovmf)", b)
		}
	}
	if conn, err := net.DialTimeout("unix", libvirtSocket, time.Second); err == nil {
		conn.Close()
		return nil, fmt.Errorf("%w (%s answers): stop it first; this lab starts its own inside a network namespace", ErrLibvirtRunning, libvirtSocket)
	}
	if c.Driver == "" {
		c.Driver = "qemu"
		if KVMUsable() {
			c.Driver = "kvm"
		}
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return nil, err
	}
	v := &vagrantLab{c: c, ns: netlab.Name("lpm-vg", "")}
	defer v.close()
	if err := v.startLibvirt(ctx); err != nil {
		return nil, err
	}
	if err := v.startLPMOS(ctx); err != nil {
		return nil, err
	}
	ms = VagrantMachines(c.VMs, c.Firmware)
	for _, m := range ms {
		if m.TaskID, err = v.createTask(ctx, m.MAC); err != nil {
			return ms, err
		}
	}
	if err := v.up(ctx, ms); err != nil {
		return ms, err
	}
	return ms, v.provision(ctx, ms)
}

// startLibvirt starts virtlogd and libvirtd in the lab's namespace, then the pool and
// the boot network.
func (v *vagrantLab) startLibvirt(ctx context.Context) error {
	if err := netlab.AddNS(ctx, v.ns); err != nil {
		return err
	}
	v.defer_(func() { netlab.DelNS(v.ns) }) // libvirt's iptables chains live in it and go with it
	// Without a usable KVM, /dev/kvm is hidden from libvirtd: it exists here but cannot
	// run a guest, and libvirt then re-probes QEMU's capabilities on every domain
	// define (60-100 s each on this 2-core machine: `vagrant up` took 6 min, 6 s now).
	hide := ""
	if v.c.Driver == "qemu" {
		hide = "mount --bind /dev/null /dev/kvm 2>/dev/null; "
	}
	for _, d := range []string{"virtlogd", "libvirtd"} {
		p, err := proc.Start(d, []string{"unshare", "--mount", "sh", "-c", hide + "exec " + d},
			proc.Options{NetNS: v.ns, Log: filepath.Join(v.c.Dir, d+".log")})
		if err != nil {
			return err
		}
		v.defer_(func() { p.Stop(10 * time.Second) })
		v.logf("%s started (pid %d) in network namespace %s", d, p.Pid(), v.ns)
	}
	if err := waitFor(ctx, 30*time.Second, func() error { _, err := virsh("version"); return err }); err != nil {
		return fmt.Errorf("libvirtd does not answer: %w", err)
	}
	// A fresh libvirt has no storage pool "default", which vagrant-libvirt uses. Its
	// usual place: QEMU runs as libvirt-qemu and must reach the disks (not in a 0700
	// temp dir).
	if _, err := virsh("pool-info", "default"); err != nil {
		const pool = "/var/lib/libvirt/images"
		if err := os.MkdirAll(pool, 0o711); err != nil {
			return err
		}
		if _, err := virsh("pool-define-as", "default", "dir", "--target", pool); err != nil {
			return err
		}
		v.defer_(func() { virsh("pool-destroy", "default"); virsh("pool-undefine", "default") })
	}
	virsh("pool-start", "default") // already active: an error to ignore
	// The boot network: isolated, no libvirt DHCP (the appliance serves it), an IPv6
	// prefix so libvirt sends router advertisements (iPXE waits ~13 s for one otherwise).
	virsh("net-destroy", VagrantNetwork) // a leftover of an interrupted run
	virsh("net-undefine", VagrantNetwork)
	xml := filepath.Join(v.c.Dir, VagrantNetwork+".xml")
	if err := os.WriteFile(xml, []byte(VagrantNetworkXML()), 0o644); err != nil {
		return err
	}
	if _, err := virsh("net-define", xml); err != nil {
		return err
	}
	v.defer_(func() { virsh("net-undefine", VagrantNetwork) })
	if _, err := virsh("net-start", VagrantNetwork); err != nil {
		return err
	}
	v.defer_(func() { virsh("net-destroy", VagrantNetwork) })
	return nil
}

// VagrantNetworkXML is the boot network's libvirt definition (scripts/vagrant-lab.sh
// prints the same).
func VagrantNetworkXML() string {
	return `<network ipv6='yes'>
  <name>` + VagrantNetwork + `</name>
  <bridge name='` + VagrantBridge + `' stp='on' delay='0'/>
  <ip address='` + VagrantHostIP + `' netmask='255.255.255.0'/>
  <ip family='ipv6' address='fd88::1' prefix='64'/>
</network>
`
}

// startLPMOS runs the appliance (full DHCP on the bridge) and the control plane in the
// namespace, dc1's catalog holding the test OS.
func (v *vagrantLab) startLPMOS(ctx context.Context) error {
	v.http = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return netlab.Dial(ctx, v.ns, network, addr)
	}}}
	images := filepath.Join(v.c.Dir, "images")
	os.MkdirAll(images, 0o755)
	if out, err := exec.Command(filepath.Join(v.c.Bin, "lpmos-image"), "add", "--dir", images, "--os-type", "testos", "--os-version", "1", v.c.Image).CombinedOutput(); err != nil {
		return fmt.Errorf("lpmos-image add: %v\n%s", err, out)
	}
	start := func(name string, argv ...string) (*proc.Proc, error) {
		p, err := proc.Start(name, argv, proc.Options{NetNS: v.ns, Log: filepath.Join(v.c.Dir, name+".log")})
		if err != nil {
			return nil, err
		}
		v.defer_(func() { p.Stop(10 * time.Second) })
		return p, nil
	}
	var err error
	v.app, err = start("appliance", filepath.Join(v.c.Bin, "lpmos-appliance"), "--label=dc1",
		"--dhcp-mode=full", "--dhcp-interface="+VagrantBridge, "--boot-server-ip="+VagrantHostIP, "--dhcp-range="+VagrantRange,
		"--kernel="+v.c.Kernel, "--initramfs="+v.c.Initramfs,
		"--etcd-data-dir="+filepath.Join(v.c.Dir, "dc1.etcd"), "--images-dir="+images)
	if err != nil {
		return err
	}
	if err := v.waitOK(ctx, v.app, "http://127.0.0.1:8081/api/health"); err != nil {
		return fmt.Errorf("appliance: %w\n%s", err, tailOf(v.app.Log(), 3000))
	}
	boot, err := start("control-bootstrap", filepath.Join(v.c.Bin, "lpmos-control"), "bootstrap", "--out-dir="+v.c.Dir, "--etcd-endpoints=127.0.0.1:2379")
	if err != nil {
		return err
	}
	<-boot.Done()
	if err := boot.Err(); err != nil {
		return fmt.Errorf("control bootstrap: %w\n%s", err, boot.Log())
	}
	tok, err := os.ReadFile(filepath.Join(v.c.Dir, "admin-token"))
	if err != nil {
		return err
	}
	v.tok = strings.TrimSpace(string(tok))
	ctl, err := start("control", filepath.Join(v.c.Bin, "lpmos-control"), "--etcd-endpoints=127.0.0.1:2379")
	if err != nil {
		return err
	}
	if err := v.waitOK(ctx, ctl, "http://127.0.0.1:8080/login"); err != nil {
		return fmt.Errorf("control plane: %w\n%s", err, tailOf(ctl.Log(), 3000))
	}
	v.logf("appliance (full DHCP on %s, %s) and control plane up", VagrantBridge, VagrantHostIP)
	return nil
}

func (v *vagrantLab) waitOK(ctx context.Context, p *proc.Proc, url string) error {
	return waitFor(ctx, 60*time.Second, func() error {
		select {
		case <-p.Done():
			return backoffStop{fmt.Errorf("exited: %v", p.Err())}
		default:
		}
		resp, err := v.http.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: HTTP %d", url, resp.StatusCode)
		}
		return nil
	})
}

// api calls the control plane as admin.
func (v *vagrantLab) api(ctx context.Context, method, path string, body, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://127.0.0.1:8080"+path, rd)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+v.tok)
	resp, err := v.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, data)
		}
	}
	return resp.StatusCode, nil
}

func (v *vagrantLab) createTask(ctx context.Context, mac string) (string, error) {
	var out struct {
		TaskID string `json:"task_id"`
	}
	code, err := v.api(ctx, "POST", "/api/v1/tasks", map[string]string{"region_id": "dc1", "target_mac": mac, "os_type": "testos", "os_version": "1"}, &out)
	if err != nil || code != http.StatusCreated {
		return "", fmt.Errorf("create task for %s: HTTP %d %v", mac, code, err)
	}
	return out.TaskID, nil
}

func (v *vagrantLab) vagrantEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LPMOS_LAB_") && !strings.HasPrefix(kv, "VAGRANT_") && !strings.HasPrefix(kv, "LIBVIRT_") {
			env = append(env, kv)
		}
	}
	return append(env,
		"VAGRANT_DEFAULT_PROVIDER=libvirt", "VAGRANT_CHECKPOINT_DISABLE=1", "VAGRANT_BOX_UPDATE_CHECK_DISABLE=1",
		"VAGRANT_DOTFILE_PATH="+filepath.Join(v.c.Dir, "vagrant-state"),
		"VAGRANT_HOME="+filepath.Join(v.c.Dir, "vagrant-home"),
		"LIBVIRT_DEFAULT_URI="+libvirtURI,
		"LPMOS_LAB_VMS="+strconv.Itoa(v.c.VMs), "LPMOS_LAB_FIRMWARE="+v.c.Firmware,
		"LPMOS_LAB_DRIVER="+v.c.Driver, "LPMOS_LAB_LOGDIR="+v.serialDir(),
	)
}

func (v *vagrantLab) serialDir() string { return filepath.Join(v.c.Dir, "serial") }

func (v *vagrantLab) vagrant(ctx context.Context, timeout time.Duration, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	log, err := os.OpenFile(filepath.Join(v.c.Dir, "vagrant.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	from, _ := log.Seek(0, io.SeekEnd)
	cmd := exec.CommandContext(ctx, "vagrant", args...)
	cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = v.c.Repo, v.vagrantEnv(), log, log
	cmd.WaitDelay = 5 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Run(); err != nil {
		all, _ := os.ReadFile(log.Name())
		// Without Ruby's backtraces: vagrant prints the error after every machine's.
		var msg []string
		for _, l := range strings.Split(string(all[min(int(from), len(all)):]), "\n") {
			if t := strings.TrimSpace(l); t != "" && !strings.HasPrefix(t, "/usr/") {
				msg = append(msg, l)
			}
		}
		return fmt.Errorf("vagrant %s: %w\n%s", strings.Join(args, " "), err, tailOf(strings.Join(msg, "\n"), 3000))
	}
	return nil
}

// up powers the VMs on; their teardown (vagrant destroy, the UEFI variable stores) is
// registered before, so a half-done `vagrant up` is cleaned too.
func (v *vagrantLab) up(ctx context.Context, ms []*VagrantMachine) error {
	v.defer_(func() {
		if err := v.vagrant(context.Background(), 3*time.Minute, "destroy", "-f"); err != nil {
			v.logf("%v", err)
		}
		for _, m := range ms {
			dom := "lpmos-" + m.Name
			virsh("destroy", dom) // whatever vagrant left
			virsh("undefine", dom, "--nvram", "--remove-all-storage")
			os.Remove(filepath.Join("/var/lib/libvirt/qemu/nvram", dom+"_VARS.fd"))
		}
	})
	start := time.Now()
	if err := v.vagrant(ctx, 5*time.Minute, "up", "--provider=libvirt"); err != nil {
		return err
	}
	now := time.Now()
	for _, m := range ms {
		m.Up = now
	}
	v.logf("vagrant up: %d VM(s) powered on in %.1f s (driver %s)", len(ms), now.Sub(start).Seconds(), v.c.Driver)
	return nil
}

// provision approves each machine's plan once it has reported and waits for its
// installed OS's marker.
func (v *vagrantLab) provision(ctx context.Context, ms []*VagrantMachine) error {
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		done := 0
		for _, m := range ms {
			if err := v.step(ctx, m); err != nil {
				return err
			}
			if _, ok := m.At["marker"]; ok {
				done++
			}
		}
		if done == len(ms) {
			return nil
		}
		select {
		case <-ctx.Done():
			var missing []string
			for _, m := range ms {
				if _, ok := m.At["marker"]; !ok {
					serial, _ := os.ReadFile(filepath.Join(v.serialDir(), m.Name+"-serial.log"))
					missing = append(missing, fmt.Sprintf("%s (milestones %v), serial console tail:\n%s", m.Name, keys(m.At), tailOf(string(serial), 1500)))
				}
			}
			return fmt.Errorf("%w waiting for: %s\nappliance log tail:\n%s", ctx.Err(), strings.Join(missing, "\n"), tailOf(v.app.Log(), 3000))
		case <-tick.C:
		}
	}
}

func (v *vagrantLab) step(ctx context.Context, m *VagrantMachine) error {
	mark := func(s string) {
		if _, ok := m.At[s]; !ok {
			m.At[s] = time.Now()
			v.logf("%s: %s %.1f s after power-on", m.Name, s, time.Since(m.Up).Seconds())
		}
	}
	if _, ok := m.At["completed"]; !ok {
		var task struct {
			Status string `json:"status"`
			Plan   struct {
				Digest string `json:"digest"`
				Disk   struct {
					Path string `json:"path"`
				} `json:"disk"`
			} `json:"plan"`
		}
		if code, err := v.api(ctx, "GET", "/api/v1/tasks/"+m.TaskID, nil, &task); err != nil || code != http.StatusOK {
			return fmt.Errorf("%s: read task: HTTP %d %v", m.Name, code, err)
		}
		switch task.Status {
		case "pending":
		case "pending_approval":
			mark("report")
			if _, ok := m.At["approved"]; !ok {
				if task.Plan.Disk.Path != "/dev/vda" {
					return fmt.Errorf("%s: plan targets %q, want the VM's only disk /dev/vda", m.Name, task.Plan.Disk.Path)
				}
				var out map[string]any
				if code, err := v.api(ctx, "POST", "/api/v1/tasks/"+m.TaskID+"/approve", map[string]string{"plan_digest": task.Plan.Digest}, &out); err != nil || code != http.StatusOK {
					return fmt.Errorf("%s: approve: HTTP %d %v %v", m.Name, code, out, err)
				}
				mark("approved")
			}
		case "approved", "installing":
			mark("report")
			mark("approved")
		case "completed":
			mark("completed")
		default:
			return fmt.Errorf("%s: task %s is %q", m.Name, m.TaskID, task.Status)
		}
		return nil
	}
	serial, err := os.ReadFile(filepath.Join(v.serialDir(), m.Name+"-serial.log"))
	if err != nil {
		return nil // libvirt creates it as the VM starts
	}
	for _, line := range strings.Split(string(serial), "\n") {
		if strings.Contains(line, vagrantMarker) {
			if !strings.Contains(line, "firmware="+m.Firmware) {
				return fmt.Errorf("%s: the installed OS booted with the wrong firmware: %s", m.Name, line)
			}
			m.MarkerLine = strings.TrimSpace(line)
			mark("marker")
			break
		}
	}
	return nil
}

// VagrantTimings is the per-machine table: seconds from power-on to the report, from
// approval to the installed OS's marker, and in all.
func VagrantTimings(ms []*VagrantMachine) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\nVagrant lab timings (seconds):\n%-12s %8s %18s %8s\n", "machine", "->report", "approve->marker", "total")
	d := func(a, z time.Time) string {
		if a.IsZero() || z.IsZero() {
			return "-"
		}
		return fmt.Sprintf("%.1f", z.Sub(a).Seconds())
	}
	for _, m := range ms {
		fmt.Fprintf(&b, "%-12s %8s %18s %8s\n", m.Name, d(m.Up, m.At["report"]), d(m.At["approved"], m.At["marker"]), d(m.Up, m.At["marker"]))
	}
	return b.String()
}

func virsh(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "virsh", append([]string{"-c", libvirtURI}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("virsh %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// backoffStop ends waitFor at once with its error.
type backoffStop struct{ error }

// waitFor calls f every 200 ms until it succeeds, returns a backoffStop, or limit passes.
func waitFor(ctx context.Context, limit time.Duration, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		err := f()
		var stop backoffStop
		if err == nil || errors.As(err, &stop) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-tick.C:
		}
	}
}

func tailOf(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func keys(m map[string]time.Time) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}
