// Package storm is a boot-storm simulator: N machines, each with its own MAC and its
// own source address, boot against one real appliance at once (proxy-DHCP, TFTP, the
// HTTP boot path, report, approval, progress, the image stream, completion) while an
// operator script creates their tasks and approves each plan by its digest through the
// control plane's API. It reports per-stage latency, errors by kind, machines finished
// and the appliance's CPU time and peak RSS.
//
// Addresses: all of 127.0.0.0/8 is local on Linux, so machine i binds its TCP and UDP
// sockets to Config.SourceBase + i + 1 (127.1.0.1, 127.1.0.2, ...) and the appliance
// sees N sources, as on a boot network: no namespace, no root (but DHCP's port 4011).
package storm

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"lpmos.dev/lpmos/contract"
)

// Config says which appliance and control plane to storm, and how.
type Config struct {
	ApplianceURL string // regional API and HTTP boot, http://127.0.0.1:8081
	ControlURL   string // the control plane, http://127.0.0.1:8080
	ControlToken string // an operator's (or admin's) API token
	Region       string
	OSType       string
	OSVersion    string
	Machines     int
	// UnknownEvery makes every k-th machine one without a task (it ends as an
	// unmatched report); 0: every machine has a task.
	UnknownEvery int
	SourceBase   netip.Addr    // machine i binds SourceBase+i+1; zero: 127.1.0.0
	DHCPAddr     string        // the appliance's proxy-DHCP port (127.0.0.1:4011); "": no DHCP stage
	TFTPAddr     string        // the appliance's TFTP address; "": no TFTP stage
	Ramp         time.Duration // machines start spread over this; 0: all at once
	Approvers    int           // operator workers creating and approving tasks; 0: 4
	AppliancePID int           // for its CPU seconds and peak RSS; 0: not measured
	Log          io.Writer     // the first failures; nil: none
}

// The stages, in order, as they appear in the report.
var Stages = []string{"dhcp", "tftp", "boot_http", "report", "approval", "progress", "image", "completed", "total", "approve_api"}

type machine struct {
	i      int
	mac    net.HardwareAddr
	src    netip.Addr
	known  bool
	taskID string
	http   *http.Client
	api    *contract.Client
}

type storm struct {
	cfg     Config
	res     *Result
	control *http.Client
	approve chan string // task ids reported, for the operator
	logged  int
}

// MAC is machine i's MAC address (locally administered).
func MAC(i int) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0x53, 0x54, byte(i >> 16), byte(i >> 8), byte(i)}
}

// Known says whether machine i gets a task.
func (c Config) Known(i int) bool { return c.UnknownEvery <= 0 || i%c.UnknownEvery != c.UnknownEvery-1 }

// Run plays the storm until every machine finished or failed, or ctx ends.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if !cfg.SourceBase.IsValid() {
		cfg.SourceBase = netip.MustParseAddr("127.1.0.0")
	}
	if cfg.Approvers <= 0 {
		cfg.Approvers = 4
	}
	s := &storm{cfg: cfg, res: newResult(cfg.Machines), approve: make(chan string, cfg.Machines),
		control: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: cfg.Approvers}}}
	ms := make([]*machine, cfg.Machines)
	base := cfg.SourceBase.As4()
	b := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	for i := range ms {
		a := b + uint32(i) + 1
		m := &machine{i: i, mac: MAC(i), src: netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}), known: cfg.Known(i)}
		dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: m.src.AsSlice()}, Timeout: 5 * time.Second}
		m.http = &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext, MaxIdleConnsPerHost: 2, IdleConnTimeout: 30 * time.Second}}
		m.api = &contract.Client{BaseURL: cfg.ApplianceURL, HTTP: m.http}
		ms[i] = m
	}
	if err := s.createTasks(ctx, ms); err != nil {
		return s.res, err
	}
	var ops sync.WaitGroup
	for range cfg.Approvers {
		ops.Go(func() {
			for id := range s.approve {
				s.approveTask(ctx, id)
			}
		})
	}
	cpu0, _ := procCPU(cfg.AppliancePID)
	start := time.Now()
	var wg sync.WaitGroup
	for _, m := range ms {
		wg.Go(func() {
			if cfg.Ramp > 0 && !wait(ctx, time.Duration(m.i)*cfg.Ramp/time.Duration(cfg.Machines)) {
				return
			}
			defer m.http.CloseIdleConnections()
			if err := s.machine(ctx, m); err != nil {
				s.fail(m, err)
				return
			}
			s.res.finish()
		})
	}
	wg.Wait()
	close(s.approve)
	ops.Wait()
	s.res.Wall = time.Since(start)
	if cfg.AppliancePID > 0 {
		cpu1, err := procCPU(cfg.AppliancePID)
		if err == nil {
			s.res.CPUSeconds = cpu1 - cpu0
		}
		s.res.PeakRSSMB, _ = procPeakRSSMB(cfg.AppliancePID)
	}
	return s.res, nil
}

