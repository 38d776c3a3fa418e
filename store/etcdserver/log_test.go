package etcdserver_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/internal/syncbuf"

	clientv3 "go.etcd.io/etcd/client/v3"

	"lpmos.dev/lpmos/store/etcdserver"
)

// With a Log, the embedded etcd's own errors go to it (an appliance's lines carry its
// [label]), and a clean Close logs nothing: its "server closed" errors are the stop.
func TestEmbeddedEtcdLogsThroughSlogQuietOnClose(t *testing.T) {
	var buf syncbuf.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := etcdserver.Start(ctx, etcdserver.Config{DataDir: t.TempDir(), ListenClientURLs: "http://127.0.0.1:0",
		ListenPeerURLs: "http://127.0.0.1:0", Log: slog.New(slog.NewTextHandler(&buf, nil)).With("label", "dc1")})
	if err != nil {
		t.Fatal(err)
	}
	// A client with an open connection, as the appliance's store has when it stops.
	cli, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(ctx, "/os/health-probe-test", "x"); err != nil {
		t.Fatal(err)
	}
	srv.Close()
	if out := buf.String(); strings.Contains(out, "closed") || strings.Contains(out, `"level"`) {
		t.Fatalf("a clean stop logged:\n%s", out)
	}
}
