package appliance_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"lpmos.dev/lpmos/store/storetest"
)

// buildBinary compiles a command of this module into a temp dir (the real binary, as
// an operator runs it).
func buildBinary(t *testing.T, pkg string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = ".."
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}

// The region is online while its appliance runs, offline right after a clean stop,
// and offline within the heartbeat TTL after the appliance is killed.
func TestHeartbeatWithRealProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the appliance binary")
	}
	e := storetest.Start(t)
	bin := buildBinary(t, "./appliance/cmd/lpmos-appliance")
	start := func() *exec.Cmd {
		cmd := exec.Command(bin, "--api-port=0", "--api-host=127.0.0.1", "--heartbeat-ttl=2s", "--tftp-addr=", "--images-dir="+t.TempDir())
		cmd.Env = append(os.Environ(), "REGION_LABEL=dc7", "ETCD_ENDPOINTS="+strings.Join(e.Endpoints, ","))
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		e.WaitValue(t, "/os/region/dc7/status", "online", 30*time.Second)
		if _, ok := e.Get(t, "/os/region/dc7/heartbeat"); !ok {
			t.Fatal("online without a heartbeat")
		}
		return cmd
	}
	cmd := start()
	if r, err := e.Store.GetRegion(t.Context(), "dc7"); err != nil || !r.Online {
		t.Fatalf("running appliance: %+v %v", r, err)
	}
	// Clean stop: offline at once (status written, lease revoked).
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("clean stop exited with %v", err)
	}
	if v, _ := e.Get(t, "/os/region/dc7/status"); v != "offline" {
		t.Fatalf("status after clean stop = %q", v)
	}
	if _, ok := e.Get(t, "/os/region/dc7/heartbeat"); ok {
		t.Fatal("heartbeat survives a clean stop")
	}
	// Kill: nobody writes offline, but the lease expires within the TTL.
	cmd = start()
	killed := time.Now()
	cmd.Process.Kill()
	cmd.Wait()
	e.WaitGone(t, "/os/region/dc7/heartbeat", 10*time.Second)
	t.Logf("heartbeat gone %s after kill (TTL 2s)", time.Since(killed).Round(100*time.Millisecond))
	if r, err := e.Store.GetRegion(t.Context(), "dc7"); err != nil || r.Online || r.Status != "offline" {
		t.Fatalf("killed appliance: %+v %v", r, err)
	}
}
