package tftpd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pin/tftp/v3"

	"lpmos.dev/lpmos/netboot"
	"lpmos.dev/lpmos/netboot/ipxe"
)

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.DiscardHandler)
}

// start runs a Server over ipxe.Binaries() on a loopback port.
func start(t *testing.T) (addr string, files map[string][]byte) {
	t.Helper()
	return startWith(t, nil)
}

// startWith is start with the config adjusted first.
func startWith(t *testing.T, adjust func(*Config)) (addr string, files map[string][]byte) {
	t.Helper()
	fsys := ipxe.Binaries()
	if !ipxe.HasBinary(fsys, ipxe.FileBIOS) {
		t.Skip("SKIP: no embedded iPXE binaries: run scripts/fetch-ipxe.sh")
	}
	files = map[string][]byte{}
	for _, n := range []string{ipxe.FileBIOS, ipxe.FileEFIx64} {
		f, err := fsys.Open(n)
		if err != nil {
			t.Fatal(err)
		}
		files[n], _ = io.ReadAll(f)
		f.Close()
	}
	cfg := Config{Files: fsys, Logger: testLogger(), Timeout: time.Second}
	if adjust != nil {
		adjust(&cfg)
	}
	_, pc := serve(t, cfg)
	return pc.LocalAddr().String(), files
}

// serve runs a Server for cfg on a loopback port until the test ends.
func serve(t *testing.T, cfg Config) (*Server, net.PacketConn) {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, pc) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not stop")
		}
	})
	return s, pc
}

func TestGoClient(t *testing.T) {
	addr, files := start(t)
	for _, blk := range []int{0, 1428, 8192} {
		t.Run(fmt.Sprintf("blksize=%d", blk), func(t *testing.T) {
			c, err := tftp.NewClient(addr)
			if err != nil {
				t.Fatal(err)
			}
			c.SetTimeout(2 * time.Second)
			if blk > 0 {
				c.SetBlockSize(blk)
			}
			c.RequestTSize(true)
			wt, err := c.Receive(ipxe.FileBIOS, "octet")
			if err != nil {
				t.Fatal(err)
			}
			if n, ok := wt.(tftp.IncomingTransfer).Size(); !ok || n != int64(len(files[ipxe.FileBIOS])) {
				t.Errorf("tsize %d %v", n, ok)
			}
			var buf bytes.Buffer
			if _, err := wt.WriteTo(&buf); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf.Bytes(), files[ipxe.FileBIOS]) {
				t.Fatal("content differs")
			}
		})
	}
	t.Run("write refused", func(t *testing.T) {
		c, _ := tftp.NewClient(addr)
		c.SetTimeout(2 * time.Second)
		rf, err := c.Send("evil.efi", "octet")
		if err == nil {
			_, err = rf.ReadFrom(strings.NewReader("x"))
		}
		if err == nil {
			t.Fatal("write accepted")
		}
	})
	for _, name := range []string{"../tftpd.go", "/etc/passwd", "nope.efi", "README.md", "a/../undionly.kpxe", `..\x`, ""} {
		t.Run("refused "+name, func(t *testing.T) {
			c, _ := tftp.NewClient(addr)
			c.SetTimeout(2 * time.Second)
			wt, err := c.Receive(name, "octet")
			if err == nil {
				_, err = wt.WriteTo(io.Discard)
			}
			if err == nil {
				t.Fatal("served")
			}
		})
	}
}

