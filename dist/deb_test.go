package dist_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// DebEnv names the package under test (make test-appliance builds it and sets it).
const DebEnv = "LPMOS_DEB"

// TestDeb installs the package into a fresh Debian 12 root (mmdebstrap, as apt install
// ./lpmos_*.deb does on a host), verifies its units with systemd-analyze, upgrades it
// over an edited config, removes it (state kept) and purges it (state gone); lintian
// finds no error.
func TestDeb(t *testing.T) {
	deb := os.Getenv(DebEnv)
	switch {
	case testing.Short():
		t.Skip("deb test skipped in -short mode")
	case deb == "":
		t.Skipf("DEB TEST SKIPPED: %s not set (make test-appliance builds the package and sets it)", DebEnv)
	case os.Geteuid() != 0:
		t.Skip("DEB TEST SKIPPED: needs root (mmdebstrap, chroot)")
	}
	for _, b := range []string{"mmdebstrap", "lintian", "systemd-analyze"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("DEB TEST SKIPPED: %s not installed (.ci/run installs it)", b)
		}
	}
	if _, err := os.Stat(deb); err != nil || !filepath.IsAbs(deb) {
		t.Fatalf("%s=%q: an absolute path to the package (%v)", DebEnv, deb, err)
	}

	t.Run("lintian", func(t *testing.T) {
		out, err := exec.Command("lintian", "--fail-on", "error", "--tag-display-limit", "0", deb).CombinedOutput()
		t.Logf("lintian:\n%s", out)
		if err != nil {
			t.Fatalf("lintian: %v", err)
		}
	})

	root := filepath.Join(t.TempDir(), "root")
	start := time.Now()
	// apt install ./lpmos_*.deb, as the docs say, in the new root while mmdebstrap has
	// its /proc and /dev mounted.
	if out, err := exec.Command("mmdebstrap", "--variant=minbase",
		"--customize-hook=copy-in "+deb+" /tmp",
		`--customize-hook=chroot "$1" apt-get install -y /tmp/`+filepath.Base(deb),
		"bookworm", root).CombinedOutput(); err != nil {
		t.Fatalf("mmdebstrap with %s: %v\n%s", deb, err, tail(string(out), 3000))
	}
	t.Logf("fresh Debian 12 root with the package in %.1fs", time.Since(start).Seconds())
	in := func(argv ...string) string {
		t.Helper()
		out, err := exec.Command("chroot", append([]string{root}, argv...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
		}
		return string(out)
	}
	exists := func(p string) bool {
		_, err := os.Lstat(filepath.Join(root, p))
		return err == nil
	}

	for _, p := range []string{"usr/bin/lpmos-appliance", "usr/bin/lpmos-control", "usr/bin/lpmos-etcd", "usr/bin/lpmos-image",
		"usr/lib/lpmos/agent/vmlinuz", "usr/lib/lpmos/agent/initramfs.cpio.gz", "etc/default/lpmos-appliance",
		"etc/systemd/system/multi-user.target.wants/lpmos-appliance.service", "var/lib/lpmos", "usr/share/doc/lpmos/appliance.md"} {
		if !exists(p) {
			t.Errorf("/%s missing after install", p)
		}
	}
	if exists("etc/systemd/system/multi-user.target.wants/lpmos-control.service") {
		t.Errorf("lpmos-control enabled on install; it is opt-in")
	}
	if !strings.Contains(in("getent", "passwd", "lpmos"), "/var/lib/lpmos") {
		t.Errorf("no system user lpmos")
	}
	// Every unit, as systemd would load it on that host.
	for _, u := range []string{"lpmos-appliance.service", "lpmos-control.service", "lpmos-etcd.service"} {
		out, err := exec.Command("systemd-analyze", "verify", "--root="+root, "/lib/systemd/system/"+u).CombinedOutput()
		if err != nil || len(strings.TrimSpace(string(out))) > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", u, err, out)
		}
	}
	// The wrapper the unit starts: a missing label is named, not a crash.
	if out, _ := exec.Command("chroot", root, "/usr/lib/lpmos/lpmos-appliance-run", "env", "/etc/default/lpmos-appliance").CombinedOutput(); !strings.Contains(string(out), "BOOT_IF=") {
		t.Errorf("lpmos-appliance-run env: %s", out)
	}

	// Upgrade over an edited config and existing state: both stay.
	conf := filepath.Join(root, "etc/default/lpmos-appliance")
	b, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(string(b), "\nREGION_LABEL=\n", "\nREGION_LABEL=dc9\n", 1)
	if edited == string(b) {
		t.Fatal("REGION_LABEL= line not found in /etc/default/lpmos-appliance")
	}
	if err := os.WriteFile(conf, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(root, "var/lib/lpmos/images/keep")
	os.MkdirAll(filepath.Dir(state), 0o755)
	if err := os.WriteFile(state, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	b, err = os.ReadFile(deb)
	if err == nil {
		err = os.WriteFile(filepath.Join(root, "tmp/lpmos.deb"), b, 0o644)
	}
	if err != nil {
		t.Fatal(err)
	}
	in("dpkg", "-i", "--force-confold", "/tmp/lpmos.deb")
	if got, _ := os.ReadFile(conf); string(got) != edited {
		t.Errorf("upgrade changed the edited /etc/default/lpmos-appliance")
	}
	if !exists("var/lib/lpmos/images/keep") {
		t.Errorf("upgrade lost /var/lib/lpmos")
	}

	in("apt-get", "remove", "-y", "lpmos")
	if exists("usr/bin/lpmos-appliance") {
		t.Errorf("remove left /usr/bin/lpmos-appliance")
	}
	if !exists("var/lib/lpmos/images/keep") || !exists("etc/default/lpmos-appliance") {
		t.Errorf("remove deleted the state or the config (only purge may)")
	}
	in("dpkg", "--purge", "lpmos")
	if exists("var/lib/lpmos") || exists("etc/default/lpmos-appliance") {
		t.Errorf("purge left /var/lib/lpmos or the config")
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
