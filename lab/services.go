package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"lpmos.dev/lpmos/internal/proc"
)

// ApplianceConfig are the appliance's boot files and extra flags.
type ApplianceConfig struct {
	Kernel, Initramfs string
	ImagesDir         string
	Args              []string // extra flags
}

// StartAppliance runs the real appliance binary on its host: proxy-DHCP on the boot
// network beside the site's dnsmasq, TFTP on :69, HTTP boot and the regional API on
// :8081, embedded etcd on its loopback. It returns once the regional API answers.
func (l *Lab) StartAppliance(ctx context.Context, c ApplianceConfig) (*proc.Proc, error) {
	args := []string{filepath.Join(l.cfg.Bin, "lpmos-appliance"),
		"--label=dc1", "--api-port=" + strconv.Itoa(APIPort),
		"--dhcp-mode=proxy", "--dhcp-interface=" + ApplianceIF, "--tftp-addr=:69",
		"--kernel=" + c.Kernel, "--initramfs=" + c.Initramfs, "--images-dir=" + c.ImagesDir,
		"--etcd-data-dir=" + filepath.Join(l.cfg.Dir, "dc1.etcd"),
		"--retry-after=2", "--heartbeat-ttl=6s",
	}
	p, err := l.StartIn(l.AppNS, "appliance", append(args, c.Args...)...)
	if err != nil {
		return nil, err
	}
	if err := l.waitHTTP(ctx, p, fmt.Sprintf("http://127.0.0.1:%d/api/health", APIPort)); err != nil {
		return nil, fmt.Errorf("appliance: %w\n%s", err, p.Log())
	}
	return p, nil
}

// StartControl runs the control plane on the appliance's etcd, after bootstrapping its
// first user (admin: password and API token in <Dir>/admin-password and
// <Dir>/admin-token; API uses the token).
func (l *Lab) StartControl(ctx context.Context, args ...string) (*proc.Proc, error) {
	boot, err := l.StartIn(l.AppNS, "control-bootstrap", filepath.Join(l.cfg.Bin, "lpmos-control"), "bootstrap",
		"--out-dir="+l.cfg.Dir, "--etcd-endpoints="+EtcdEndpoint)
	if err != nil {
		return nil, err
	}
	select {
	case <-boot.Done():
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if err := boot.Err(); err != nil {
		return nil, fmt.Errorf("control bootstrap: %w\n%s", err, boot.Log())
	}
	tok, err := os.ReadFile(filepath.Join(l.cfg.Dir, "admin-token"))
	if err != nil {
		return nil, fmt.Errorf("control bootstrap: %w", err)
	}
	l.mu.Lock()
	l.token = strings.TrimSpace(string(tok))
	l.mu.Unlock()
	p, err := l.StartIn(l.AppNS, "control", append([]string{filepath.Join(l.cfg.Bin, "lpmos-control"),
		"--port=" + strconv.Itoa(ControlPort), "--etcd-endpoints=" + EtcdEndpoint}, args...)...)
	if err != nil {
		return nil, err
	}
	if err := l.waitHTTP(ctx, p, fmt.Sprintf("http://127.0.0.1:%d/login", ControlPort)); err != nil {
		return nil, fmt.Errorf("control: %w\n%s", err, p.Log())
	}
	return p, nil
}

// waitHTTP polls url until it answers 200, p exits, or ctx ends.
func (l *Lab) waitHTTP(ctx context.Context, p *proc.Proc, url string) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	cl := l.HTTPClient()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		if resp, err := cl.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not answer: %w", url, ctx.Err())
		case <-p.Done():
			return fmt.Errorf("exited: %v", p.Err())
		case <-tick.C:
		}
	}
}

// API calls the control plane (as admin) or the regional API inside the namespace.
func (l *Lab) API(ctx context.Context, method, url string, body, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	l.mu.Lock()
	tok := l.token
	l.mu.Unlock()
	if tok != "" && strings.HasPrefix(url, ControlURL()+"/") {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	// A client per call: its idle connection must be closed, or a test that polls
	// fills the control plane's per-source connection cap (64) and gets EOFs.
	c := l.HTTPClient()
	defer c.CloseIdleConnections()
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, err
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: HTTP %d: %s", method, url, resp.StatusCode, data)
		}
	}
	return resp.StatusCode, nil
}

// ControlURL is the control plane's base URL inside the namespace.
func ControlURL() string { return fmt.Sprintf("http://127.0.0.1:%d", ControlPort) }

// RegionalURL is the appliance's base URL inside the namespace.
func RegionalURL() string { return fmt.Sprintf("http://127.0.0.1:%d", APIPort) }
