// Package netlabtest is netlab and proc for tests: each helper fails the test on
// error and undoes its work (processes by PID, namespaces by `ip netns del`) when the
// test ends. Tests needing root skip, loudly, when not root.
package netlabtest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"lpmos.dev/lpmos/internal/netlab"
	"lpmos.dev/lpmos/internal/proc"
)

// Require skips t unless it runs as root with the ip command and every named binary
// present.
func Require(t testing.TB, bins ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIP: needs root to create network namespaces (run go test as root)")
	}
	for _, b := range append([]string{"ip"}, bins...) {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("SKIP: %s not installed (see .ci/packages.txt)", b)
		}
	}
}

func ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}

// Run runs a command and fails t with its output on error.
func Run(t testing.TB, argv ...string) {
	t.Helper()
	c, cancel := ctx()
	defer cancel()
	if err := netlab.Run(c, argv...); err != nil {
		t.Fatal(err)
	}
}

// NS creates a namespace named lpm-t-<pid>-<n>-<tag> with lo up, deleted when t ends.
func NS(t testing.TB, tag string) string {
	t.Helper()
	name := netlab.Name("lpm-t", tag)
	c, cancel := ctx()
	defer cancel()
	err := netlab.AddNS(c, name)
	t.Cleanup(func() { netlab.DelNS(name) })
	if err != nil {
		t.Fatal(err)
	}
	return name
}

// Bridge creates bridge br in ns with addrs, up (netlab.AddBridge).
func Bridge(t testing.TB, ns, br string, addrs ...string) {
	t.Helper()
	c, cancel := ctx()
	defer cancel()
	if err := netlab.AddBridge(c, ns, br, addrs...); err != nil {
		t.Fatal(err)
	}
}

// Tap creates tap device tap in ns on bridge br (netlab.AddTap).
func Tap(t testing.TB, ns, tap, br string) {
	t.Helper()
	c, cancel := ctx()
	defer cancel()
	if err := netlab.AddTap(c, ns, tap, br); err != nil {
		t.Fatal(err)
	}
}

// Link connects namespace a (interface ifA, address addrA in CIDR form or "") to
// namespace b (ifB, addrB) with a veth pair, both ends up (netlab.AddVeth).
func Link(t testing.TB, a, ifA, addrA, b, ifB, addrB string) {
	t.Helper()
	c, cancel := ctx()
	defer cancel()
	if err := netlab.AddVeth(c, a, ifA, addrA, b, ifB, addrB); err != nil {
		t.Fatal(err)
	}
}

// Plug cables host to bridge br of site (netlab.Plug).
func Plug(t testing.TB, site, br, port, host, ifname, addr string) {
	t.Helper()
	c, cancel := ctx()
	defer cancel()
	if err := netlab.Plug(c, site, br, port, host, ifname, addr); err != nil {
		t.Fatal(err)
	}
}

// Proc is a process of the test.
type Proc struct{ *proc.Proc }

// Start runs argv inside ns ("": on the host), its output also in a file of a
// t.TempDir; it is stopped by PID (SIGTERM, SIGKILL after 5 s) when t ends.
func Start(t testing.TB, ns string, argv ...string) *Proc {
	t.Helper()
	name := filepath.Base(argv[0])
	p, err := proc.Start(name, argv, proc.Options{NetNS: ns, Log: filepath.Join(t.TempDir(), name+".log")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(5 * time.Second) })
	return &Proc{p}
}

// Expect waits for the next output line containing want (after the one the previous
// Expect returned) and returns it; it fails t when the process ends or the timeout
// passes first, showing the output.
func (p *Proc) Expect(t testing.TB, want string, timeout time.Duration) string {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	l, err := p.NextLine(c, want)
	if err != nil {
		t.Fatalf("%v; output:\n%s", err, p.Log())
	}
	return l
}
