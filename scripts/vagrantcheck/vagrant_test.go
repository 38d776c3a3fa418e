// Package vagrantcheck checks the repository's Vagrantfile (the Vagrant/libvirt lab, see
// docs/vagrant.md) with `vagrant validate`, and keeps scripts/vagrant-lab.sh in step
// with it. It holds tests only.
//
// `vagrant validate` needs neither a libvirt daemon nor the network: it loads the
// Vagrantfile and runs Vagrant's and vagrant-libvirt's configuration checks. Without
// the Debian packages vagrant and vagrant-libvirt the check skips, loudly.
package vagrantcheck

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
)

// repoRoot is two directories up from this file's package.
func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("runtime.Caller failed")
	}
	root := filepath.Join(filepath.Dir(file), "..", "..")
	if _, err := os.Stat(filepath.Join(root, "Vagrantfile")); err != nil {
		t.Fatalf("no Vagrantfile in the repository root %s: %v", root, err)
	}
	return root
}

func skipLoudly(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	fmt.Fprintf(os.Stderr, "\n*** SKIPPING %s: %s: the Vagrantfile is NOT validated ***\n\n", t.Name(), msg)
	t.Skip("SKIP LOUDLY: " + msg)
}

// vagrantEnv is the environment of every vagrant run: the libvirt provider, no
// update checks over the network, and Vagrant's state (.vagrant/, ~/.vagrant.d) in
// temp dirs so the test leaves nothing in the tree or the home directory.
func vagrantEnv(t *testing.T, extra ...string) []string {
	t.Helper()
	env := []string{}
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "LPMOS_LAB_") || strings.HasPrefix(kv, "VAGRANT_") {
			continue // the test decides these
		}
		env = append(env, kv)
	}
	env = append(env,
		"VAGRANT_DEFAULT_PROVIDER=libvirt",
		"VAGRANT_CHECKPOINT_DISABLE=1",
		"VAGRANT_BOX_UPDATE_CHECK_DISABLE=1",
		"VAGRANT_DOTFILE_PATH="+filepath.Join(t.TempDir(), "dotfile"),
		"VAGRANT_HOME="+filepath.Join(t.TempDir(), "home"),
		"LPMOS_LAB_LOGDIR="+filepath.Join(t.TempDir(), "logs"),
	)
	return append(env, extra...)
}

func run(t *testing.T, dir string, env []string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	if ctx.Err() != nil {
		return out.String(), fmt.Errorf("%s %s: deadline exceeded: %w", name, strings.Join(args, " "), ctx.Err())
	}
	return out.String(), err
}

func requireVagrantLibvirt(t *testing.T, root string) string {
	t.Helper()
	vagrant, err := exec.LookPath("vagrant")
	if err != nil {
		skipLoudly(t, "vagrant not installed (apt-get install vagrant vagrant-libvirt)")
	}
	out, err := run(t, root, vagrantEnv(t), vagrant, "plugin", "list")
	if err != nil {
		t.Fatalf("vagrant plugin list: %v\n%s", err, out)
	}
	if !strings.Contains(out, "vagrant-libvirt") {
		skipLoudly(t, "the vagrant-libvirt plugin is not installed (apt-get install vagrant-libvirt); vagrant plugin list says: %s", strings.TrimSpace(out))
	}
	return vagrant
}

