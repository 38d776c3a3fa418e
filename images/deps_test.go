package images

import (
	"os/exec"
	"strings"
	"testing"
)

// The agent links this package into the initramfs: keep it free of the
// server side (etcd, store, netboot, control) and of heavy dependencies.
func TestDependencies(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Skip("go list:", err)
	}
	forbidden := map[string]string{
		"go.etcd.io/":                 "the agent never talks to etcd",
		"lpmos.dev/lpmos/store":       "only control and appliance use store",
		"lpmos.dev/lpmos/netboot":     "boot protocols are the appliance's",
		"lpmos.dev/lpmos/control":     "the control plane is not in the initramfs",
		"lpmos.dev/lpmos/appliance":   "the appliance is not in the initramfs",
		"google.golang.org/grpc":      "initramfs size budget",
		"github.com/prometheus/":      "initramfs size budget",
		"go.opentelemetry.io/":        "initramfs size budget",
		"lpmos.dev/lpmos/images/cmd/": "commands are not libraries",
	}
	for _, pkg := range strings.Fields(string(out)) {
		for prefix, why := range forbidden {
			if strings.HasPrefix(pkg, prefix) {
				t.Errorf("images imports %s: %s", pkg, why)
			}
		}
	}
}
