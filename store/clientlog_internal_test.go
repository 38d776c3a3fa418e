package store

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// The etcd client's own warnings (a request failing while etcd is out of reach) reach
// the caller's slog logger, with its attributes (the appliance's [label] lives there),
// once per clientLogRepeat, not as zap JSON on stderr.
func TestEtcdClientLogsThroughSlog(t *testing.T) {
	var buf lockedBuf
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