// TestWindowsizeIgnored: a client asking RFC 7440 windowsize gets an OACK
// without it (RFC 2347: unsupported options are omitted) and lock-step
// transfer; blksize and tsize are still acknowledged.
func TestWindowsizeIgnored(t *testing.T) {
	addr, files := start(t)
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	srv, _ := net.ResolveUDPAddr("udp4", addr)
	rrq := []byte{0, 1}
	for _, s := range []string{ipxe.FileBIOS, "octet", "blksize", "1024", "tsize", "0", "windowsize", "16"} {
		rrq = append(append(rrq, s...), 0)
	}
	c.WriteToUDP(rrq, srv)
	buf := make([]byte, 2048)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, peer, err := c.ReadFromUDP(buf)
	if err != nil {
		t.Fatal(err)
	}
	if binary.BigEndian.Uint16(buf) != 6 {
		t.Fatalf("want OACK, got opcode %d", binary.BigEndian.Uint16(buf))
	}
	opts := map[string]string{}
	f := strings.Split(strings.TrimSuffix(string(buf[2:n]), "\x00"), "\x00")
	for i := 0; i+1 < len(f); i += 2 {
		opts[f[i]] = f[i+1]
	}
	if opts["blksize"] != "1024" || opts["tsize"] != fmt.Sprint(len(files[ipxe.FileBIOS])) || opts["windowsize"] != "" {
		t.Fatalf("OACK options %v", opts)
	}
	// Lock-step: ACK 0, then each block.
	var got []byte
	for block := uint16(0); ; block++ {
		c.WriteToUDP([]byte{0, 4, byte(block >> 8), byte(block)}, peer)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := c.ReadFromUDP(buf)
		if err != nil {
			t.Fatal(err)
		}
		if binary.BigEndian.Uint16(buf) != 3 || binary.BigEndian.Uint16(buf[2:]) != block+1 {
			t.Fatalf("block %d: % x", block+1, buf[:4])
		}
		got = append(got, buf[4:n]...)
		if n-4 < 1024 {
			c.WriteToUDP([]byte{0, 4, byte((block + 1) >> 8), byte(block + 1)}, peer)
			break
		}
	}
	if !bytes.Equal(got, files[ipxe.FileBIOS]) {
		t.Fatal("content differs")
	}
}

func TestCleanNames(t *testing.T) {
	for name, ok := range map[string]bool{
		"undionly.kpxe": true, "ipxe.efi": true,
		"/undionly.kpxe": false, "../x": false, "a/b": false, `a\b`: false, "..": false, "": false, "x..y": false,
	} {
		if _, err := clean(name); (err == nil) != ok {
			t.Errorf("clean(%q) err=%v", name, err)
		}
		if _, err := clean(name); err != nil && !errors.Is(err, ErrRefused) {
			t.Errorf("clean(%q) error not ErrRefused: %v", name, err)
		}
	}
}

// TestCurl fetches with a stock client (curl's tftp://), default and large
// block sizes, and checks refusals the way a person would see them.
func TestCurl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("SKIP: curl not installed (Debian package curl)")
	}
	addr, files := start(t)
	dir := t.TempDir()
	fetch := func(path string, extra ...string) ([]byte, error) {
		out := filepath.Join(dir, "out")
		os.Remove(out)
		args := append([]string{"-sS", "--path-as-is", "--max-time", "20", "-o", out}, extra...)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, curl, append(args, "tftp://"+addr+path)...)
		if msg, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("%v: %s", err, msg)
		}
		return os.ReadFile(out)
	}
	for _, c := range []struct {
		name  string
		extra []string
	}{
		{"default", nil},
		{"blksize 1468", []string{"--tftp-blksize", "1468"}},
		{"blksize 8192", []string{"--tftp-blksize", "8192"}},
		{"no options", []string{"--tftp-no-options"}},
	} {
		for _, file := range []string{ipxe.FileBIOS, ipxe.FileEFIx64} {
			t.Run(c.name+" "+file, func(t *testing.T) {
				got, err := fetch("/"+file, c.extra...)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, files[file]) {
					t.Fatalf("%s: %d bytes, not byte-identical to the %d served", file, len(got), len(files[file]))
				}
			})
		}
	}
	for _, p := range []string{"/../netboot/ipxe/bin/undionly.kpxe", "//etc/passwd", "/nope.kpxe", "/README.md"} {
		if _, err := fetch(p); err == nil {
			t.Errorf("curl tftp://%s%s succeeded", addr, p)
		}
	}
}

