package storm_test

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"lpmos.dev/lpmos/appliance"
	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/control"
	"lpmos.dev/lpmos/images"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
	"lpmos.dev/lpmos/storm"
)

// The storm at N=200 against a real appliance and control plane on one embedded etcd,
// in this process: every machine finishes without a single error, and the storm's counts
// are the appliance's own (/metrics). As root the test runs again in a network
// namespace of its own, with the proxy-DHCP stage: ports 67 and 4011 there are nobody
// else's (the appliance and dhcpd tests bind them on the host, and check them freed).
func TestStorm200(t *testing.T) {
	dhcp := os.Getenv(inNetNS) == "1"
	switch {
	case dhcp:
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			t.Fatalf("lo up in the storm's namespace: %v", err)
		}
	case os.Geteuid() == 0:
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestStorm200$", "-test.v", "-test.count=1", "-test.timeout=2m")
		cmd.Env = append(os.Environ(), inNetNS+"=1")
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
		out, err := cmd.CombinedOutput()
		var keep []string // without etcd's client warnings about requests cancelled at the stop
		for _, l := range strings.Split(string(out), "\n") {
			if !strings.Contains(l, `"logger":"etcd-client"`) {
				keep = append(keep, l)
			}
		}
		t.Logf("in a network namespace of its own:\n%s", strings.Join(keep, "\n"))
		if err != nil {
			t.Fatalf("the storm in its network namespace: %v", err)
		}
		return
	}
	runStorm(t, dhcp)
}

// inNetNS marks the test's run inside its own network namespace (root only).
const inNetNS = "LPMOS_STORM_IN_NETNS"

func runStorm(t *testing.T, dhcp bool) {
	const n, unknownEvery = 200, 10
	known := n - n/unknownEvery
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	etcd := storetest.Start(t)
	dir := t.TempDir()
	imagesDir := filepath.Join(dir, "images")
	os.Mkdir(imagesDir, 0o755)
	addImage(t, imagesDir, 1<<20)
	kernel, initrd := filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initramfs.cpio.gz")
	os.WriteFile(kernel, make([]byte, 64<<10), 0o644)
	os.WriteFile(initrd, make([]byte, 256<<10), 0o644)
	udp, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tftpAddr := udp.LocalAddr().String()
	udp.Close()
	cfg := appliance.Config{
		Label: "dc1", APIHost: "127.0.0.1", EtcdEndpoints: etcd.Endpoints, HeartbeatTTL: 5 * time.Second, RetryAfter: 2,
		ImagesDir: imagesDir, LogLevel: "warn", MaxConns: 4096, MaxConnsPerSource: 64, ReportBurstPerSource: 20, ReportBurstPerMAC: 5,
		Boot: appliance.BootConfig{BootServerIP: "127.0.0.1", TFTPAddr: tftpAddr, DHCPMode: "off", BootUnknown: true, Kernel: kernel, Initramfs: initrd},
	}
	if dhcp {
		cfg.Boot.DHCPMode = "proxy"
	}
	a, err := appliance.Start(ctx, cfg, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop()
	c, err := control.Start(ctx, control.Config{Host: "127.0.0.1", EtcdEndpoints: etcd.Endpoints}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	if _, err := etcd.Store.AddUser(ctx, "storm", store.RoleOperator, "correct horse battery"); err != nil {
		t.Fatal(err)
	}
	_, token, err := etcd.Store.CreateToken(ctx, "storm", time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	sc := storm.Config{ApplianceURL: a.URL(), ControlURL: c.URL(), ControlToken: token, Region: "dc1", OSType: "ubuntu", OSVersion: "22.04",
		Machines: n, UnknownEvery: unknownEvery, TFTPAddr: tftpAddr, AppliancePID: os.Getpid(), Log: tWriter{t}}
	if dhcp {
		sc.DHCPAddr = "127.0.0.1:4011"
	}
	start := time.Now()
	res, err := storm.Run(ctx, sc)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	res.Print(&out)
	t.Logf("storm of %d machines (DHCP %t; CPU and RSS are this test process's) in %s:\n%s", n, dhcp, time.Since(start).Round(time.Millisecond), out.String())
	if res.Finished != n || res.ErrorCount() != 0 {
		t.Fatalf("finished %d of %d, %d errors: %v", res.Finished, n, res.ErrorCount(), res.Errors)
	}
	if len(res.Stages["approval"]) != known || len(res.Stages["total"]) != n || dhcp && len(res.Stages["dhcp"]) != n || len(res.Stages["tftp"]) != n {
		t.Fatalf("stage counts: approval %d, total %d, dhcp %d, tftp %d", len(res.Stages["approval"]), len(res.Stages["total"]), len(res.Stages["dhcp"]), len(res.Stages["tftp"]))
	}
	if wall := time.Since(start); wall > 60*time.Second {
		t.Fatalf("the storm took %s", wall)
	}
	// The appliance counted what the storm did.
	m := scrape(t, a.URL()+"/metrics")
	for metric, want := range map[string]int{
		`lpmos_reports_total{outcome="matched"}`:        known,
		`lpmos_reports_total{outcome="unmatched"}`:      n - known,
		`lpmos_region_tasks{status="completed"}`:        known,
		`lpmos_tftp_transfers_total{outcome="done"}`:    n,
		`lpmos_agent_token_rejected_total`:              0,
		`lpmos_region_tasks{status="pending_approval"}`: 0,
	} {
		if got, ok := m[metric]; !ok || got != float64(want) {
			t.Errorf("%s = %v (present %t), the storm says %d", metric, got, ok, want)
		}
	}
	if dhcp {
		if got := m[`lpmos_dhcp_packets_total{outcome="answered",type="REQUEST"}`]; got != 2*n {
			t.Errorf("DHCP REQUESTs answered: %v, want %d", got, 2*n)
		}
	}
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func addImage(t *testing.T, dir string, size int) {
	t.Helper()
	img := make([]byte, size)
	for i := range img {
		img[i] = byte(i*7 + i>>12)
	}
	path := filepath.Join(dir, "ubuntu-22.04.img")
	if err := os.WriteFile(path, img, 0o644); err != nil {
		t.Fatal(err)
	}
	cat, err := images.OpenCatalog(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cat.Add(context.Background(), contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}, path, images.FormatRaw); err != nil {
		t.Fatal(err)
	}
}

// scrape reads a Prometheus text page into "name{labels}" -> value.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "#") {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(l[i+1:], 64); err == nil {
			out[l[:i]] = v
		}
	}
	return out
}
