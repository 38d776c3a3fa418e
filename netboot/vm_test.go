package netboot_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"lpmos.dev/lpmos/netboot"
	"lpmos.dev/lpmos/netboot/dhcpd"
	"lpmos.dev/lpmos/netboot/internal/nettest"
	"lpmos.dev/lpmos/netboot/ipxe"
	"lpmos.dev/lpmos/netboot/tftpd"
)

// lineWriter turns log output into lines on a channel, so the test waits
// on events instead of sleeping.
type lineWriter struct {
	mu    sync.Mutex
	buf   []byte
	lines chan string
	all   strings.Builder
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		l := string(w.buf[:i])
		w.buf = w.buf[i+1:]
		w.all.WriteString(l + "\n")
		select {
		case w.lines <- l:
		default:
		}
	}
}

func kernelPath(t *testing.T) string {
	t.Helper()
	top, _ := filepath.Abs("..")
	ms, _ := filepath.Glob(filepath.Join(top, "build/kernel/current/boot/vmlinuz-*"))
	if len(ms) == 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, filepath.Join(top, "scripts/fetch-kernel.sh")).Output()
		if err != nil {
			t.Skipf("SKIP: no kernel: scripts/fetch-kernel.sh failed: %v", err)
		}
		ms, _ = filepath.Glob(filepath.Join(strings.TrimSpace(string(out)), "boot/vmlinuz-*"))
		if len(ms) == 0 {
			t.Skip("SKIP: scripts/fetch-kernel.sh gave no boot/vmlinuz-*")
		}
	}
	return ms[0]
}

// TestQEMUNetboot boots a VM with QEMU's own iPXE NIC ROM (-boot n) on a
// bridge in a namespace, the per-machine script loads the kernel and initrd
// over HTTP; it ends once both files were served whole.
//   - full: our DHCP gives the address and the script URL;
//   - proxy: dnsmasq, in its own namespace as the site's DHCP server, gives
//     the address, our proxy-DHCP (another namespace) the script URL.
func TestQEMUNetboot(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: VM boot in -short mode")
	}
	nettest.Require(t, "qemu-system-x86_64", "dnsmasq")
	kernel := kernelPath(t)
	for _, mode := range []dhcpd.Mode{dhcpd.ModeFull, dhcpd.ModeProxy} {
		t.Run(string(mode), func(t *testing.T) { qemuNetboot(t, mode, false, kernel) })
	}
	// LAB.md pitfall 5: the TFTP first stage is exercised with UEFI, OVMF's
	// own PXE (NIC ROM removed) fetching ipxe.efi, then iPXE over HTTP.
	t.Run("uefi-pxe-proxy", func(t *testing.T) {
		if _, err := os.Stat(ovmfCode); err != nil {
			t.Skip("SKIP: no OVMF (Debian package ovmf)")
		}
		qemuNetboot(t, dhcpd.ModeProxy, true, kernel)
	})
}

var vmTimeout = 150 * time.Second // LAB.md: 30-60 s per network boot under load

