package ipxe

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"lpmos.dev/lpmos/netboot"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

var testMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}

const testBase = "http://10.77.0.1:8081"

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	p := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(p, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from golden (go test -update to accept):\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func TestGoldenScripts(t *testing.T) {
	install := &netboot.Plan{
		Kernel:      "vmlinuz",
		Initrds:     []string{"initramfs.cpio.gz"},
		RegionalURL: "http://10.77.0.1:8081",
		TaskID:      "550e8400-e29b-41d4-a716-446655440000",
		Args:        []string{"console=ttyS0", "quiet"},
	}
	cases := []struct {
		name string
		plan *netboot.Plan
	}{
		{"install", install},
		{"install-token", &netboot.Plan{Kernel: "vmlinuz", Initrds: []string{"initramfs.cpio.gz"}, RegionalURL: "http://10.77.0.1:8081",
			TaskID: "550e8400-e29b-41d4-a716-446655440000", AgentToken: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}},
		{"install-unknown-machine", &netboot.Plan{Kernel: "vmlinuz", Initrds: []string{"initramfs.cpio.gz"}, RegionalURL: "http://10.77.0.1:8081"}},
		{"install-urls", &netboot.Plan{Kernel: "https://mirror.example/k/vmlinuz", Initrds: []string{"https://mirror.example/i/a.img", "extra.cpio"}, TaskID: "t1"}},
		{"localdisk", &netboot.Plan{LocalDisk: true, TaskID: "550e8400-e29b-41d4-a716-446655440000"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := RenderPlan(&buf, testBase, testMAC, c.plan); err != nil {
				t.Fatal(err)
			}
			golden(t, c.name, buf.Bytes())
		})
	}
	t.Run("bootstrap", func(t *testing.T) {
		var buf bytes.Buffer
		if err := RenderBootstrap(&buf, testBase+"/"); err != nil {
			t.Fatal(err)
		}
		golden(t, "bootstrap", buf.Bytes())
	})
}

func TestRenderRefusesInjection(t *testing.T) {
	ok := netboot.Plan{Kernel: "vmlinuz", Initrds: []string{"initrd.img"}, RegionalURL: "http://h:1", TaskID: "t"}
	cases := map[string]func(p *netboot.Plan){
		"newline in task":     func(p *netboot.Plan) { p.TaskID = "t\nshell" },
		"space in task":       func(p *netboot.Plan) { p.TaskID = "t x=y" },
		"CR in url":           func(p *netboot.Plan) { p.RegionalURL = "http://h:1/\rshell" },
		"not http url":        func(p *netboot.Plan) { p.RegionalURL = "file:///etc/passwd" },
		"NUL in arg":          func(p *netboot.Plan) { p.Args = []string{"a\x00b"} },
		"newline in kernel":   func(p *netboot.Plan) { p.Kernel = "vmlinuz\nshell" },
		"path in initrd":      func(p *netboot.Plan) { p.Initrds = []string{"../etc/passwd"} },
		"ipxe expansion":      func(p *netboot.Plan) { p.Args = []string{"x=${root-path}"} },
		"no kernel":           func(p *netboot.Plan) { p.Kernel = "" },
		"duplicate initrd":    func(p *netboot.Plan) { p.Initrds = []string{"a/x.img", "x.img"} },
		"unicode line sep":    func(p *netboot.Plan) { p.TaskID = "t\u2028x" },
		"tab in arg":          func(p *netboot.Plan) { p.Args = []string{"a\tb"} },
		"empty arg":           func(p *netboot.Plan) { p.Args = []string{""} },
		"newline local task":  func(p *netboot.Plan) { p.LocalDisk = true; p.TaskID = "a\nb" },
		"DEL in initrd name":  func(p *netboot.Plan) { p.Initrds = []string{"a\x7fb"} },
		"URL with space":      func(p *netboot.Plan) { p.Kernel = "http://h/a b" },
		"URL with no host":    func(p *netboot.Plan) { p.Kernel = "http:///vmlinuz" },
		"backslash in initrd": func(p *netboot.Plan) { p.Initrds = []string{`a\b`} },
		"space in token":      func(p *netboot.Plan) { p.AgentToken = "abc def" },
		"newline in token":    func(p *netboot.Plan) { p.AgentToken = "abc\nshell" },
		"expansion in token":  func(p *netboot.Plan) { p.AgentToken = "${x}" },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			p := ok
			mutate(&p)
			var buf bytes.Buffer
			err := RenderPlan(&buf, testBase, testMAC, &p)
			if err == nil {
				t.Fatalf("rendered:\n%s", buf.Bytes())
			}
			if buf.Len() != 0 {
				t.Errorf("partial script written on error: %q", buf.Bytes())
			}
		})
	}
	if err := RenderBootstrap(io.Discard, "http://h/\nchain evil"); !errors.Is(err, netboot.ErrUnsafeValue) {
		t.Errorf("bootstrap base with newline: err = %v", err)
	}
}

