package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

// ApplyLeases: 300 changes in ceil(300/128) = 3 transactions (etcd revisions),
// deletes and duplicates handled, all read back.
func TestApplyLeases(t *testing.T) {
	e := storetest.Start(t)
	ctx := context.Background()
	lease := func(i int) store.DHCPLease {
		return store.DHCPLease{MAC: fmt.Sprintf("02:00:00:00:%02x:%02x", i>>8, i&0xff), IP: fmt.Sprintf("10.1.%d.%d", i>>8, i&0xff), Expiry: time.Now().Add(time.Hour).UTC().Truncate(time.Second)}
	}
	for i := range 5 {
		if err := e.Store.PutLease(ctx, "r1", lease(1000+i)); err != nil {
			t.Fatal(err)
		}
	}
	rev := func() int64 {
		r, err := e.Client.Get(ctx, "/os/")
		if err != nil {
			t.Fatal(err)
		}
		return r.Header.Revision
	}
	before := rev()
	var puts []store.DHCPLease
	for i := range 296 {
		puts = append(puts, lease(i))
	}
	dup := lease(7)
	dup.Hostname = "last"
	puts = append(puts, dup)
	dels := []string{lease(1000).IP, lease(1001).IP, lease(1002).IP, lease(1003).IP, lease(1000).IP, lease(8).IP}
	if err := e.Store.ApplyLeases(ctx, "r1", puts, dels); err != nil {
		t.Fatal(err)
	}
	// 296 puts + 4 distinct deletes (8 is put, so its delete is dropped) = 300 ops.
	if d := rev() - before; d != 3 {
		t.Fatalf("%d transactions, want 3", d)
	}
	got, err := e.Store.ListLeases(ctx, "r1")
	if err != nil {
		t.Fatal(err)
	}
	byIP := map[string]store.DHCPLease{}
	for _, l := range got {
		byIP[l.IP] = l
	}
	if len(byIP) != 297 {
		t.Fatalf("%d leases, want 296 + 1 untouched", len(byIP))
	}
	if byIP[lease(7).IP].Hostname != "last" || byIP[lease(1004).IP].MAC == "" || byIP[lease(8).IP].MAC == "" {
		t.Fatalf("wrong contents: %+v %+v", byIP[lease(7).IP], byIP[lease(8).IP])
	}
}

// LeaseWriter: groups go to the embedded etcd in-process and are read back over
// the network client; once etcd's authentication is on, the in-process client
// (no user) is refused and the writer carries on through the authenticated one,
// the group stored whole.
func TestLeaseWriterInProcessThenAuth(t *testing.T) {
	e := storetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	lc := e.Server.LocalClient()
	t.Cleanup(func() { lc.Close() })
	local := store.New(lc)
	lease := func(i int) store.DHCPLease {
		return store.DHCPLease{MAC: fmt.Sprintf("02:00:00:00:00:%02x", i), IP: fmt.Sprintf("10.2.0.%d", i), Expiry: time.Now().Add(time.Hour).UTC().Truncate(time.Second)}
	}
	w := store.NewLeaseWriter(e.Store, local)
	if err := w.ApplyLeases(ctx, "r1", []store.DHCPLease{lease(1), lease(2), lease(3)}, nil); err != nil {
		t.Fatal(err)
	}
	if err := w.ApplyLeases(ctx, "r1", []store.DHCPLease{lease(4)}, []string{lease(2).IP}); err != nil {
		t.Fatal(err)
	}
	if !w.InProcess() {
		t.Fatal("writer left the in-process client without auth on")
	}
	ips := func(s *store.Store) map[string]string {
		got, err := s.ListLeases(ctx, "r1")
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, l := range got {
			m[l.IP] = l.MAC
		}
		return m
	}
	if got := ips(e.Store); len(got) != 3 || got[lease(1).IP] != lease(1).MAC || got[lease(4).IP] != lease(4).MAC || got[lease(2).IP] != "" {
		t.Fatalf("over the network client: %v", got)
	}

	// etcdctl user add root; user grant-role root root; auth enable
	if _, err := e.Client.UserAdd(ctx, "root", "rootpw"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Client.UserGrantRole(ctx, "root", "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Client.AuthEnable(ctx); err != nil {
		t.Fatal(err)
	}
	authed, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints, Username: "root", Password: "rootpw", DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { authed.Close() })
	std := store.New(authed)
	if err := local.ApplyLeases(ctx, "r1", []store.DHCPLease{lease(9)}, nil); err == nil {
		t.Fatal("in-process write accepted with auth on")
	}
	w = store.NewLeaseWriter(std, local)
	if err := w.ApplyLeases(ctx, "r1", []store.DHCPLease{lease(5), lease(6)}, []string{lease(1).IP}); err != nil {
		t.Fatalf("with auth on: %v", err)
	}
	if w.InProcess() {
		t.Fatal("writer still in-process after a refusal")
	}
	if got := ips(std); len(got) != 4 || got[lease(5).IP] != lease(5).MAC || got[lease(6).IP] != lease(6).MAC || got[lease(1).IP] != "" || got[lease(9).IP] != "" {
		t.Fatalf("after the fallback: %v", got)
	}
}