const (
	ovmfCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	ovmfVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

func qemuNetboot(t *testing.T, mode dhcpd.Mode, uefi bool, kernel string) {
	dir := t.TempDir()
	initrd := filepath.Join(dir, "initrd.img")
	blob := make([]byte, 1<<20)
	rand.Read(blob)
	if err := os.WriteFile(initrd, blob, 0o644); err != nil {
		t.Fatal(err)
	}

	// The VM's link: a bridge in the "site" namespace. The appliance sits
	// in its own namespace on a veth into that bridge, as on a real network.
	site, appl := nettest.NS(t, "site"), nettest.NS(t, "appl")
	nettest.Run(t, "ip", "-n", site, "link", "add", "br0", "type", "bridge")
	nettest.Run(t, "ip", "-n", site, "tuntap", "add", "dev", "tap0", "mode", "tap")
	nettest.Run(t, "ip", "-n", site, "link", "set", "tap0", "master", "br0")
	nettest.Run(t, "ip", "-n", site, "link", "set", "tap0", "up")
	nettest.Run(t, "ip", "-n", site, "addr", "add", "10.77.0.2/24", "dev", "br0")
	nettest.Run(t, "ip", "-n", site, "addr", "add", "fd77::1/64", "dev", "br0", "nodad")
	nettest.Run(t, "ip", "-n", site, "link", "set", "br0", "up")
	nettest.Link(t, site, "va", "", appl, "nb0", "10.77.0.1/24")
	nettest.Run(t, "ip", "-n", site, "link", "set", "va", "master", "br0")
	// A router advertisement ends iPXE's ~13 s wait for IPv6 (LAB.md).
	dnsArgs := []string{"dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--interface=br0", "--bind-interfaces",
		"--enable-ra", "--dhcp-range=fd77::,ra-only,64,1h", "--log-facility=-"}
	if mode == dhcpd.ModeProxy {
		// The site's DHCP server: addresses only, no boot file.
		dnsArgs = append(dnsArgs, "--dhcp-range=10.77.0.100,10.77.0.200,255.255.255.0,1h", "--dhcp-leasefile="+filepath.Join(dir, "leases"))
	}
	nettest.Start(t, site, dnsArgs...)

	lw := &lineWriter{lines: make(chan string, 256)}
	log := slog.New(slog.NewTextHandler(lw, &slog.HandlerOptions{Level: slog.LevelInfo}))
	t.Cleanup(func() {
		if t.Failed() || testing.Verbose() {
			t.Logf("server log:\n%s", lw.all.String())
		}
	})
	mac := net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	booter := netboot.BooterFunc(func(ctx context.Context, m netboot.Machine) (*netboot.Plan, error) {
		if !bytes.Equal(m.MAC, mac) {
			return nil, nil
		}
		return &netboot.Plan{Kernel: "vmlinuz", Initrds: []string{"initrd.img"}, RegionalURL: "http://10.77.0.1:8081", TaskID: "vm-task-1", Args: []string{"console=ttyS0"}}, nil
	})

	ctx, cancel := context.WithCancel(context.Background())
	var ln net.Listener
	var conns []net.PacketConn
	var tftpConn net.PacketConn
	if err := nettest.Do(appl, func() (err error) {
		if ln, err = net.Listen("tcp4", "10.77.0.1:0"); err != nil {
			return err
		}
		if tftpConn, err = tftpd.Listen(ctx, ":69"); err != nil {
			return err
		}
		for _, a := range []string{":67", ":4011"} {
			pc, err := dhcpd.Listen(ctx, a, "nb0")
			if err != nil {
				return err
			}
			conns = append(conns, pc)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	h, err := ipxe.NewHandler(ipxe.Config{Booter: booter, Logger: log, Binaries: ipxe.Binaries(),
		Files: map[string]string{"vmlinuz": kernel, "initrd.img": initrd}})
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: h}
	go hs.Serve(ln)
	ts, err := tftpd.New(tftpd.Config{Files: ipxe.Binaries(), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	tftpDone := make(chan error, 1)
	// pin/tftp opens a socket per transfer from the Serve goroutine: run
	// that goroutine inside the appliance namespace so they land there.
	go func() { tftpDone <- nettest.Do(appl, func() error { return ts.Serve(ctx, tftpConn) }) }()
	cfg := dhcpd.Config{Mode: mode, Booter: booter, Logger: log,
		ServerIP: netip.MustParseAddr("10.77.0.1"), HTTPPort: ln.Addr().(*net.TCPAddr).Port,
		Pool:   &dhcpd.Pool{Start: netip.MustParseAddr("10.77.0.100"), End: netip.MustParseAddr("10.77.0.200"), Subnet: netip.MustParsePrefix("10.77.0.0/24"), LeaseTime: time.Hour},
		Leases: &dhcpd.MemLeases{}}
	if mode == dhcpd.ModeProxy {
		cfg.Pool, cfg.Leases = nil, nil
	}
	d, err := dhcpd.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- d.Serve(ctx, conns...) }()
	t.Cleanup(func() {
		cancel()
		hs.Close()
		if err := <-tftpDone; err != nil {
			t.Errorf("TFTP Serve: %v", err)
		}
		if err := <-served; err != nil && !errors.Is(err, net.ErrClosed) {
			t.Errorf("DHCP Serve: %v", err)
		}
	})

	accel := "tcg" // LAB.md: nested KVM here never leaves the decompressor
	if os.Getenv("LPMOS_QEMU_ACCEL") != "" {
		accel = os.Getenv("LPMOS_QEMU_ACCEL")
	}
	serial := filepath.Join(dir, "serial.log")
	args := []string{"qemu-system-x86_64", "-accel", accel, "-m", "512", "-smp", "1", "-nographic", "-no-reboot",
		"-boot", "n", "-serial", "file:" + serial, "-monitor", "none",
		"-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"}
	nic := "virtio-net-pci,netdev=n0,mac=" + mac.String()
	if uefi {
		vars := filepath.Join(dir, "OVMF_VARS.fd")
		b, err := os.ReadFile(ovmfVars)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(vars, b, 0o644)
		args = append(args, "-machine", "q35",
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+ovmfCode,
			"-drive", "if=pflash,format=raw,unit=1,file="+vars)
		nic += ",romfile=" // OVMF's own virtio-net + PXE instead of iPXE's ROM
	}
	if os.Getenv("LPMOS_VM_PCAP") != "" {
		nettest.Start(t, appl, "tcpdump", "-ni", "nb0", "-U", "-w", os.Getenv("LPMOS_VM_PCAP"))
	}
	nettest.Start(t, site, append(args, "-device", nic)...)

	// iPXE expands ipxe.FactsQuery in the DHCP file name: the script
	// request says what iPXE runs on.
	// QEMU's BIOS NIC ROM is a 32-bit iPXE build.
	arch, platform := "i386", netboot.FirmwareBIOS
	if uefi {
		arch, platform = "x86_64", netboot.FirmwareEFI
	}
	want := map[string]bool{"boot script served": false, "file=vmlinuz": false, "file=initrd.img": false}
	if uefi {
		want["TFTP ipxe.efi"] = false
	}
	timer := time.NewTimer(vmTimeout)
	defer timer.Stop()
	for done := false; !done; {
		select {
		case l := <-lw.lines:
			switch {
			case strings.Contains(l, "boot script served") && strings.Contains(l, "task=vm-task-1") &&
				strings.Contains(l, "arch="+arch+" ") && strings.Contains(l, "platform="+platform):
				want["boot script served"] = true
			case strings.Contains(l, "boot file served") && strings.Contains(l, "file=vmlinuz") && wholeFile(l):
				want["file=vmlinuz"] = true
			case strings.Contains(l, "boot file served") && strings.Contains(l, "file=initrd.img") && wholeFile(l):
				want["file=initrd.img"] = true
			case strings.Contains(l, "TFTP: transfer done") && strings.Contains(l, "file=ipxe.efi"):
				want["TFTP ipxe.efi"] = true
			}
			done = true
			for _, ok := range want {
				done = done && ok
			}
		case <-timer.C:
			s, _ := os.ReadFile(serial)
			t.Fatalf("VM did not load kernel and initrd in time: %v\nserial:\n%s", want, s)
		}
	}
}

// wholeFile: the log line reports bytes == size (a full, not ranged, GET).
func wholeFile(l string) bool {
	var b, s string
	for _, f := range strings.Fields(l) {
		if v, ok := strings.CutPrefix(f, "bytes="); ok {
			b = v
		}
		if v, ok := strings.CutPrefix(f, "size="); ok {
			s = v
		}
	}
	return b != "" && b == s
}
