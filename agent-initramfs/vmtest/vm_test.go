package vmtest

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/contract"
)

// The VM's facts as QEMU is told them; the report must carry exactly these.
const (
	vmMAC     = "52:54:00:12:34:56"
	vmCPUs    = 2
	diskBytes = 96<<20 + 4096 // an odd size no other device has
)

// TestBootReports boots the initramfs and checks that the agent loaded its drivers,
// brought up the NIC named by BOOTIF and reported the VM's real hardware, under BIOS
// (i440fx: PIIX IDE) and UEFI (q35: AHCI, efivarfs).
func TestBootReports(t *testing.T) {
	images := BuildImages(t)
	t.Run("bios", func(t *testing.T) { testBootReports(t, images, false) })
	t.Run("uefi", func(t *testing.T) { testBootReports(t, images, true) })
}

func testBootReports(t *testing.T, images Images, uefi bool) {

	reports := make(chan contract.ReportRequest, 1)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/api/report":
			var rep contract.ReportRequest
			body, _ := io.ReadAll(r.Body)
			if err := json.Unmarshal(body, &rep); err != nil {
				t.Errorf("report body %q: %v", body, err)
			}
			select {
			case reports <- rep:
			default:
			}
			json.NewEncoder(w).Encode(contract.Response{Status: "ok", TaskID: "vmtest"})
		default: // approval polls: not yet
			json.NewEncoder(w).Encode(contract.ApprovalResponse{Status: "ok", TaskID: "vmtest", TaskStatus: "pending_approval"})
		}
	}))
	// Loopback only: user-mode networking maps the guest's 10.0.2.2 to it.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	port := l.Addr().(*net.TCPAddr).Port

	disk := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(disk, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, diskBytes); err != nil {
		t.Fatal(err)
	}

	vm := Start(t, Config{
		Images: images,
		Append: "lpmos.url=http://" + HostAddr + ":" + strconv.Itoa(port) + " lpmos.task=vmtest BOOTIF=01-" + strings.ReplaceAll(vmMAC, ":", "-"),
		MAC:    vmMAC,
		SMP:    vmCPUs,
		Disks:  []string{disk},
		UEFI:   uefi,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	var rep contract.ReportRequest
	select {
	case rep = <-reports:
	case <-vm.Done():
		t.Fatalf("QEMU exited before the report: %v\n%s", vm.Err(), vm.Log())
	case <-ctx.Done():
		t.Fatalf("no report within 3 minutes")
	}
	t.Logf("boot to report: %v", time.Since(vm.Started).Round(100*time.Millisecond))

	if rep.MACAddress != vmMAC {
		t.Errorf("mac_address = %q, want %q (QEMU's mac=)", rep.MACAddress, vmMAC)
	}
	var hw contract.Hardware
	if err := json.Unmarshal(rep.Hardware, &hw); err != nil {
		t.Fatalf("hardware %s: %v", rep.Hardware, err)
	}
	wantFW, wantDrivers := "bios", []string{"ata_piix"}
	if uefi {
		wantFW, wantDrivers = "uefi", []string{"ahci", "efivarfs"}
	}
	if hw.Firmware != wantFW {
		t.Errorf("firmware = %q, want %q", hw.Firmware, wantFW)
	}
	if hw.CPU.Threads != vmCPUs {
		t.Errorf("cpu threads = %d, want %d (-smp); cpu = %+v", hw.CPU.Threads, vmCPUs, hw.CPU)
	}
	var found bool
	for _, d := range hw.Disks {
		found = found || d.SizeBytes == diskBytes
	}
	if !found {
		t.Errorf("no disk of %d bytes in %+v", diskBytes, hw.Disks)
	}
	for _, m := range hw.MissingDrivers {
		if m.Vendor == "1af4" { // virtio: every one of them has a shipped driver
			t.Errorf("virtio device without a driver: %+v", m)
		}
	}
	console := vm.SerialTail(400)
	for _, want := range append([]string{"drivers loaded", "virtio_net", "virtio_blk", "virtio_rng", "DHCP lease"}, wantDrivers...) {
		if !strings.Contains(console, want) {
			t.Errorf("console lacks %q", want)
		}
	}
	for _, bad := range []string{"efivarfs not mounted", "module not loaded", "driver failed"} {
		if strings.Contains(console, bad) {
			t.Errorf("console has %q", bad)
		}
	}
	t.Logf("hardware: %s", rep.Hardware)
}

// TestBootFatalReboots boots without lpmos.url: the agent must say why on the console
// and reboot after lpmos.reboot_delay (QEMU's -no-reboot turns that into an exit),
// never fall back to init's shell.
func TestBootFatalReboots(t *testing.T) {
	images := BuildImages(t)
	vm := Start(t, Config{Images: images, Append: "lpmos.reboot_delay=1", MAC: vmMAC})
	select {
	case <-vm.Done():
	case <-time.After(3 * time.Minute):
		t.Fatal("the VM did not reboot within 3 minutes")
	}
	t.Logf("boot to reboot: %v", time.Since(vm.Started).Round(100*time.Millisecond))
	console := vm.SerialTail(200)
	for _, want := range []string{"LPMOS agent stopped: lpmos.url= missing", "rebooting in 1s", "reboot: Restarting system"} {
		if !strings.Contains(console, want) {
			t.Errorf("console lacks %q", want)
		}
	}
}
