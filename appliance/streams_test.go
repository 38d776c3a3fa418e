package appliance_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"lpmos.dev/lpmos/appliance"
	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/images"
	"lpmos.dev/lpmos/internal/metrics/metricstest"
	"lpmos.dev/lpmos/store/storetest"
)

// Image streams (GET /images/) against hostile clients: only an approved task's agent
// gets one, one address holds at most --max-streams-per-source, a client reading below
// --min-stream-rate is cut and its slot freed, and a real agent's stream completes
// through it all.

// approvedStream creates, reports and approves a task for mac and returns its agent
// token and the image the approval hands out.
func approvedStream(t *testing.T, sys *system, mac string) (string, contract.Image) {
	t.Helper()
	ctl, dc1 := sys.control.URL(), sys.regions["dc1"].URL()
	id := createTask(t, ctl, mac)
	tok, _ := reportHW(t, dc1, mac)["agent_token"].(string)
	approve(t, ctl, id)
	code, body := callAuth(t, "GET", dc1+"/api/approval/"+mac, tok, nil)
	var ap contract.ApprovalResponse
	b, _ := json.Marshal(body)
	if err := json.Unmarshal(b, &ap); code != 200 || err != nil || ap.Image == nil || tok == "" {
		t.Fatalf("approval of %s: %d %v", mac, code, body)
	}
	if !strings.HasSuffix(ap.Image.URL, "?task="+id) {
		t.Fatalf("image url %q does not name task %s", ap.Image.URL, id)
	}
	return tok, *ap.Image
}

// stalled is a client that sent its GET and then reads nothing: it holds its stream.
type stalled struct {
	code   int
	header http.Header
	body   map[string]any // the JSON answer of a refusal
	conn   net.Conn
	rest   *bufio.Reader // the body of a 200, limited to its Content-Length
}

// openStalled GETs u with tok from the local address src, reads the answer's head (and
// a refusal's body) and nothing more. Its receive buffer is small, so the appliance's
// writes block soon, as with a client that stopped reading.
func openStalled(t *testing.T, src, u, tok string) stalled {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second,
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
			return serr
		}}
	pu, _ := url.Parse(u)
	conn, err := d.Dial("tcp", pu.Host)
	if err != nil {
		t.Fatalf("dial from %s: %v", src, err)
	}
	t.Cleanup(func() { conn.Close() })
	req := "GET " + pu.RequestURI() + " HTTP/1.1\r\nHost: " + pu.Host + "\r\n"
	if tok != "" {
		req += "Authorization: Bearer " + tok + "\r\n"
	}
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(conn, req+"\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReaderSize(conn, 4096), nil)
	if err != nil {
		t.Fatalf("GET %s from %s: %v", u, src, err)
	}
	s := stalled{code: resp.StatusCode, header: resp.Header, conn: conn, rest: bufio.NewReader(resp.Body)}
	if resp.StatusCode != http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&s.body); err != nil {
			t.Fatalf("GET %s from %s: %d, body not JSON: %v", u, src, resp.StatusCode, err)
		}
	}
	return s
}

// openMany opens n stalled streams at once, from src(i).
func openMany(t *testing.T, n int, src func(i int) string, u, tok string) []stalled {
	t.Helper()
	out := make([]stalled, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { out[i] = openStalled(t, src(i), u, tok) })
	}
	wg.Wait()
	return out
}

// byCode counts the answers by status, and checks every refusal says when to retry
// and why.
func byCode(t *testing.T, ss []stalled) map[int]int {
	t.Helper()
	n := map[int]int{}
	for _, s := range ss {
		n[s.code]++
		if s.code == http.StatusTooManyRequests || s.code == http.StatusServiceUnavailable {
			if s.header.Get("Retry-After") != "1" || s.body["retry_after"] != 1.0 || s.body["message"] == "" {
				t.Errorf("%d without Retry-After 1 and a message: %v %v", s.code, s.header, s.body)
			}
		}
	}
	return n
}