// FuzzRenderPlan: whatever the plan, a rendered script has no line that the
// values could have added: a value never brings a newline, a control
// character or an iPXE expansion of its own.
func FuzzRenderPlan(f *testing.F) {
	f.Add("vmlinuz", "initramfs.cpio.gz", "http://10.77.0.1:8081", "550e8400", "console=ttyS0", false)
	f.Add("http://h/k", "http://h/i", "https://r.example:8443/x", "t", "quiet", false)
	f.Add("k\nchain http://evil", "i", "http://h", "t", "a", false)
	f.Add("k", "i", "http://h", "t\r\nboot", "${x}", true)
	f.Fuzz(func(t *testing.T, kernel, initrd, url, task, arg string, local bool) {
		p := &netboot.Plan{Kernel: kernel, Initrds: []string{initrd}, RegionalURL: url, TaskID: task, Args: []string{arg}, LocalDisk: local}
		var buf bytes.Buffer
		if err := RenderPlan(&buf, testBase, testMAC, p); err != nil {
			if buf.Len() != 0 {
				t.Fatalf("partial output on error %v", err)
			}
			return
		}
		out := buf.String()
		want := 10 // install template
		if local {
			want = 7
		}
		if n := strings.Count(out, "\n"); n != want {
			t.Fatalf("script has %d lines, want %d:\n%s", n, want, out)
		}
		if !utf8.ValidString(out) {
			t.Fatalf("invalid UTF-8 produced: %q", out)
		}
		for _, r := range out {
			if r < 0x20 && r != '\n' {
				t.Fatalf("control character %q in script:\n%q", r, out)
			}
		}
		for _, v := range []string{kernel, initrd, url, task, arg} {
			if strings.Contains(v, "${") && strings.Contains(out, v) && !local {
				t.Fatalf("iPXE expansion %q passed into the script", v)
			}
		}
	})
}

