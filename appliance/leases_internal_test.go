package appliance

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"lpmos.dev/lpmos/netboot/dhcpd"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/etcdserver"
)

func startEtcd(t *testing.T, dir string) (*etcdserver.Server, *clientv3.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := etcdserver.Start(ctx, etcdserver.Config{DataDir: dir, ListenClientURLs: "http://127.0.0.1:0", ListenPeerURLs: "http://127.0.0.1:0", Quiet: true})
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	return srv, cli
}

// Never lose a stored lease: concurrent Puts through the group commit on the
// real store, the etcd client (then etcd itself) taken away mid-storm; after
// etcd restarts on its data, every Put that returned nil (an ACK would have
// left) is there, with its MAC.
func TestGroupCommitDurable(t *testing.T) {
	for _, cut := range []string{"client", "server"} {
		t.Run(cut, func(t *testing.T) {
			dir := t.TempDir()
			srv, cli := startEtcd(t, dir)
			g := dhcpd.NewGroupCommit(&etcdLeases{s: store.New(cli), region: "r1"})
			g.Timeout = 2 * time.Second
			var mu sync.Mutex
			acked := map[netip.Addr]string{}
			var wg sync.WaitGroup
			for w := range 32 {
				wg.Go(func() {
					for i := 0; ; i++ {
						l := dhcpd.Lease{MAC: fmt.Sprintf("02:00:00:%02x:%02x:%02x", w, i>>8, i&0xff), IP: netip.AddrFrom4([4]byte{10, byte(w), byte(i >> 8), byte(i)}), Expiry: time.Now().Add(time.Hour)}
						if err := g.Put(context.Background(), l); err != nil {
							return
						}
						mu.Lock()
						acked[l.IP] = l.MAC
						mu.Unlock()
					}
				})
			}
			time.Sleep(300 * time.Millisecond)
			if cut == "client" {
				cli.Close()
				wg.Wait()
				srv.Close()
			} else {
				srv.Close()
				wg.Wait()
				cli.Close()
			}
			srv2, cli2 := startEtcd(t, dir)
			defer srv2.Close()
			defer cli2.Close()
			stored, err := store.New(cli2).ListLeases(context.Background(), "r1")
			if err != nil {
				t.Fatal(err)
			}
			have := map[string]string{}
			for _, l := range stored {
				have[l.IP] = l.MAC
			}
			for ip, mac := range acked {
				if have[ip.String()] != mac {
					t.Fatalf("acked lease %v -> %s lost (stored %q)", ip, mac, have[ip.String()])
				}
			}
			if len(acked) < 100 {
				t.Fatalf("only %d Puts before the cut: test too weak", len(acked))
			}
			t.Logf("%d acked, %d stored, %d groups", len(acked), len(stored), g.Groups())
		})
	}
}