func (s *storm) fail(m *machine, err error) {
	s.res.mu.Lock()
	defer s.res.mu.Unlock()
	s.res.Failed++
	if s.cfg.Log != nil && s.logged < 10 {
		s.logged++
		fmt.Fprintf(s.cfg.Log, "storm: machine %d (%s from %s) failed: %v\n", m.i, m.mac, m.src, err)
	}
}

// wait waits d, false when ctx ended first.
func wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// permanent marks an error that retrying cannot cure (a wrong checksum, a 4xx).
type permanent struct{ error }

// try runs op until it succeeds, retrying transient errors: 429 and 503 after their
// retry_after (the appliance's rate limits and an unavailable store), other 5xx,
// connection errors, timeouts and refused TFTP transfers after a short backoff. Every
// failed attempt is counted under stage:kind.
func (s *storm) try(ctx context.Context, stage string, op func(context.Context) error) error {
	const attempts = 12
	for n := 1; ; n++ {
		err := op(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w (storm deadline)", stage, err)
		}
		kind, after, retry := classify(err)
		s.res.countError(stage + ":" + kind)
		if !retry || n == attempts {
			return fmt.Errorf("%s: %w", stage, err)
		}
		if after <= 0 {
			after = time.Duration(n) * 200 * time.Millisecond
		}
		if !wait(ctx, after) {
			return fmt.Errorf("%s: %w (storm deadline)", stage, err)
		}
	}
}

func classify(err error) (kind string, after time.Duration, retry bool) {
	var se *contract.StatusError
	var te *tftpError
	var ne net.Error
	switch {
	case errors.As(err, &se):
		after = time.Duration(se.Body.RetryAfter) * time.Second
		if se.Code == 429 || se.Code == 503 {
			if after <= 0 {
				after = time.Second
			}
			return strconv.Itoa(se.Code), min(after, 30*time.Second), true
		}
		return strconv.Itoa(se.Code), 0, se.Code >= 500
	case errors.As(err, &te) && strings.Contains(te.msg, "busy"):
		return "tftp_busy", 500 * time.Millisecond, true // over the server's transfer caps: firmware retries too
	case errors.As(err, &te):
		return "tftp_error", 500 * time.Millisecond, true
	case errors.Is(err, errRetransmits):
		return "no_answer", 0, true
	case errors.As(err, &permanent{}):
		return "bad_answer", 0, false
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout", 0, true
	default:
		return "net", 0, true
	}
}

// timed runs a stage and records its duration when it succeeds.
func (s *storm) timed(stage string, f func() error) error {
	t := time.Now()
	if err := f(); err != nil {
		return err
	}
	s.res.record(stage, time.Since(t))
	return nil
}

func callCtx(ctx context.Context, d time.Duration, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return f(ctx)
}

