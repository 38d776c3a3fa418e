package images

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestHandlerServesRangesAndRefusesBadPaths(t *testing.T) {
	fx := newFixture(t, 1<<20)
	outside := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(outside, []byte("secret"), 0o644)
	if err := os.Symlink(outside, filepath.Join(fx.dir, "escape.img")); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(fx.dir, ".hidden.img"), []byte("tmp"), 0o644)
	os.Mkdir(filepath.Join(fx.dir, "sub"), 0o755)
	client := &http.Client{Timeout: 10 * time.Second}

	get := func(t *testing.T, method, path, rng string) (int, string) {
		t.Helper()
		// A raw request line, so the client does not clean the path for us.
		req, err := http.NewRequestWithContext(t.Context(), method, fx.srv.URL, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.URL.Opaque = path
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	if code, body := get(t, "GET", "/test.img", "bytes=10-19"); code != http.StatusPartialContent || body != string(fx.data[10:20]) {
		t.Errorf("range: %d %q", code, body)
	}
	if code, body := get(t, "GET", "/test.img", ""); code != http.StatusOK || len(body) != len(fx.data) {
		t.Errorf("whole file: %d, %d bytes", code, len(body))
	}
	if code, _ := get(t, "GET", "/"+IndexFile, ""); code != http.StatusOK {
		t.Errorf("index: %d", code)
	}
	for _, path := range []string{
		"/../secret", "/%2e%2e/secret", "/..%2fsecret", "/sub/../../secret", "/escape.img",
		"/.hidden.img", "/sub", "/", "/nope.img", "/test.img%00", "/..\\secret",
	} {
		t.Run(path, func(t *testing.T) {
			code, body := get(t, "GET", path, "")
			if code < 400 || strings.Contains(body, "secret") || strings.Contains(body, "tmp") {
				t.Errorf("GET %s: %d %q", path, code, body)
			}
		})
	}
	if code, _ := get(t, "POST", "/test.img", ""); code != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d", code)
	}
}