// agentWrite streams img as the agent does (images.Write, its token, waiting out 429
// and 503 as told) into a file, within a deadline.
func agentWrite(t *testing.T, img contract.Image, tok string, within time.Duration) (images.Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	dst, err := images.OpenTarget(filepath.Join(t.TempDir(), "disk"), images.TargetOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	src := images.Source{URL: img.URL, Format: images.Format(img.Format), Size: img.Size, SHA256: img.SHA256}
	return images.Write(ctx, src, dst, images.Options{Header: http.Header{"Authorization": {"Bearer " + tok}}, Logger: quietLog(),
		Retry: images.Retry{Backoff: func(int) time.Duration { return 0 }}})
}

// waitStreams scrapes until no image stream runs and want streams were cut as too
// slow, within a deadline: the slots are free again.
func waitStreams(t *testing.T, base string, cut float64, within time.Duration) metricstest.Families {
	t.Helper()
	return waitMetrics(t, base, within, fmt.Sprintf("0 streams active and %v cut", cut), func(m metricstest.Families) bool {
		return m.Value("lpmos_image_streams_active") == 0 && m.Value("lpmos_image_stream_refusals_total", "reason", "too_slow") == cut
	})
}

// waitMetrics scrapes until ok, within a deadline.
func waitMetrics(t *testing.T, base string, within time.Duration, what string, ok func(metricstest.Families) bool) metricstest.Families {
	t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		m := metricstest.Scrape(t, base+"/metrics", "")
		if ok(m) {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("not %s after %s: active %v, cut %v", what, within, m.Value("lpmos_image_streams_active"),
				m.Value("lpmos_image_stream_refusals_total", "reason", "too_slow"))
		}
		<-tick.C
	}
}

// streamSystem is an appliance with the stream limits at their defaults but a 1 MiB/s
// floor over a 1 s window (tests end in seconds), and a 16 MiB ubuntu 22.04 image
// unless adjust adds one.
func streamSystem(t *testing.T, adjust func(*appliance.Config)) *system {
	return startSystemWith(t, func(c *appliance.Config) {
		c.RetryAfter, c.MaxStreams, c.MaxStreamsPerSource = 1, 64, 4
		c.MinStreamRate, c.MinStreamWindow = 1<<20, time.Second
		if adjust != nil {
			adjust(c)
		}
		if _, err := os.Stat(filepath.Join(c.ImagesDir, "ubuntu-22.04.img")); err != nil {
			addImageSized(t, c.ImagesDir, "ubuntu", "22.04", 16<<20)
		}
	}, "dc1")
}

