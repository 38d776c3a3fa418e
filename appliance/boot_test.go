package appliance_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/appliance"
	"lpmos.dev/lpmos/netboot"
	"lpmos.dev/lpmos/netboot/dhcpd"
)

func getText(t *testing.T, url string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// What a machine's iPXE script says follows its latest task: open -> the agent with
// the task id; completed -> its local disk; none -> silence unless --boot-unknown.
func TestBootScriptFollowsTask(t *testing.T) {
	dir := t.TempDir()
	kernel, initrd := filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd")
	os.WriteFile(kernel, []byte("KERNEL"), 0o644)
	os.WriteFile(initrd, []byte("0123456789"), 0o644)
	for _, unknown := range []bool{false, true} {
		sys := startSystemWith(t, func(c *appliance.Config) {
			c.Boot = appliance.BootConfig{BootUnknown: unknown, BootServerIP: "127.0.0.1", Kernel: kernel, Initramfs: initrd, KernelArgs: "console=ttyS0"}
			addImage(t, c.ImagesDir, "ubuntu", "22.04")
		}, "dc1")
		base := sys.regions["dc1"].URL()
		code, body := getText(t, base+"/boot/52-54-00-00-00-99.ipxe")
		if unknown {
			if code != 200 || !strings.Contains(body, "lpmos.url=http://127.0.0.1:") || strings.Contains(body, "lpmos.task=") {
				t.Fatalf("unknown machine with --boot-unknown: %d\n%s", code, body)
			}
			continue
		}
		if code != http.StatusNotFound {
			t.Fatalf("unknown machine without --boot-unknown: %d\n%s", code, body)
		}
		_, task := call(t, "POST", sys.control.URL()+"/api/v1/tasks", map[string]string{"region_id": "dc1", "target_mac": "52:54:00:00:00:99", "os_type": "ubuntu", "os_version": "22.04"})
		id := task["task_id"].(string)
		code, body = getText(t, base+"/boot/52-54-00-00-00-99.ipxe")
		if code != 200 || !strings.Contains(body, "lpmos.task="+id) || !strings.Contains(body, "initrd=initramfs.cpio.gz") ||
			!strings.Contains(body, "BOOTIF=01-52-54-00-00-00-99 console=ttyS0") {
			t.Fatalf("machine with a task: %d\n%s", code, body)
		}
		// The files the script names are served, with Range.
		req, _ := http.NewRequest("GET", base+"/boot/files/initramfs.cpio.gz", nil)
		req.Header.Set("Range", "bytes=2-5")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusPartialContent || string(b) != "2345" {
			t.Fatalf("initramfs range: %d %q", resp.StatusCode, b)
		}
		// Complete the task through the regional API: the machine now boots its disk.
		_, rep := call(t, "POST", base+"/api/report", map[string]any{"mac_address": "52:54:00:00:00:99",
			"hardware": map[string]any{"disks": []map[string]any{{"name": "vda", "path": "/dev/vda", "size_bytes": 1 << 30}}}})
		tok := rep["agent_token"].(string)
		// Waiting for approval: the script carries no token.
		if _, body := getText(t, base+"/boot/52-54-00-00-00-99.ipxe"); strings.Contains(body, "lpmos.token=") {
			t.Fatalf("script of a task waiting for approval carries a token:\n%s", body)
		}
		approve(t, sys.control.URL(), id)
		// Approved: the script carries the token the report issued (derived again).
		if _, body := getText(t, base+"/boot/52-54-00-00-00-99.ipxe"); !strings.Contains(body, " lpmos.token="+tok+" ") {
			t.Fatalf("script of an approved task lacks the issued token %s:\n%s", tok, body)
		}
		callAuth(t, "POST", base+"/api/progress", tok, map[string]any{"mac_address": "52:54:00:00:00:99", "task_id": id, "stage": "writing", "percentage": 50})
		if _, body := getText(t, base+"/boot/52-54-00-00-00-99.ipxe"); !strings.Contains(body, " lpmos.token="+tok+" ") {
			t.Fatalf("script of an installing task lacks the token:\n%s", body)
		}
		callAuth(t, "POST", base+"/api/progress", tok, map[string]any{"mac_address": "52:54:00:00:00:99", "task_id": id, "stage": "completed", "percentage": 100})
		code, body = getText(t, base+"/boot/52-54-00-00-00-99.ipxe")
		if code != 200 || !strings.Contains(body, "booting from local disk") || strings.Contains(body, "kernel ") {
			t.Fatalf("completed machine: %d\n%s", code, body)
		}
		// At every stage the plan is the local disk (DHCP turns it into a failing
		// boot file for the firmware).
		mac, _ := net.ParseMAC("52:54:00:00:00:99")
		if plan, err := sys.regions["dc1"].Boot(t.Context(), netboot.Machine{MAC: mac, Stage: netboot.StageFirmware, Firmware: netboot.FirmwareEFI}); plan == nil || !plan.LocalDisk || err != nil {
			t.Fatalf("completed machine at firmware stage: %+v %v", plan, err)
		}
		// The URL an installed machine's UEFI HTTP boot is given fails at once.
		if code, _ := getText(t, base+dhcpd.LocalDiskPath); code != http.StatusNotFound {
			t.Fatalf("local-disk URL: %d", code)
		}
		code, body = getText(t, base+"/boot.ipxe")
		if code != 200 || !strings.Contains(body, "chain --autofree http://127.0.0.1:") {
			t.Fatalf("bootstrap: %d\n%s", code, body)
		}
	}
}
