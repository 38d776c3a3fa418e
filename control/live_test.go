package control_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/control"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/etcdserver"
)

type liveMsg struct {
	Type  string `json:"type"`
	Tasks []struct {
		ID     string `json:"id"`
		Status string `json:"status"`
	} `json:"tasks"`
	Task *struct {
		ID      string  `json:"id"`
		Status  string  `json:"status"`
		Percent float64 `json:"percent"`
	} `json:"task"`
	Regions []struct {
		Name   string `json:"name"`
		Health string `json:"health"`
	} `json:"regions"`
	EtcdError string `json:"etcd_error"`
}

// The push without a browser: a snapshot on connect, a store change pushed, another
// site refused, and a page told when etcd stops answering.
func TestLivePush(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// An etcd of its own (not storetest's), because this test stops it.
	srv, err := etcdserver.Start(ctx, etcdserver.Config{DataDir: t.TempDir(),
		ListenClientURLs: "http://127.0.0.1:0", ListenPeerURLs: "http://127.0.0.1:0", Quiet: true})
	if err != nil {
		t.Fatal(err)
	}
	var stopEtcd sync.Once
	t.Cleanup(func() { stopEtcd.Do(srv.Close) })
	st, err := store.Open(ctx, srv.Endpoints())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cp, err := control.Start(ctx, control.Config{Host: "127.0.0.1", EtcdEndpoints: srv.Endpoints()},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cp.Stop() })
	wsURL := "ws" + strings.TrimPrefix(cp.URL(), "http") + "/live"

	// Another origin may not read the push.
	_, resp, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"http://evil.example"}}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-origin dial: %v %v", resp, err)
	}

	first, err := st.CreateTask(ctx, store.NewTask{RegionID: "dc1", TargetMAC: "00:00:00:00:00:01", OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}})
	if err != nil {
		t.Fatal(err)
	}
	c, _, err := websocket.Dial(ctx, wsURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	next := func(want string) liveMsg {
		t.Helper()
		for {
			_, b, err := c.Read(ctx)
			if err != nil {
				t.Fatalf("waiting for a %q message: %v", want, err)
			}
			var m liveMsg
			if err := json.Unmarshal(b, &m); err != nil {
				t.Fatalf("message %q: %v", b, err)
			}
			if m.Type == want {
				return m
			}
		}
	}
	snap := next("snapshot")
	if len(snap.Tasks) != 1 || snap.Tasks[0].ID != first.TaskID || snap.Tasks[0].Status != "pending" {
		t.Fatalf("snapshot tasks = %+v", snap.Tasks)
	}
	if _, err := st.CancelTask(ctx, first.TaskID, ""); err != nil {
		t.Fatal(err)
	}
	if m := next("task"); m.Task.ID != first.TaskID || m.Task.Status != "cancelled" {
		t.Fatalf("pushed task = %+v", m.Task)
	}
	if m := next("regions"); len(m.Regions) != 1 || m.Regions[0].Name != "dc1" || m.Regions[0].Health != "offline" {
		t.Fatalf("pushed regions = %+v", m.Regions)
	}

	stopEtcd.Do(srv.Close)
	if m := next("etcd"); !strings.Contains(m.EtcdError, "etcd unreachable") {
		t.Fatalf("etcd message = %+v", m)
	}
}