// machine boots one machine through every stage.
func (s *storm) machine(ctx context.Context, m *machine) error {
	t0 := time.Now()
	hyph := strings.ReplaceAll(m.mac.String(), ":", "-")
	script := s.cfg.ApplianceURL + "/boot/" + hyph + ".ipxe?arch=i386&platform=pcbios"
	first := "undionly.kpxe"
	if s.cfg.DHCPAddr != "" {
		err := s.timed("dhcp", func() error {
			return s.try(ctx, "dhcp", func(ctx context.Context) error {
				f, err := dhcpAsk(ctx, m.src, s.cfg.DHCPAddr, m.mac, false)
				if err != nil {
					return err
				}
				if f != first {
					return permanent{fmt.Errorf("firmware boot file %q, want %q", f, first)}
				}
				u, err := dhcpAsk(ctx, m.src, s.cfg.DHCPAddr, m.mac, true)
				if err != nil {
					return err
				}
				if !strings.Contains(u, "/boot/"+hyph+".ipxe") {
					return permanent{fmt.Errorf("iPXE boot file %q names another script", u)}
				}
				script = strings.NewReplacer("${buildarch:uristring}", "i386", "${platform:uristring}", "pcbios").Replace(u)
				return nil
			})
		})
		if err != nil {
			return err
		}
	}
	if s.cfg.TFTPAddr != "" {
		err := s.timed("tftp", func() error {
			return s.try(ctx, "tftp", func(ctx context.Context) error {
				return callCtx(ctx, 60*time.Second, func(ctx context.Context) error {
					n, err := tftpGet(ctx, m.src, s.cfg.TFTPAddr, first, 1456)
					s.res.addBytes("tftp", n)
					return err
				})
			})
		})
		if err != nil {
			return err
		}
	}
	if err := s.timed("boot_http", func() error { return s.bootHTTP(ctx, m, script) }); err != nil {
		return err
	}
	hw, _ := json.Marshal(hardware(m))
	var rep contract.Response
	err := s.timed("report", func() error {
		return s.try(ctx, "report", func(ctx context.Context) error {
			return callCtx(ctx, 15*time.Second, func(ctx context.Context) error {
				var err error
				rep, err = m.api.Report(ctx, contract.ReportRequest{MACAddress: m.mac.String(), Hardware: hw})
				var se *contract.StatusError
				if !m.known && errors.As(err, &se) && se.Code == 404 {
					if se.Body.RetryAfter <= 0 {
						return permanent{fmt.Errorf("404 without retry_after: %v", err)}
					}
					return nil // an unmatched report: what an unknown machine gets
				}
				if err == nil && !m.known {
					return permanent{fmt.Errorf("a machine without a task matched task %s", rep.TaskID)}
				}
				if err == nil && (rep.TaskID != m.taskID || rep.AgentToken == "") {
					return permanent{fmt.Errorf("report answered task %q token %t, want task %s and a token", rep.TaskID, rep.AgentToken != "", m.taskID)}
				}
				return err
			})
		})
	})
	if err != nil || !m.known {
		if err == nil {
			s.res.record("total", time.Since(t0))
		}
		return err
	}
	m.api.Token = rep.AgentToken
	s.approve <- m.taskID // the operator reads the plan and approves it

	var ap contract.ApprovalResponse
	err = s.timed("approval", func() error {
		for {
			err := s.try(ctx, "approval", func(ctx context.Context) error {
				return callCtx(ctx, 30*time.Second, func(ctx context.Context) error {
					var err error
					ap, err = m.api.Approval(ctx, m.mac.String(), 20*time.Second)
					return err
				})
			})
			switch {
			case err != nil:
				return err
			case ap.Approved:
				return nil
			case ap.TaskStatus != "pending_approval":
				return fmt.Errorf("approval: task %s", ap.TaskStatus)
			}
		}
	})
	if err != nil {
		return err
	}
	if ap.Plan == nil || ap.Plan.Image == nil || ap.Image == nil || ap.Image.SHA256 != ap.Plan.Image.SHA256 {
		s.res.countError("approval:bad_answer")
		return fmt.Errorf("approval: no plan or image, or the image is not the plan's: %+v", ap)
	}
	progress := func(ctx context.Context, st contract.Stage, pct float64) error {
		return s.try(ctx, "progress", func(ctx context.Context) error {
			return callCtx(ctx, 15*time.Second, func(ctx context.Context) error {
				return m.api.Progress(ctx, contract.ProgressRequest{MACAddress: m.mac.String(), TaskID: m.taskID,
					Progress: contract.Progress{Stage: st, Percentage: pct, BytesTotal: ap.Image.Size}})
			})
		})
	}
	err = s.timed("progress", func() error {
		if err := progress(ctx, contract.StagePreparing, 0); err != nil {
			return err
		}
		return progress(ctx, contract.StageDownloading, 0)
	})
	if err != nil {
		return err
	}
	if err := s.timed("image", func() error { return s.image(ctx, m, ap) }); err != nil {
		return err
	}
	err = s.timed("completed", func() error {
		for _, st := range []contract.Stage{contract.StageVerifying, contract.StageRebooting, contract.StageCompleted} {
			if err := progress(ctx, st, 100); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		s.res.record("total", time.Since(t0))
	}
	return err
}

// bootHTTP fetches the machine's iPXE script, then the kernel and initramfs it names.
func (s *storm) bootHTTP(ctx context.Context, m *machine, script string) error {
	var body string
	err := s.try(ctx, "boot_http", func(ctx context.Context) error {
		return callCtx(ctx, 15*time.Second, func(ctx context.Context) error {
			b, err := get(ctx, m.http, script, "", io.Discard)
			body = string(b)
			return err
		})
	})
	if err != nil {
		return err
	}
	if want := "lpmos.task=" + m.taskID; m.known && !strings.Contains(body, want) || !m.known && strings.Contains(body, "lpmos.task=") {
		s.res.countError("boot_http:bad_script")
		return fmt.Errorf("boot_http: the script of %s names the wrong task (want %q):\n%s", m.mac, m.taskID, body)
	}
	var files []string
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "kernel" && f[0] != "initrd" {
			continue
		}
		for _, w := range f[1:] {
			if strings.HasPrefix(w, "http://") || strings.HasPrefix(w, "https://") {
				files = append(files, w)
				break
			}
		}
	}
	if len(files) != 2 {
		s.res.countError("boot_http:bad_script")
		return fmt.Errorf("boot_http: the script names %d files, want a kernel and an initramfs:\n%s", len(files), body)
	}
	for _, f := range files {
		err := s.try(ctx, "boot_http", func(ctx context.Context) error {
			return callCtx(ctx, 60*time.Second, func(ctx context.Context) error {
				var n counter
				_, err := get(ctx, m.http, f, "", &n)
				s.res.addBytes("boot_http", int64(n))
				return err
			})
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// image streams the approved image to nowhere and checks its sha256 and size against
// the approved plan.
func (s *storm) image(ctx context.Context, m *machine, ap contract.ApprovalResponse) error {
	u, err := url.Parse(ap.Image.URL)
	if err != nil {
		return err
	}
	base, _ := url.Parse(s.cfg.ApplianceURL)
	u = base.ResolveReference(u)
	return s.try(ctx, "image", func(ctx context.Context) error {
		return callCtx(ctx, 5*time.Minute, func(ctx context.Context) error {
			h, n := sha256.New(), counter(0)
			if _, err := get(ctx, m.http, u.String(), m.api.Token, io.MultiWriter(h, &n)); err != nil {
				return err
			}
			s.res.addBytes("image", int64(n))
			if sum := hex.EncodeToString(h.Sum(nil)); sum != ap.Plan.Image.SHA256 || int64(n) != ap.Plan.Image.Size {
				return permanent{fmt.Errorf("image: %d bytes sha256 %s, the plan says %d bytes %s", n, sum, ap.Plan.Image.Size, ap.Plan.Image.SHA256)}
			}
			return nil
		})
	})
}

type counter int64

func (c *counter) Write(p []byte) (int, error) { *c += counter(len(p)); return len(p), nil }

// get GETs u into w, with the agent token when not "" (images); a small body (the
// script) is also returned. A non-200 answer is a *contract.StatusError, with
// Retry-After as its retry_after.
func get(ctx context.Context, c *http.Client, u, token string, w io.Writer) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, permanent{err}
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		se := &contract.StatusError{Code: resp.StatusCode}
		se.Body.RetryAfter, _ = strconv.Atoi(resp.Header.Get("Retry-After"))
		io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
		return nil, se
	}
	if w == io.Discard {
		return io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	}
	_, err = io.Copy(w, resp.Body)
	return nil, err
}

// hardware is the machine's report: one 480 GB disk, big enough for any test image.
func hardware(m *machine) contract.Hardware {
	serial := fmt.Sprintf("STORM%06d", m.i)
	return contract.Hardware{
		Hostname: fmt.Sprintf("storm-%d", m.i), Firmware: "bios",
		CPU:    contract.CPU{Model: "storm", Sockets: 1, Cores: 4, Threads: 8},
		Memory: contract.Memory{TotalBytes: 16 << 30},
		Disks:  []contract.Disk{{Name: "sda", Path: "/dev/sda", SizeBytes: 480_000_000_000, Model: "STORM-SSD", Serial: serial, Controller: "scsi", StorageType: "ssd"}},
		NICs:   []contract.NIC{{Name: "eth0", MAC: m.mac.String(), Link: true}},
	}
}
