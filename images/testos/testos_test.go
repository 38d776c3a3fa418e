package testos

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/internal/qemu"
)

// TestBoot builds the image and boots one copy of it per firmware, one VM at a time
// (2 shared cores, TCG).
func TestBoot(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: -short: the test OS boots take ~40 s under TCG")
	}
	start := time.Now()
	img := Build(t)
	t.Logf("build-testos.sh: %v", time.Since(start).Round(time.Millisecond))
	checkOutputs(t, img)

	// UEFI boots the image on a larger (sparse) disk, as the agent leaves it on a real one.
	for _, tc := range []struct {
		fw      qemu.Firmware
		loader  string
		diskMiB int64
	}{{qemu.BIOS, "syslinux", 0}, {qemu.UEFI, "systemd-boot", 64}} {
		t.Run(string(tc.fw), func(t *testing.T) {
			disk := CopyImage(t, img)
			if tc.diskMiB > 0 {
				if err := os.Truncate(disk, tc.diskMiB<<20); err != nil {
					t.Fatal(err)
				}
			}
			res := Boot(t, BootConfig{Disk: disk, Firmware: tc.fw, Timeout: 100 * time.Second})
			t.Logf("%s boot to marker: %v", tc.fw, res.Elapsed.Round(time.Millisecond))
			t.Logf("%s", res.Line)
			for _, want := range []string{"kernel=", "lpmos.loader=" + tc.loader, "lpmos.disk=PARTUUID=4c504d4f-01"} {
				if !strings.Contains(res.Line, want) {
					t.Errorf("marker line lacks %q: %q", want, res.Line)
				}
			}
		})
	}
}

// checkOutputs: the sidecar checksum matches and every compressed variant exists and is
// smaller than the raw image.
func checkOutputs(t *testing.T, img string) {
	t.Helper()
	raw, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(raw)
	side, err := os.ReadFile(img + ".sha256")
	if err != nil {
		t.Fatal(err)
	}
	if f := strings.Fields(string(side)); len(f) == 0 || f[0] != hex.EncodeToString(sum[:]) {
		t.Errorf("%s.sha256 = %q, image hashes to %x", img, side, sum)
	}
	t.Logf("%s: %d bytes", filepath.Base(img), len(raw))
	for _, ext := range []string{".zst", ".gz", ".xz"} {
		fi, err := os.Stat(img + ext)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %d bytes", filepath.Base(img)+ext, fi.Size())
		if fi.Size() >= int64(len(raw)) {
			t.Errorf("%s is not smaller than the raw image", ext)
		}
	}
}
