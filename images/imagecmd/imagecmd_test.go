package imagecmd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/images"
)

func TestAddListRoundTrip(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	data := bytes.Repeat([]byte("lpmos test image\x00\x00\x00\x00"), 50000)
	want := sha256.Sum256(data)
	raw := filepath.Join(t.TempDir(), "ubuntu-22.04.img")
	os.WriteFile(raw, data, 0o644)
	gz := filepath.Join(dir, "debian-12.img.gz") // already in the dir
	cmd := exec.Command("gzip", "-c", raw)
	out, err := cmd.Output()
	if err != nil {
		t.Skip("gzip:", err)
	}
	os.WriteFile(gz, out, 0o644)

	var stdout bytes.Buffer
	for _, args := range [][]string{
		{"add", "--dir", dir, "--os-type", "ubuntu", "--os-version", "22.04", raw},
		{"add", "--dir", dir, "--os-type", "debian", "--os-version", "12", gz},
		{"add", "--dir", dir, "--os-type", "debian", "--os-version", "12", "--format", "gz", filepath.Base(gz)}, // by name, replaces
	} {
		if err := Run(ctx, args, &stdout); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
	}
	stdout.Reset()
	if err := Run(ctx, []string{"list", "--dir", dir, "--json"}, &stdout); err != nil {
		t.Fatal(err)
	}
	var listed []images.Entry
	if err := json.Unmarshal(stdout.Bytes(), &listed); err != nil {
		t.Fatal(err)
	}
	if len(listed) != 2 {
		t.Fatalf("listed %d entries: %s", len(listed), stdout.String())
	}
	cat, err := images.OpenCatalog(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		osType, version, file string
		format                images.Format
		compressed            int64
	}{
		{"ubuntu", "22.04", "ubuntu-22.04.img", images.FormatRaw, int64(len(data))},
		{"debian", "12", "debian-12.img.gz", images.FormatGzip, int64(len(out))},
	} {
		e, ok := cat.Lookup(contract.OSRef{OSType: tc.osType, OSVersion: tc.version})
		if !ok {
			t.Fatalf("no entry for %s %s", tc.osType, tc.version)
		}
		if e.File != tc.file || e.Format != tc.format || e.Size != int64(len(data)) || e.CompressedSize != tc.compressed || e.SHA256 != hex.EncodeToString(want[:]) {
			t.Errorf("entry %+v", e)
		}
	}
	// write: what the agent does, from the catalog's own HTTP handler behind a token
	// check (as the appliance has).
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer T1" {
			http.Error(w, "agent token required", http.StatusUnauthorized)
			return
		}
		cat.Handler().ServeHTTP(w, r)
	}))
	defer srv.Close()
	e, _ := cat.Lookup(contract.OSRef{OSType: "debian", OSVersion: "12"})
	src := e.Source(srv.URL)
	target := filepath.Join(t.TempDir(), "disk.img")
	stdout.Reset()
	if err := Run(ctx, []string{"write", "--json", "--agent-token", "T1", "--url", src.URL, "--format", string(src.Format),
		"--size", strconv.FormatInt(src.Size, 10), "--sha256", src.SHA256, target}, &stdout); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(target); !bytes.Equal(got, data) {
		t.Errorf("write: target differs from the image (%s)", stdout.String())
	}

	stdout.Reset()
	if err := Run(ctx, []string{"list", "--dir", dir}, &stdout); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout.String(), "debian-12.img.gz") || !strings.Contains(stdout.String(), "22.04") {
		t.Errorf("list output:\n%s", stdout.String())
	}
}

func TestAddRefusesBadInput(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.img.zst")
	os.WriteFile(junk, []byte("this is not zstd"), 0o644)
	for _, args := range [][]string{
		{"add", "--dir", dir, "--os-type", "x", "--os-version", "1", junk},
		{"add", "--dir", dir, "--os-type", "x", junk},
		{"add", "--dir", dir, "--os-type", "x", "--os-version", "1", "--format", "rar", junk},
		{"add", "--dir", dir, "--os-type", "x", "--os-version", "1", filepath.Join(dir, images.IndexFile)},
		{"bogus"},
		{},
	} {
		if err := Run(ctx, args, new(bytes.Buffer)); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, images.IndexFile)); err == nil {
		t.Error("a failed add wrote the index")
	}
	// A refused file from elsewhere leaves no copy behind.
	outside := filepath.Join(t.TempDir(), "bad.img.xz")
	os.WriteFile(outside, []byte("not xz"), 0o644)
	if err := Run(ctx, []string{"add", "--dir", dir, "--os-type", "x", "--os-version", "1", outside}, new(bytes.Buffer)); err == nil {
		t.Error("added a broken xz image")
	}
	if _, err := os.Stat(filepath.Join(dir, "bad.img.xz")); err == nil {
		t.Error("the refused image was left in the images dir")
	}
}
