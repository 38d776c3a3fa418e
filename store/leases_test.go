package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

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
