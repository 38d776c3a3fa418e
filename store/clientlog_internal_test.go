package store

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/internal/syncbuf"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// The etcd client's own warnings (a request failing while etcd is out of reach) reach
// the caller's slog logger, with its attributes (the appliance's [label] lives there),
// once per clientLogRepeat, not as zap JSON on stderr.
func TestEtcdClientLogsThroughSlog(t *testing.T) {
	var buf syncbuf.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil)).With("label", "dc9")
	cfg, err := DialConfig{Endpoints: []string{"127.0.0.1:1"}, Log: log}.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	for range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		_, err := cli.Get(ctx, "/os/x")
		cancel()
		if err == nil {
			t.Fatal("a Get from a closed port succeeded")
		}
	}
	out := buf.String()
	lines := strings.Count(out, "component=etcd-client")
	if lines == 0 || !strings.Contains(out, "label=dc9") || !strings.Contains(out, "level=WARN") {
		t.Fatalf("the etcd client's warning did not reach slog with the label:\n%s", out)
	}
	if n := strings.Count(out, "retrying of unary invoker failed"); n > 1 {
		t.Fatalf("the same warning logged %d times within %v:\n%s", n, clientLogRepeat, out)
	}
	t.Logf("%d line(s):\n%s", lines, out)
}
