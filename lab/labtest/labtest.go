// Package labtest holds what the tests with real processes share in their set-up: the
// project's binaries built from the repository, an SSH key for logging into a machine,
// and the sha256 of an installed target.
package labtest

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"lpmos.dev/lpmos/internal/proc"
)

// repoRoot is the repository root, two directories up from this file.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// BuildBinaries builds the packages (paths from the repository root, like
// "./appliance/cmd/lpmos-appliance") into dir and returns dir.
func BuildBinaries(t testing.TB, dir string, pkgs ...string) string {
	t.Helper()
	cmd := exec.Command("go", append([]string{"build", "-o", dir + "/"}, pkgs...)...)
	cmd.Dir = repoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return dir
}

// SSHKey generates an ed25519 key pair in dir: the private key's path and the public
// key's line.
func SSHKey(t testing.TB, dir string) (key, pub string) {
	t.Helper()
	key = filepath.Join(dir, "id_ed25519")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "lpmos-test", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	b, err := os.ReadFile(key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	return key, string(b)
}

// FileSHA256 is the hex sha256 of the file at path (an install's target, compared with
// the image's digest).
func FileSHA256(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// StartProc starts argv as process name in network namespace ns ("" for the host's),
// its output logged to dir/name.log; the test's cleanup stops it and, when the test
// failed, shows the log's last lines.
func StartProc(t testing.TB, dir, name, ns string, argv ...string) *proc.Proc {
	t.Helper()
	p, err := proc.Start(name, argv, proc.Options{NetNS: ns, Log: filepath.Join(dir, name+".log")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Stop(5 * time.Second)
		if t.Failed() {
			t.Logf("--- %s (last lines):\n%s", name, proc.Tail(p.Log(), 25))
		}
	})
	return p
}
