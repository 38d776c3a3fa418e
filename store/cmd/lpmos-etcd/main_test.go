package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Wrong cluster flags and snapshot arguments fail at once with the flag named, before
// anything is written.
func TestBadArgumentsNameTheFlag(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--data-dir=" + filepath.Join(dir, "a"), "--initial-cluster-state=old"}, "--initial-cluster-state"},
		{[]string{"--data-dir=" + filepath.Join(dir, "b"), "--initial-cluster=m1"}, "--initial-cluster"},
		{[]string{"--data-dir=" + filepath.Join(dir, "c"), "--advertise-client-urls=ftp://x"}, "--advertise-client-urls"},
		{[]string{"snapshot", "save"}, "want one snapshot FILE"},
		{[]string{"snapshot", "restore", filepath.Join(dir, "none.db")}, "--data-dir"},
		{[]string{"snapshot", "restore", filepath.Join(dir, "none.db"), "--data-dir=" + dir}, "exists"},
		{[]string{"snapshot", "copy", "x"}, "unknown snapshot command"},
		{[]string{"extra"}, "unexpected arguments"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		var out bytes.Buffer
		err := run(ctx, c.args, &out)
		cancel()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want an error naming %s", c.args, err, c.want)
		}
	}
}