// Without the token of an approved task naming this image, nothing streams: no token,
// a wrong one, another task's, a task not approved, another image. Each is a clear
// 4xx, etcd is unchanged (bar the rate-limited audit of bad tokens), no slot is taken;
// boot files stay anonymous (firmware cannot authenticate).
func TestImageStreamsNeedTheAgentToken(t *testing.T) {
	kernel := filepath.Join(t.TempDir(), "vmlinuz")
	os.WriteFile(kernel, []byte("KERNEL"), 0o644)
	sys := streamSystem(t, func(c *appliance.Config) {
		addImageSized(t, c.ImagesDir, "debian", "12", 1<<20)
		c.Boot = appliance.BootConfig{BootServerIP: "127.0.0.1", DHCPMode: "off", Kernel: kernel}
	})
	dc1 := sys.regions["dc1"].URL()
	tokA, imgA := approvedStream(t, sys, "52:54:00:00:80:01")
	tokB, imgB := approvedStream(t, sys, "52:54:00:00:80:02")
	pendingID := createTask(t, sys.control.URL(), "52:54:00:00:80:03")
	tokPending, _ := reportHW(t, dc1, "52:54:00:00:80:03")["agent_token"].(string)
	bare, _, _ := strings.Cut(imgA.URL, "?")
	debian := strings.Replace(imgA.URL, "ubuntu-22.04.img", "debian-12.img", 1)

	before, _ := state(t, sys)
	for _, c := range []struct {
		name, url, tok string
		code           int
		says           string
	}{
		{"no token", imgA.URL, "", 401, "agent token required"},
		{"no task", bare, tokA, 401, "agent token required"},
		{"wrong token", imgA.URL, strings.Repeat("0", 64), 401, "agent token missing or invalid"},
		{"another task's token", imgA.URL, tokB, 401, "agent token missing or invalid"},
		{"a token for another task id", imgB.URL, tokA, 401, "agent token missing or invalid"},
		{"no such task", bare + "?task=00000000-0000-4000-8000-000000000000", tokA, 401, "agent token missing or invalid"},
		{"not approved", bare + "?task=" + pendingID, tokPending, 403, "pending_approval"},
		{"another image", debian, tokA, 403, "not debian-12.img"},
	} {
		s := openStalled(t, "127.0.0.1", c.url, c.tok)
		if msg, _ := s.body["message"].(string); s.code != c.code || !strings.Contains(msg, c.says) {
			t.Errorf("%s: %d %v, want %d saying %q", c.name, s.code, s.body, c.code, c.says)
		}
		s.conn.Close()
	}
	// A flood without tokens from many addresses: every one refused, no slot taken.
	flood := openMany(t, 70, func(i int) string { return fmt.Sprintf("127.0.1.%d", i+1) }, imgA.URL, "")
	if n := byCode(t, flood); n[401] != 70 {
		t.Fatalf("tokenless flood: %v, want 70 x 401", n)
	}
	after, audit := state(t, sys)
	storetest.AssertSame(t, before, after)
	if !hasAction(audit, "agent_token.reject") {
		t.Errorf("no agent_token.reject audited")
	}
	m := metricstest.Scrape(t, dc1+"/metrics", "")
	if got := m.Value("lpmos_image_streams_active"); got != 0 {
		t.Errorf("%v streams active after refusals only", got)
	}
	if got := m.Value("lpmos_image_stream_refusals_total", "reason", "token"); got != 78 {
		t.Errorf("token refusals counted: %v, want 78", got)
	}

	// The task's agent gets its image; the kernel needs nothing.
	if res, err := agentWrite(t, imgA, tokA, 30*time.Second); err != nil || res.SHA256 != imgA.SHA256 {
		t.Fatalf("the agent's stream: %+v %v", res, err)
	}
	if code, body := getText(t, dc1+"/boot/files/vmlinuz"); code != 200 || body != "KERNEL" {
		t.Fatalf("kernel without a token: %d %q", code, body)
	}
}

// 70 clients from one address that stop reading: 4 streams (--max-streams-per-source),
// 66 x 429 with Retry-After; another agent streams meanwhile; the 4 are cut within
// --min-stream-window and their slots free (the address streams again); the appliance
// keeps answering.
func TestImageStreamFloodFromOneSource(t *testing.T) {
	sys := streamSystem(t, nil)
	dc1 := sys.regions["dc1"].URL()
	tokA, imgA := approvedStream(t, sys, "52:54:00:00:81:01")
	tokB, imgB := approvedStream(t, sys, "52:54:00:00:81:02")

	start := time.Now()
	flood := openMany(t, 70, func(int) string { return "127.0.0.1" }, imgA.URL, tokA)
	if n := byCode(t, flood); n[200] != 4 || n[429] != 66 {
		t.Fatalf("70 streams from one address: %v, want 4 x 200 and 66 x 429", n)
	}
	if res, err := agentWrite(t, imgB, tokB, 30*time.Second); err != nil || res.SHA256 != imgB.SHA256 {
		t.Fatalf("the other agent's stream during the flood: %+v %v", res, err)
	}
	waitStreams(t, dc1, 4, 20*time.Second)
	t.Logf("4 stalled streams cut and freed %.1f s after they opened (window 1 s)", time.Since(start).Seconds())
	if code, h := call(t, "GET", dc1+"/api/health", nil); code != 200 || h["status"] != "ok" {
		t.Fatalf("health after the flood: %d %v", code, h)
	}
	// The address's slots are free again: its agent streams.
	if res, err := agentWrite(t, imgA, tokA, 30*time.Second); err != nil || res.SHA256 != imgA.SHA256 {
		t.Fatalf("the flooding address's own stream afterwards: %+v %v", res, err)
	}
	if !strings.Contains(sys.logs["dc1"].String(), "image stream cut") {
		t.Errorf("no cut logged")
	}
}

