package appliance_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/appliance"
	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/internal/metrics/metricstest"
	"lpmos.dev/lpmos/store/storetest"
)

// One host opens many half-sent POSTs (once: 21,000 of them exhausted the appliance's
// file descriptors and took its etcd down). Now the connections over the per-source cap
// are closed at once, another host's agent is still served, and etcd is unchanged.
func TestHalfSentPostFloodFromOneSource(t *testing.T) {
	const perSource, flood = 16, 200
	sys := startSystemWith(t, func(c *appliance.Config) { c.MaxConns, c.MaxConnsPerSource = 256, perSource }, "dc1")
	addr := strings.TrimPrefix(sys.regions["dc1"].URL(), "http://")
	before := sys.etcd.Dump(t, "/os/install/")
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	closed := 0
	for i := range flood {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		// Headers promising a body that never comes.
		fmt.Fprintf(c, "POST /api/report HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{")
		held = append(held, c)
	}
	// Every connection past the cap is closed by the appliance: reading it ends (EOF,
	// or a reset: the unread request was dropped). A few rounds, bounded, for a loaded
	// machine where the appliance accepts the backlog slowly.
	open := held
	for round := 0; round < 10 && len(open) > perSource; round++ {
		var still []net.Conn
		for _, c := range open {
			c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			_, err := c.Read(make([]byte, 1))
			var ne net.Error
			if err == io.EOF || err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
				closed++
			} else {
				still = append(still, c)
			}
		}
		open = still
	}
	if want := flood - perSource; closed < want {
		t.Fatalf("%d of %d flood connections closed, want at least %d", closed, flood, want)
	}
	// Another machine on the boot network is served during the flood.
	other := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).DialContext}}
	resp, err := other.Post("http://"+addr+"/api/report", "application/json", strings.NewReader(`{"mac_address":"52:54:00:00:40:01","hardware":{}}`))
	if err != nil {
		t.Fatalf("an agent during the flood: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound { // no task: an unmatched report, the normal answer
		t.Fatalf("an agent during the flood: HTTP %d", resp.StatusCode)
	}
	// Tasks unchanged; the only unmatched report is the other agent's.
	storetest.AssertSame(t, before, sys.etcd.Dump(t, "/os/install/"))
	if um := sys.etcd.Dump(t, "/os/unmatched_reports/dc1/"); len(um) != 1 {
		t.Fatalf("unmatched reports after the flood: %v", um)
	}
	t.Logf("%d half-sent POSTs from one source: %d closed at once, %d held (cap %d)", flood, closed, flood-closed, perSource)
}