func newTestHandler(t *testing.T, b netboot.Booter, files map[string]string) http.Handler {
	t.Helper()
	h, err := NewHandler(Config{Booter: b, Files: files, Binaries: Binaries()})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestHandler(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinuz")
	content := bytes.Repeat([]byte("0123456789abcdef"), 4096)
	if err := os.WriteFile(kernel, content, 0o644); err != nil {
		t.Fatal(err)
	}
	var got []netboot.Machine
	booter := netboot.BooterFunc(func(ctx context.Context, m netboot.Machine) (*netboot.Plan, error) {
		got = append(got, m)
		switch m.MAC.String() {
		case "52:54:00:12:34:56":
			return &netboot.Plan{Kernel: "vmlinuz", Initrds: []string{"initramfs.cpio.gz"}, RegionalURL: "http://10.77.0.1:8081", TaskID: "task-1"}, nil
		case "52:54:00:00:00:02":
			return &netboot.Plan{LocalDisk: true, TaskID: "task-2"}, nil
		case "52:54:00:00:00:03":
			return nil, errors.New("etcd down")
		case "52:54:00:00:00:04":
			return &netboot.Plan{Kernel: "vmlinuz", TaskID: "bad\nid"}, nil
		}
		return nil, nil
	})
	srv := httptest.NewServer(newTestHandler(t, booter, map[string]string{"vmlinuz": kernel, "initramfs.cpio.gz": kernel}))
	t.Cleanup(srv.Close)

	get := func(path string, hdr ...string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}

	resp, body := get("/boot.ipxe")
	if resp.StatusCode != 200 || !strings.Contains(body, "chain --autofree "+srv.URL+"/boot/${mac:hexhyp}.ipxe?arch=${buildarch:uristring}&platform=${platform:uristring}") {
		t.Errorf("bootstrap: %d\n%s", resp.StatusCode, body)
	}
	resp, body = get("/boot/52-54-00-12-34-56.ipxe?arch=x86_64&platform=efi")
	if resp.StatusCode != 200 || !strings.Contains(body, "kernel "+srv.URL+"/boot/files/vmlinuz initrd=initramfs.cpio.gz lpmos.url=http://10.77.0.1:8081 lpmos.task=task-1 BOOTIF=01-52-54-00-12-34-56") {
		t.Errorf("machine script: %d\n%s", resp.StatusCode, body)
	}
	if m := got[len(got)-1]; m.Arch != "x86_64" || m.Firmware != "efi" || m.Stage != netboot.StageScript {
		t.Errorf("booter saw %+v", m)
	}
	resp, body = get("/boot.ipxe?mac=52:54:00:12:34:56")
	if resp.StatusCode != 200 || !strings.Contains(body, "lpmos.task=task-1") {
		t.Errorf("query form: %d\n%s", resp.StatusCode, body)
	}
	resp, body = get("/boot/52-54-00-00-00-02.ipxe")
	if resp.StatusCode != 200 || !strings.Contains(body, "sanboot --no-describe --drive 0x80") {
		t.Errorf("local disk: %d\n%s", resp.StatusCode, body)
	}
	for path, want := range map[string]int{
		"/boot/52-54-00-00-00-09.ipxe":                  404, // not ours
		"/boot/52-54-00-00-00-03.ipxe":                  503, // booter error
		"/boot/52-54-00-00-00-04.ipxe":                  500, // unsafe plan refused
		"/boot/zz.ipxe":                                 400,
		"/boot/52-54-00-12-34-56.ipxe?arch=x%0Ay":       400,
		"/boot/files/unknown":                           404,
		"/boot/files/..%2f..%2fetc%2fpasswd":            404,
		"/ipxe/README.md":                               404,
		"/ipxe/..%2fbinaries.go":                        404,
		"/boot/52-54-00-12-34-56.txt":                   404,
		"/boot.ipxe?mac=52-54-00-12-34-56&platform=EFI": 400,
	} {
		if resp, body := get(path); resp.StatusCode != want {
			t.Errorf("GET %s = %d, want %d (%s)", path, resp.StatusCode, want, body)
		}
	}
	// Range (RFC 7233) on a boot file.
	resp, body = get("/boot/files/vmlinuz", "Range", "bytes=16-31")
	if resp.StatusCode != 206 || body != "0123456789abcdef" {
		t.Errorf("range: %d %q", resp.StatusCode, body)
	}
	resp, body = get("/boot/files/vmlinuz")
	if resp.StatusCode != 200 || body != string(content) {
		t.Errorf("full file: %d, %d bytes", resp.StatusCode, len(body))
	}
	if HasBinary(Binaries(), FileEFIx64) {
		want, _ := readBinary(FileEFIx64)
		resp, body = get("/ipxe/" + FileEFIx64)
		if resp.StatusCode != 200 || body != string(want) {
			t.Errorf("ipxe.efi over HTTP: %d, %d bytes", resp.StatusCode, len(body))
		}
	}
}

func readBinary(name string) ([]byte, error) {
	f, err := Binaries().Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

func TestBinariesHidesNonBootFiles(t *testing.T) {
	for _, name := range []string{"README.md", "SHA256SUMS", "../binaries.go", ".", "bin/ipxe.efi"} {
		if HasBinary(Binaries(), name) {
			t.Errorf("%s visible", name)
		}
	}
}
