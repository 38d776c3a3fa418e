package imagecmd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A qcow2 image (an official cloud image's format) is converted to raw by qemu-img
// and catalogued with the raw bytes' size and sha256; without qemu-img, add refuses
// and says what to do.
func TestAddQcow2(t *testing.T) {
	qemuImg, err := exec.LookPath("qemu-img")
	if err != nil {
		t.Skip("qemu-img not installed (apt-get install qemu-utils)")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	src := t.TempDir()
	data := bytes.Repeat([]byte("LPMOS-QCOW2-RAW!"), 1<<16) // 1 MiB
	raw := filepath.Join(src, "cloud.img")
	os.WriteFile(raw, data, 0o644)
	qcow := filepath.Join(src, "cloud.qcow2")
	if out, err := exec.Command(qemuImg, "convert", "-O", "qcow2", raw, qcow).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v %s", err, out)
	}
	dir := t.TempDir()
	var stdout bytes.Buffer
	if err := Run(ctx, []string{"add", "--dir", dir, "--os-type", "debian", "--os-version", "12", qcow}, &stdout); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if !strings.Contains(stdout.String(), "cloud.raw (raw, 1048576 bytes, 1048576 decompressed, sha256 "+hex.EncodeToString(sum[:])+")") {
		t.Fatalf("add said %q", stdout.String())
	}

	t.Setenv("PATH", t.TempDir()) // no qemu-img
	err = Run(ctx, []string{"add", "--dir", t.TempDir(), "--os-type", "debian", "--os-version", "11", qcow}, &stdout)
	if err == nil || !strings.Contains(err.Error(), "qcow2 image and qemu-img is not installed") {
		t.Fatalf("without qemu-img: %v", err)
	}
}
