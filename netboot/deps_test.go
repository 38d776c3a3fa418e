package netboot_test

import (
	"context"
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// forbidden names, for each import prefix, why netboot must not use it
// (docs/architecture.md, "Dependency direction").
var forbidden = map[string]string{
	"lpmos.dev/lpmos/store":           "netboot asks a Booter; only the appliance knows tasks and etcd keys",
	"lpmos.dev/lpmos/appliance":       "the appliance wires netboot in, never the other way",
	"lpmos.dev/lpmos/control":         "the control plane meets regions only in etcd",
	"lpmos.dev/lpmos/agent-initramfs": "the agent is a client of the boot path, not part of it",
	"go.etcd.io/":                     "only store talks to etcd",
}

func TestDependencies(t *testing.T) {
	if testing.Short() {
		t.Skip("go list of the whole netboot tree")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "list", "-deps", "-test", "-json=ImportPath,Imports", "lpmos.dev/lpmos/netboot/...")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	seen := 0
	for {
		var p struct{ ImportPath string }
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		seen++
		for prefix, why := range forbidden {
			if strings.HasPrefix(p.ImportPath, prefix) {
				t.Errorf("netboot depends on %s: %s", p.ImportPath, why)
			}
		}
	}
	if seen < 10 {
		t.Fatalf("go list returned only %d packages", seen)
	}
}
