package appliance_test

import (
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pin/tftp/v3"

	"lpmos.dev/lpmos/appliance"
	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/internal/metrics/metricstest"
	"lpmos.dev/lpmos/netboot/ipxe"
)

// The appliance's /metrics after a real flow (an unknown machine reports, a task is
// created, its agent reports, is approved, installs and completes; a wrong token is
// refused) counts exactly what happened.
func TestMetricsAfterAnInstall(t *testing.T) {
	var imagesDir string
	sys := startSystemWith(t, func(c *appliance.Config) { imagesDir = c.ImagesDir; addImage(t, c.ImagesDir, "ubuntu", "22.04") }, "dc1")
	url := sys.regions["dc1"].URL()

	// Before anything: the metrics are there, counted from zero.
	m := metricstest.Scrape(t, url+"/metrics", "")
	if !m.Has("lpmos_region_tasks") || m.Value("lpmos_region_tasks") != 0 || m.Value("lpmos_reports_total") != 0 {
		t.Fatalf("fresh appliance: tasks %v, reports %v", m.Value("lpmos_region_tasks"), m.Value("lpmos_reports_total"))
	}

	// A machine nobody created a task for.
	if code, body := call(t, "POST", url+"/api/report", map[string]any{"mac_address": "52:54:00:00:40:99", "hardware": map[string]any{"cpu": map[string]int{"cores": 1}}}); code != http.StatusNotFound {
		t.Fatalf("unknown machine's report: %d %v", code, body)
	}

	const mac = "52:54:00:00:40:01"
	disks := newFileDisks(t, mac, contract.Disk{Name: "sda", SizeBytes: 8 << 30, Serial: "S1"})
	id := createTask(t, sys.control.URL(), mac)
	done := runAgent(disks.agentConfig(url))
	sys.etcd.WaitValue(t, "/os/install/task/dc1/"+id+"/status", "pending_approval", 30*time.Second)
	// A wrong agent token on the approval poll: refused, counted.
	if code, body := callAuth(t, "GET", url+"/api/approval/"+mac, "not-the-token", nil); code != http.StatusUnauthorized {
		t.Fatalf("wrong token: %d %v", code, body)
	}
	approve(t, sys.control.URL(), id)
	if err := waitAgent(t, done, 60*time.Second); err != nil {
		t.Fatalf("agent: %v", err)
	}
	sys.etcd.WaitValue(t, "/os/install/task/dc1/"+id+"/status", "completed", 10*time.Second)

	m = metricstest.Scrape(t, url+"/metrics", "")
	gz, err := os.Stat(filepath.Join(imagesDir, "ubuntu-22.04.img.gz"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		what      string
		got, want float64
	}{
		{"reports matched", m.Value("lpmos_reports_total", "outcome", "matched"), 1},
		{"reports unmatched", m.Value("lpmos_reports_total", "outcome", "unmatched"), 1},
		{"reports rate limited", m.Value("lpmos_reports_total", "outcome", "rate_limited"), 0},
		{"agent tokens rejected", m.Value("lpmos_agent_token_rejected_total"), 1},
		{"tasks completed", m.Value("lpmos_region_tasks", "status", "completed"), 1},
		{"tasks in all", m.Value("lpmos_region_tasks"), 1},
		{"tasks scrape error", m.Value("lpmos_region_tasks_scrape_error"), 0},
		{"image streams running", m.Value("lpmos_image_streams_active"), 0},
		{"report requests 200", m.Value("lpmos_appliance_http_requests_total", "route", "POST /api/report", "code", "200"), 1},
		{"report requests 404", m.Value("lpmos_appliance_http_requests_total", "route", "POST /api/report", "code", "404"), 1},
		{"approval polls 401", m.Value("lpmos_appliance_http_requests_total", "route", "GET /api/approval/{mac}", "code", "401"), 1},
		{"completed progress posts", m.Value("lpmos_appliance_http_requests_total", "route", "POST /api/progress", "code", "200"), m.Value("lpmos_store_request_duration_seconds", "op", "progress")},
		{"store errors", m.Value("lpmos_store_errors_total"), 0},
	} {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", c.what, c.got, c.want)
		}
	}
	if got := m.Value("lpmos_http_served_bytes_total", "kind", "image"); got < float64(gz.Size()) {
		t.Errorf("image bytes served: %v, want at least the image's %d", got, gz.Size())
	}
	if got := m.Value("lpmos_appliance_http_requests_total", "route", "GET /images/", "code", "200"); got < 1 {
		t.Errorf("image requests: %v", got)
	}
	if got := m.Value("lpmos_store_request_duration_seconds", "op", "report"); got != 2 {
		t.Errorf("timed report calls: %v, want 2", got)
	}
	// The install passed through its stages: each one timed once, when the next began.
	for _, st := range []contract.Stage{contract.StageDownloading, contract.StageVerifying} {
		if got := m.Value("lpmos_install_stage_duration_seconds", "stage", string(st)); got != 1 {
			t.Errorf("stage %s timed %v times, want 1", st, got)
		}
	}
	if got := m.Value("lpmos_install_stage_duration_seconds", "stage", string(contract.StageCompleted)); got != 0 {
		t.Errorf("the final stage has no duration, timed %v times", got)
	}
}

// The boot path's metrics: a TFTP transfer of the first stage and the iPXE bootstrap
// script over HTTP are counted with their bytes.
func TestMetricsOfTheBootPath(t *testing.T) {
	if !ipxe.HasBinary(ipxe.Binaries(), ipxe.FileBIOS) {
		t.Skip("SKIP: no embedded iPXE binaries: run scripts/fetch-ipxe.sh")
	}
	udp, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tftpAddr := udp.LocalAddr().String()
	udp.Close()
	sys := startSystemWith(t, func(c *appliance.Config) {
		c.Boot = appliance.BootConfig{BootServerIP: "127.0.0.1", TFTPAddr: tftpAddr, DHCPMode: "off"}
	}, "dc1")
	url := sys.regions["dc1"].URL()

	c, err := tftp.NewClient(tftpAddr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetTimeout(2 * time.Second)
	wt, err := c.Receive(ipxe.FileBIOS, "octet")
	if err != nil {
		t.Fatal(err)
	}
	n, err := wt.WriteTo(io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	code, script := getText(t, url+ipxe.PathBootstrap)
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d", ipxe.PathBootstrap, code)
	}

	// The server counts a transfer once the client's last ACK is in, which may be
	// just after the client is done: scrape until it shows, within a deadline.
	var m metricstest.Families
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for m = metricstest.Scrape(t, url+"/metrics", ""); m.Value("lpmos_tftp_transfers_total") == 0 && time.Now().Before(deadline); <-tick.C {
		m = metricstest.Scrape(t, url+"/metrics", "")
	}
	if got := m.Value("lpmos_tftp_transfers_total", "outcome", "done"); got != 1 {
		t.Errorf("TFTP transfers done: %v, want 1", got)
	}
	if got := m.Value("lpmos_tftp_sent_bytes_total"); got != float64(n) {
		t.Errorf("TFTP bytes: %v, want %d", got, n)
	}
	if got := m.Value("lpmos_http_served_bytes_total", "kind", "boot"); got != float64(len(script)) {
		t.Errorf("boot bytes over HTTP: %v, want %d", got, len(script))
	}
	if got := m.Value("lpmos_appliance_http_requests_total", "route", ipxe.PathBootstrap, "code", "200"); got != 1 {
		t.Errorf("bootstrap requests: %v, want 1", got)
	}
}
