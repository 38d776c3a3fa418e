package imagecmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// qcow2Magic starts every qcow2 file ("QFI\xfb"): official cloud images ship as
// qcow2, which the agent cannot stream onto a disk.
var qcow2Magic = []byte{'Q', 'F', 'I', 0xfb}

// isQcow2 reports whether the file at path is a qcow2 image.
func isQcow2(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	b := make([]byte, len(qcow2Magic))
	if _, err := io.ReadFull(f, b); err != nil {
		return false
	}
	return string(b) == string(qcow2Magic)
}

// convertQcow2 converts a qcow2 image into a raw one in dir with qemu-img, and
// returns its path; without qemu-img it refuses and says how to do it by hand.
func convertQcow2(ctx context.Context, path, dir string) (string, error) {
	qemuImg, err := exec.LookPath("qemu-img")
	if err != nil {
		return "", fmt.Errorf("add: %s is a qcow2 image and qemu-img is not installed: install it (apt-get install qemu-utils) "+
			"or convert the image yourself (qemu-img convert -O raw %s IMAGE.raw) and add the raw file", path, path)
	}
	name := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path)) + ".raw"
	out := filepath.Join(dir, name)
	if _, err := os.Stat(out); err == nil {
		return "", fmt.Errorf("add: converting %s would overwrite %s: remove it first", path, out)
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("add: %w", err)
	}
	tmp := out + ".converting"
	cmd := exec.CommandContext(ctx, qemuImg, "convert", "-O", "raw", path, tmp)
	if b, err := cmd.CombinedOutput(); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("add: qemu-img convert %s: %v: %s", path, err, strings.TrimSpace(string(b)))
	}
	if err := os.Rename(tmp, out); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("add: %w", err)
	}
	return out, nil
}