// 70 stalled clients from 70 addresses (one stolen token): 64 streams (--max-streams),
// 6 x 503 with Retry-After. A real agent is told to wait, waits, and streams once the
// stalled ones are cut (a 3 s window: the agent asks while they hold every slot) and
// their slots freed.
func TestImageStreamFloodFromManySources(t *testing.T) {
	sys := streamSystem(t, func(c *appliance.Config) { c.MinStreamWindow = 3 * time.Second })
	dc1 := sys.regions["dc1"].URL()
	tokA, imgA := approvedStream(t, sys, "52:54:00:00:82:01")
	tokB, imgB := approvedStream(t, sys, "52:54:00:00:82:02")

	flood := openMany(t, 70, func(i int) string { return fmt.Sprintf("127.0.2.%d", i+1) }, imgA.URL, tokA)
	if n := byCode(t, flood); n[200] != 64 || n[503] != 6 {
		t.Fatalf("70 streams from 70 addresses: %v, want 64 x 200 and 6 x 503", n)
	}
	res, err := agentWrite(t, imgB, tokB, 60*time.Second)
	if err != nil || res.SHA256 != imgB.SHA256 {
		t.Fatalf("the agent's stream after the flood: %+v %v", res, err)
	}
	m := waitStreams(t, dc1, 64, 20*time.Second)
	if full := m.Value("lpmos_image_stream_refusals_total", "reason", "full"); full < 7 {
		t.Errorf("503s counted: %v, want the flood's 6 and at least one for the agent", full)
	}
	if code, h := call(t, "GET", dc1+"/api/health", nil); code != 200 || h["status"] != "ok" {
		t.Fatalf("health after the flood: %d %v", code, h)
	}
}

// Two clients that read at a steady pace, with small receive buffers so the appliance
// waits on them once the kernel's buffers are full (a few MiB): one at four times the
// floor (4 MiB/s) gets the whole 16 MiB image, one at half of it (512 KiB/s) is cut
// within window/(1 - 1/2) = 2 s of its buffers filling, and its slot freed.
func TestImageStreamFloorCutsOnlyTheSlow(t *testing.T) {
	sys := streamSystem(t, nil)
	tok, img := approvedStream(t, sys, "52:54:00:00:83:01")
	type result struct {
		n    int64
		took time.Duration
		err  error
	}
	read := func(src string, rate float64) chan result {
		body := openPaced(t, src, img.URL, tok)
		done := make(chan result, 1)
		go func() {
			start := time.Now()
			n, err := readPaced(body, rate)
			done <- result{n, time.Since(start), err}
		}()
		return done
	}
	began := time.Now()
	fast, slow := read("127.0.0.1", 4<<20), read("127.0.0.2", 512<<10)
	// The slow one is cut (its client may still be draining what the kernel holds).
	waitMetrics(t, sys.regions["dc1"].URL(), 15*time.Second, "1 cut", func(m metricstest.Families) bool {
		return m.Value("lpmos_image_stream_refusals_total", "reason", "too_slow") == 1
	})
	cutAfter := time.Since(began)
	select {
	case r := <-fast:
		if r.n != img.Size || r.err != nil {
			t.Fatalf("the 4 MiB/s client: %d of %d bytes in %s, %v", r.n, img.Size, r.took, r.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the 4 MiB/s client still reads after 30 s")
	}
	waitStreams(t, sys.regions["dc1"].URL(), 1, 15*time.Second)
	t.Logf("512 KiB/s: cut %s after it opened; 4 MiB/s: 16 MiB in %s", cutAfter.Round(10*time.Millisecond), time.Since(began).Round(10*time.Millisecond))
	select {
	case r := <-slow:
		if r.n == img.Size {
			t.Fatalf("the 512 KiB/s client got the whole image")
		}
	default:
	}
}

// openPaced is openStalled for a client that will read its answer's body.
func openPaced(t *testing.T, src, u, tok string) *bufio.Reader {
	t.Helper()
	s := openStalled(t, src, u, tok)
	if s.code != http.StatusOK {
		t.Errorf("GET from %s: %d %v", src, s.code, s.body)
	}
	return s.rest
}

// readPaced reads r to its end at rate bytes per second: this is the client under
// test, not a synchronisation.
func readPaced(r io.Reader, rate float64) (int64, error) {
	start, n := time.Now(), int64(0)
	buf := make([]byte, 16<<10)
	for {
		m, err := r.Read(buf)
		n += int64(m)
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		time.Sleep(time.Until(start.Add(time.Duration(float64(n) / rate * float64(time.Second)))))
	}
}