// POST /api/report is open, so it is rate-limited per address and per MAC, and a
// report's size is capped: a flood of invented MACs from one host stores a bounded
// number of unmatched reports, one MAC cannot be re-reported in a loop, and another
// machine is served meanwhile.
func TestReportFloodsAreLimited(t *testing.T) {
	sys := startSystemWith(t, func(c *appliance.Config) { c.ReportBurstPerSource, c.ReportBurstPerMAC = 20, 5 }, "dc1")
	base := sys.regions["dc1"].URL()
	from := func(ip string) *http.Client {
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}).DialContext}}
	}
	report := func(c *http.Client, mac, hw string) (int, map[string]any) {
		resp, err := c.Post(base+"/api/report", "application/json", strings.NewReader(`{"mac_address":"`+mac+`","hardware":`+hw+`}`))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]any
		json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body
	}
	// 200 invented MACs from one address, as fast as it can.
	flooder, limited, began := from("127.0.0.1"), 0, time.Now()
	for i := range 200 {
		code, body := report(flooder, fmt.Sprintf("02:00:00:00:01:%02x", i), `{}`)
		if code == http.StatusTooManyRequests {
			limited++
			if body["retry_after"] == nil {
				t.Fatalf("429 without retry_after: %v", body)
			}
		}
	}
	// The bucket lets 20 through at once and 10 a second after: how many may pass
	// depends on how long this machine took to send the 200.
	allowed := 20 + int(10*time.Since(began).Seconds()) + 1
	stored := len(sys.etcd.Dump(t, "/os/unmatched_reports/dc1/"))
	if 200-limited > allowed || stored > allowed {
		t.Fatalf("flood of 200 reports in %s: %d limited, %d stored; at most %d may pass", time.Since(began), limited, stored, allowed)
	}
	// One MAC in a loop from another address: 5 at once, then 429.
	looper, perMAC, loopStart := from("127.0.0.2"), 0, time.Now()
	for range 10 {
		if code, _ := report(looper, "02:00:00:00:02:01", `{}`); code == http.StatusTooManyRequests {
			perMAC++
		}
	}
	if refills := int(time.Since(loopStart) / (2 * time.Second)); perMAC < 5-refills || perMAC > 5 {
		t.Fatalf("10 reports of one MAC in %s: %d limited, want 5 (less one per 2 s taken)", time.Since(loopStart), perMAC)
	}
	// An oversized report is refused, nothing stored.
	before := sys.etcd.Dump(t, "/os/unmatched_reports/")
	big := `{"cpu":{"model":"` + strings.Repeat("x", contract.MaxHardwareBytes) + `"}}`
	if code, body := report(from("127.0.0.3"), "02:00:00:00:03:01", big); code != http.StatusRequestEntityTooLarge {
		t.Fatalf("a report over the cap: %d %v", code, body)
	}
	storetest.AssertSame(t, before, sys.etcd.Dump(t, "/os/unmatched_reports/"))
	// A machine with a task, from yet another address, is served during all this.
	id := createTask(t, sys.control.URL(), "02:00:00:00:04:01")
	if code, body := report(from("127.0.0.4"), "02:00:00:00:04:01", `{"cpu":{"cores":2}}`); code != 200 || body["task_id"] != id {
		t.Fatalf("a real agent during the flood: %d %v", code, body)
	}
	// And etcd stays small: the flood wrote at most the reports it let through.
	st, err := sys.etcd.Client.Status(context.Background(), sys.etcd.Endpoints[0])
	if err != nil || st.DbSize > 16<<20 {
		t.Fatalf("etcd db after the flood: %d bytes, %v (want under 16 MiB)", st.DbSize, err)
	}
	t.Logf("200 reports from one address: %d answered 429, %d stored; one MAC 10 times: %d answered 429; etcd db %d KiB", limited, stored, perMAC, st.DbSize>>10)
}

// Image streams are capped per appliance: with room for one, a second install waits
// the appliance's Retry-After without spending a retry, then streams; both complete.
func TestImageStreamsAreCapped(t *testing.T) {
	sys := startSystemWith(t, func(c *appliance.Config) {
		c.MaxStreams, c.ImageRate = 1, 8<<20 // 16 MiB at 8 MiB/s: the first stream takes 2 s
		addImageSized(t, c.ImagesDir, "ubuntu", "22.04", 16<<20)
	}, "dc1")
	var dones []chan error
	var disks []*fileDisks
	var ids []string
	for i := range 2 {
		mac := fmt.Sprintf("52:54:00:00:60:0%d", i)
		m := newFileDisks(t, mac, contract.Disk{Name: "vda", SizeBytes: 1 << 30, Serial: "V" + mac})
		id := createTask(t, sys.control.URL(), mac)
		dones, disks, ids = append(dones, runAgent(m.agentConfig(sys.regions["dc1"].URL()))), append(disks, m), append(ids, id)
	}
	for _, id := range ids {
		sys.etcd.WaitValue(t, "/os/install/task/dc1/"+id+"/status", "pending_approval", 30*time.Second)
	}
	for _, id := range ids { // back to back: the second stream asks while the first runs
		approve(t, sys.control.URL(), id)
	}
	for i, done := range dones {
		if err := waitAgent(t, done, 60*time.Second); err != nil {
			t.Fatalf("agent %d: %v", i, err)
		}
		if w := disks[i].written(t); len(w) != 1 {
			t.Fatalf("agent %d wrote %v", i, w)
		}
	}
	m := metricstest.Scrape(t, sys.regions["dc1"].URL()+"/metrics", "")
	if full := m.Value("lpmos_appliance_http_requests_total", "route", "GET /images/", "code", "503"); full < 1 {
		t.Fatalf("no stream was told to wait (503s: %v)", full)
	}
}