// A flood of read requests from one client (once: 46,000 in 12 s held 16,811 sockets)
// holds at most MaxPerSource transfers; another machine still boots.
func TestRequestFloodFromOneSource(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("SKIP: curl not installed (Debian package curl)")
	}
	fsys := ipxe.Binaries()
	if !ipxe.HasBinary(fsys, ipxe.FileBIOS) {
		t.Skip("SKIP: no embedded iPXE binaries: run scripts/fetch-ipxe.sh")
	}
	s, pc := serve(t, Config{Files: fsys, Logger: testLogger(), Timeout: time.Second, Retries: 3, MaxTransfers: 64, MaxPerSource: 8})
	addr := pc.LocalAddr().(*net.UDPAddr)

	flood, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP("127.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	defer flood.Close()
	rrq := append([]byte{0, 1}, ipxe.FileBIOS+"\x00octet\x00"...)
	for range 1000 { // never ACKed: every admitted transfer hangs for its 3 s of retries
		if _, err := flood.WriteToUDP(rrq, addr); err != nil {
			t.Fatal(err)
		}
	}
	// Wait (bounded) until the server has decided on a good part of the flood (the
	// kernel drops what overflows the socket buffer: UDP), well within the 3 s the
	// admitted transfers hang.
	var c Counts
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if c = s.Counted(); c.Admitted+c.Refused >= 200 {
			break
		}
	}
	peak := c.Admitted
	if _, held := s.Running("127.0.0.1"); held > 8 || c.Admitted+c.Refused < 200 || c.Admitted > 8 {
		t.Fatalf("flood: %+v, %d held; want at most 8 admitted and held at once", c, held)
	}
	// Another machine boots meanwhile.
	cctx, ccancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer ccancel()
	out, err := exec.CommandContext(cctx, curl, "-s", "--interface", "127.0.0.2", "-o", "/dev/null", "-w", "%{size_download}",
		fmt.Sprintf("tftp://%s/%s", addr, ipxe.FileBIOS)).Output()
	if err != nil || string(out) == "0" {
		t.Fatalf("another client during the flood: %v, %s bytes", err, out)
	}
	t.Logf("1000 requests from one client: %d read (%d admitted, cap 8; %d refused at once); another client fetched %s bytes", c.Admitted+c.Refused, peak, c.Refused, out)
}

// Observe is told how each transfer ended and what it sent.
func TestObserve(t *testing.T) {
	type observed struct {
		outcome Outcome
		bytes   int64
	}
	seen := make(chan observed, 4)
	addr, files := startWith(t, func(c *Config) { c.Observe = func(o Outcome, n int64) { seen <- observed{o, n} } })
	c, err := tftp.NewClient(addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetTimeout(2 * time.Second)
	wt, err := c.Receive(ipxe.FileBIOS, "octet")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wt.WriteTo(io.Discard); err != nil {
		t.Fatal(err)
	}
	if wt, err := c.Receive("nope.efi", "octet"); err == nil {
		if _, err := wt.WriteTo(io.Discard); err == nil {
			t.Fatal("served a file that does not exist")
		}
	}
	want := map[observed]bool{{OutcomeDone, int64(len(files[ipxe.FileBIOS]))}: true, {OutcomeNotFound, 0}: true}
	for range 2 {
		select {
		case o := <-seen:
			if !want[o] {
				t.Fatalf("observed %+v, want one of %v", o, want)
			}
			delete(want, o)
		case <-time.After(5 * time.Second):
			t.Fatalf("not observed: %v", want)
		}
	}
}

// The receive queue is sized for a boot storm's burst (as root past rmem_max).
func TestReceiveBufferSized(t *testing.T) {
	pc, err := Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	raw, err := pc.(*net.UDPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var size int
	raw.Control(func(fd uintptr) { size, _ = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF) })
	if os.Geteuid() != 0 {
		t.Skipf("receive buffer %d bytes (not root: capped at net.core.rmem_max)", size)
	}
	// The kernel reports twice what was set (its bookkeeping share).
	if size < netboot.ReceiveBuffer {
		t.Fatalf("receive buffer %d bytes, want at least %d", size, netboot.ReceiveBuffer)
	}
}
