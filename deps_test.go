package lpmos_test

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

// The dependency direction of docs/architecture.md, checked on the real import graph (go list),
// each rule with its reason.
func TestDependencyDirection(t *testing.T) {
	out, err := exec.Command("go", "list", "-e", "-json=ImportPath,Imports,Deps", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	type pkg struct {
		ImportPath    string
		Imports, Deps []string
	}
	var pkgs []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(p.ImportPath, "/build/") {
			continue // generated build staging, not our code
		}
		pkgs = append(pkgs, p)
	}
	const mod = "lpmos.dev/lpmos/"
	etcd := func(d string) bool { return strings.HasPrefix(d, "go.etcd.io/etcd/") }
	rules := []struct {
		who    func(string) bool
		banned func(string) bool
		why    string
		direct bool // only direct imports count (transitive use through store is the point)
	}{
		{func(p string) bool { return strings.HasPrefix(p, mod+"netboot") }, func(d string) bool {
			return etcd(d) || strings.HasPrefix(d, mod+"store") || strings.HasPrefix(d, mod+"control") || d == mod+"appliance"
		}, "netboot is a protocol library: it asks a Booter, it knows nothing of etcd, store, appliance or control", false},
		{func(p string) bool { return strings.HasPrefix(p, mod+"agent-initramfs") }, func(d string) bool {
			return etcd(d) || strings.HasPrefix(d, mod+"store") || strings.HasPrefix(d, mod+"netboot") || strings.HasPrefix(d, mod+"control") || strings.HasPrefix(d, mod+"appliance")
		}, "the agent speaks only the regional API, whose contract is the contract package; the initramfs size is a budget", false},
		{func(p string) bool { return p == mod+"contract" }, func(d string) bool {
			return etcd(d) || strings.HasPrefix(d, mod)
		}, "contract is what every component speaks: it depends on none of them (and not on etcd), so no binary owns it", false},
		{func(p string) bool { return strings.HasPrefix(p, mod+"images") }, func(d string) bool {
			return etcd(d) || strings.HasPrefix(d, mod+"store") || strings.HasPrefix(d, mod+"control") || strings.HasPrefix(d, mod+"netboot")
		}, "images is used by the agent: no etcd, store, control or netboot", false},
		{func(p string) bool {
			return strings.HasPrefix(p, mod) && !strings.HasPrefix(p, mod+"store") && p != strings.TrimSuffix(mod, "/")
		}, func(d string) bool {
			return etcd(d) && !strings.HasPrefix(d, "go.etcd.io/etcd/api/") && !strings.HasPrefix(d, "go.etcd.io/etcd/client/pkg/")
		}, "only store (and its embedded-etcd starter) import etcd", true},
		{func(p string) bool { return strings.HasPrefix(p, mod+"internal/") }, func(d string) bool {
			return strings.HasPrefix(d, mod) && !strings.HasPrefix(d, mod+"internal/")
		}, "internal/ holds small shared pieces (the test harness, connection caps, rate limits) used by netboot, the agent, the appliance and control: it imports nothing of the project", false},
		{func(p string) bool { return strings.HasPrefix(p, mod+"storm") }, func(d string) bool {
			return etcd(d) || strings.HasPrefix(d, mod) && d != mod+"contract" && !strings.HasPrefix(d, mod+"storm")
		}, "storm plays machines and an operator over the wire only (regional API, control API, DHCP, TFTP): what it measures is the appliance, not a shortcut into it", false},
		{func(p string) bool { return strings.HasPrefix(p, mod+"control") }, func(d string) bool { return strings.HasPrefix(d, mod+"appliance") }, "control and appliance meet only in etcd (through store) and in the contract package", false},
		{func(p string) bool { return p == mod+"appliance" }, func(d string) bool { return strings.HasPrefix(d, mod+"control") }, "control and appliance meet only in etcd (through store) and in the contract package", false},
	}
	for _, p := range pkgs {
		for _, r := range rules {
			if !r.who(p.ImportPath) {
				continue
			}
			deps := p.Deps
			if r.direct {
				deps = p.Imports
			}
			for _, d := range deps {
				if r.banned(d) {
					t.Errorf("%s imports %s: %s", p.ImportPath, d, r.why)
				}
			}
		}
	}
	if len(pkgs) < 5 {
		t.Fatalf("go list saw only %d packages", len(pkgs))
	}
}
