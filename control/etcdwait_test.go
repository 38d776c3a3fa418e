package control_test

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"lpmos.dev/lpmos/control"
	"lpmos.dev/lpmos/store/etcdserver"
)

// notifyingBuffer is a log sink that signals each write.
type notifyingBuffer struct {
	mu    sync.Mutex
	b     strings.Builder
	wrote chan struct{}
}

func (n *notifyingBuffer) Write(p []byte) (int, error) {
	n.mu.Lock()
	n.b.Write(p)
	n.mu.Unlock()
	select {
	case n.wrote <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (n *notifyingBuffer) String() string { n.mu.Lock(); defer n.mu.Unlock(); return n.b.String() }

// The control plane started before etcd waits for it (a log line per attempt) and
// serves once etcd answers, instead of exiting; with --etcd-wait it gives up.
func TestControlWaitsForEtcd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	endpoint := "127.0.0.1:" + strconv.Itoa(port)

	logs := &notifyingBuffer{wrote: make(chan struct{}, 1)}
	type started struct {
		s   *control.Server
		err error
	}
	done := make(chan started, 1)
	go func() {
		s, err := control.Start(ctx, control.Config{Host: "127.0.0.1", EtcdEndpoints: []string{endpoint}}, slog.New(slog.NewTextHandler(logs, nil)))
		done <- started{s, err}
	}()
	for !strings.Contains(logs.String(), "waiting for etcd") {
		select {
		case <-logs.wrote:
		case r := <-done:
			t.Fatalf("control plane returned before etcd was up: %v", r.err)
		case <-ctx.Done():
			t.Fatal("no 'waiting for etcd' line")
		}
	}
	srv, err := etcdserver.Start(ctx, etcdserver.Config{DataDir: t.TempDir(), ListenClientURLs: "http://" + endpoint, ListenPeerURLs: "http://127.0.0.1:0", Quiet: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	var r started
	select {
	case r = <-done:
	case <-ctx.Done():
		t.Fatalf("control plane not serving after etcd came up:\n%s", logs)
	}
	if r.err != nil {
		t.Fatalf("start: %v\n%s", r.err, logs)
	}
	defer r.s.Stop()
	resp, err := http.Get(r.s.URL() + "/login")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /login after the wait: %v %v", resp, err)
	}
	resp.Body.Close()

	// Bounded: --etcd-wait gives up with the reason.
	start := time.Now()
	_, err = control.Start(ctx, control.Config{Host: "127.0.0.1", EtcdEndpoints: []string{"127.0.0.1:1"}, EtcdWait: 2 * time.Second}, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "--etcd-wait") {
		t.Fatalf("with --etcd-wait 2s and no etcd: %v", err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("--etcd-wait 2s took %v", d)
	}
}
