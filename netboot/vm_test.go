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

	"lpmos.dev/lpmos/internal/netlab"
	"lpmos.dev/lpmos/internal/netlab/netlabtest"
	"lpmos.dev/lpmos/internal/qemu"
	"lpmos.dev/lpmos/netboot"
	"lpmos.dev/lpmos/netboot/dhcpd"
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
	netlabtest.Require(t, qemu.Binary, "dnsmasq")
	kernel := kernelPath(t)
	for _, mode := range []dhcpd.Mode{dhcpd.ModeFull, dhcpd.ModeProxy} {
		t.Run(string(mode), func(t *testing.T) { qemuNetboot(t, mode, false, kernel) })
	}
	// docs/lab.md pitfall 5: the TFTP first stage is exercised with UEFI, OVMF's
	// own PXE (NIC ROM removed) fetching ipxe.efi, then iPXE over HTTP.
	t.Run("uefi-pxe-proxy", func(t *testing.T) {
		if err := qemu.OVMFInstalled(); err != nil {
			t.Skipf("SKIP: %v", err)
		}
		qemuNetboot(t, dhcpd.ModeProxy, true, kernel)
	})
}

var vmTimeout = 150 * time.Second // docs/lab.md: 30-60 s per network boot under load

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
	site, appl := netlabtest.NS(t, "site"), netlabtest.NS(t, "appl")
	netlabtest.Bridge(t, site, "br0", "10.77.0.2/24", "fd77::1/64")
	netlabtest.Tap(t, site, "tap0", "br0")
	netlabtest.Plug(t, site, "br0", "va", appl, "nb0", "10.77.0.1/24")
	// A router advertisement ends iPXE's ~13 s wait for IPv6 (docs/lab.md, pitfall 2).
	dns := netlab.Dnsmasq{Interface: "br0", RAPrefix: "fd77::"}
	if mode == dhcpd.ModeProxy {
		// The site's DHCP server: addresses only, no boot file.
		dns.Range, dns.LeaseFile = "10.77.0.100,10.77.0.200,255.255.255.0,1h", filepath.Join(dir, "leases")
	}
	netlabtest.Start(t, site, dns.Argv()...)

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
	if err := netlab.Do(appl, func() (err error) {
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
	go func() { tftpDone <- netlab.Do(appl, func() error { return ts.Serve(ctx, tftpConn) }) }()
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

	// QEMU's own iPXE NIC ROM (-boot n); under UEFI OVMF's own virtio-net + PXE instead.
	fw := qemu.BIOS
	if uefi {
		fw = qemu.UEFI
	}
	if os.Getenv("LPMOS_VM_PCAP") != "" {
		netlabtest.Start(t, appl, "tcpdump", "-ni", "nb0", "-U", "-w", os.Getenv("LPMOS_VM_PCAP"))
	}
	vm, err := qemu.Start(qemu.Config{Dir: dir, NetNS: site, Firmware: fw, NoReboot: true, Boot: "n",
		NICs: []qemu.NIC{{Tap: "tap0", MAC: mac.String(), NoROM: uefi}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Stop(5 * time.Second) })

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
			t.Fatalf("VM did not load kernel and initrd in time: %v\nserial:\n%s", want, vm.SerialLog())
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