// TestVagrantValidate runs `vagrant validate` on the lab's Vagrantfile in the variants
// the docs mention, and checks that bad settings are refused.
func TestVagrantValidate(t *testing.T) {
	root := repoRoot(t)
	vagrant := requireVagrantLibvirt(t, root)

	good := [][]string{
		nil, // defaults: 2 VMs, BIOS + UEFI, IPv6 RA on
		{"LPMOS_LAB_VMS=5", "LPMOS_LAB_FIRMWARE=uefi", "LPMOS_LAB_IPV6=0"},
		{"LPMOS_LAB_VMS=1", "LPMOS_LAB_FIRMWARE=bios", "LPMOS_LAB_MEMORY=2048", "LPMOS_LAB_CPUS=1", "LPMOS_LAB_DISK=20G"},
		{"LPMOS_LAB_VMS=50"},
	}
	for _, extra := range good {
		out, err := run(t, root, vagrantEnv(t, extra...), vagrant, "validate")
		if err != nil || !strings.Contains(out, "validated successfully") {
			t.Errorf("vagrant validate %v: %v\n%s", extra, err, out)
		} else {
			t.Logf("vagrant validate %v: %s", extra, strings.TrimSpace(out))
		}
	}

	bad := [][]string{
		{"LPMOS_LAB_VMS=0"},
		{"LPMOS_LAB_VMS=51"},
		{"LPMOS_LAB_VMS=two"},
		{"LPMOS_LAB_FIRMWARE=coreboot"},
	}
	for _, extra := range bad {
		out, err := run(t, root, vagrantEnv(t, extra...), vagrant, "validate")
		if err == nil {
			t.Errorf("vagrant validate %v: accepted, want an error\n%s", extra, out)
		} else if !strings.Contains(out, "LPMOS_LAB_") {
			t.Errorf("vagrant validate %v: the error does not name the variable:\n%s", extra, out)
		}
	}
	if _, err := os.Stat(filepath.Join(root, ".vagrant")); err == nil {
		t.Logf("note: %s/.vagrant exists (from a vagrant run outside this test)", root)
	}
}

// TestLabScriptMatchesVagrantfile checks that scripts/vagrant-lab.sh prints commands for
// the machines, MACs and network the Vagrantfile defines. Needs only bash.
func TestLabScriptMatchesVagrantfile(t *testing.T) {
	root := repoRoot(t)
	vf, err := os.ReadFile(filepath.Join(root, "Vagrantfile"))
	if err != nil {
		t.Fatal(err)
	}
	constant := func(name string) string {
		m := regexp.MustCompile(`(?m)^` + name + ` = '([^']+)'`).FindSubmatch(vf)
		if m == nil {
			t.Fatalf("Vagrantfile: no %s = '...'", name)
		}
		return string(m[1])
	}
	network, hostIP, prefix := constant("LAB_NETWORK"), constant("LAB_HOST_IP"), constant("LAB_PREFIX")
	for _, want := range []string{`"52:54:00:88:00:#{nn}"`, `format('%02x', i)`, `"pxe#{nn}-#{uefi ? 'uefi' : 'bios'}"`, `i.even?`} {
		if !bytes.Contains(vf, []byte(want)) {
			t.Errorf("Vagrantfile no longer contains %s: update scripts/vagrant-lab.sh and this test", want)
		}
	}

	script := filepath.Join(root, "scripts", "vagrant-lab.sh")
	env := append(vagrantEnv(t), "LPMOS_LAB_VMS=11", "LPMOS_LAB_FIRMWARE=mixed")
	out, err := run(t, root, env, "bash", script)
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
	for _, want := range []string{
		"pxe01-bios  MAC 52:54:00:88:00:01",
		"pxe02-uefi  MAC 52:54:00:88:00:02",
		"pxe0b-bios  MAC 52:54:00:88:00:0b",
		`"target_mac":"52:54:00:88:00:0a"`,
		"<name>" + network + "</name>",
		"<ip address='" + hostIP + "' netmask='255.255.255.0'/>",
		"--boot-server-ip=" + hostIP,
		"--dhcp-range=" + prefix + ".100," + prefix + ".200",
		"--dhcp-mode=full --dhcp-interface=lpmosbr0",
		"vagrant up",
		"vagrant destroy -f",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("vagrant-lab.sh output lacks %q", want)
		}
	}
	if strings.Contains(out, "52:54:00:88:00:0c") {
		t.Errorf("vagrant-lab.sh printed a 12th machine for LPMOS_LAB_VMS=11")
	}
	if t.Failed() {
		t.Logf("output:\n%s", out)
	}

	if out, err := run(t, root, append(vagrantEnv(t), "LPMOS_LAB_VMS=0"), "bash", script); err == nil {
		t.Errorf("vagrant-lab.sh accepted LPMOS_LAB_VMS=0:\n%s", out)
	}
}
