package store_test

import (
	"errors"
	"strings"
	"testing"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

// ReadRegionKeys reads one region exactly (dc1, not dc10; its task index entries, not
// another region's; leased keys named apart); WriteRegionKeys and DeleteRegionKeys
// refuse, writing nothing, when a key is not as they expect.
func TestRegionKeys(t *testing.T) {
	src, dst := storetest.Start(t), storetest.Start(t)
	ctx := ctxT(t)
	for _, r := range []string{"dc1", "dc10"} {
		if _, err := src.Store.CreateTask(ctx, store.NewTask{RegionID: r, TargetMAC: "52:54:00:00:00:01", OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}}); err != nil {
			t.Fatal(err)
		}
	}
	hb := advertise(t, src.Store, "dc1")
	k, err := src.Store.ReadRegionKeys(ctx, "dc1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(k.Leased) != 1 || k.Leased[0] != "/os/region/dc1/heartbeat" {
		t.Fatalf("leased: %v", k.Leased)
	}
	taskIndex := 0
	for i, kv := range k.KVs {
		if strings.Contains(kv.Key, "dc10") || strings.HasPrefix(kv.Key, "/os/index/task/") && kv.Value != "dc1" {
			t.Fatalf("dc1's keys hold %s=%s", kv.Key, kv.Value)
		}
		if strings.HasPrefix(kv.Key, "/os/index/task/") {
			taskIndex++
		}
		if i > 0 && k.KVs[i-1].Key >= kv.Key {
			t.Fatal("not sorted")
		}
	}
	if taskIndex != 1 || k.Kinds()["task index"] != 1 || k.Kinds()["tasks"] != 2 || k.Count() != len(k.KVs) {
		t.Fatalf("kinds %v of %d keys", k.Kinds(), k.Count())
	}
	if _, err := src.Store.ReadRegionKeys(ctx, "dc1/../auth", 0); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("bad region: %v", err)
	}

	// A key present in the target stops the batch that holds it: nothing of it written.
	if _, err := dst.Client.Put(ctx, k.KVs[len(k.KVs)-1].Key, "theirs"); err != nil {
		t.Fatal(err)
	}
	before := dst.Dump(t, "/")
	if _, err := dst.Store.WriteRegionKeys(ctx, k.KVs); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("write over a key: %v", err)
	}
	storetest.AssertSame(t, before, dst.Dump(t, "/"))
	if _, err := dst.Client.Delete(ctx, k.KVs[len(k.KVs)-1].Key); err != nil {
		t.Fatal(err)
	}
	rev, err := dst.Store.WriteRegionKeys(ctx, k.KVs)
	if err != nil {
		t.Fatal(err)
	}
	copied, err := dst.Store.ReadRegionKeys(ctx, "dc1", rev)
	if err != nil || copied.Hash() != k.Hash() || copied.Count() != k.Count() {
		t.Fatalf("copy reads back as %d keys %s, want %d %s: %v", copied.Count(), copied.Hash(), k.Count(), k.Hash(), err)
	}
	if changed, n := copied.ChangedSince(rev-1, 10); n != k.Count() || len(changed) != min(10, n) {
		t.Fatalf("ChangedSince: %d %v", n, changed)
	}

	// A key changed since the read stops the deletion.
	if err := hb.Stop(ctx); err != nil { // writes status offline
		t.Fatal(err)
	}
	before = src.Dump(t, "/")
	if _, err := src.Store.DeleteRegionKeys(ctx, k.KVs); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("delete of a changed key: %v", err)
	}
	storetest.AssertSame(t, before, src.Dump(t, "/"))
	now, err := src.Store.ReadRegionKeys(ctx, "dc1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := src.Store.DeleteRegionKeys(ctx, now.KVs); err != nil || n != now.Count() {
		t.Fatalf("delete: %d %v", n, err)
	}
	for key := range src.Dump(t, "/os/") {
		if strings.Contains(key, "/dc1/") {
			t.Fatalf("left: %s", key)
		}
	}
	if left := src.Dump(t, "/os/install/task/dc10/"); len(left) == 0 {
		t.Fatal("dc10's task deleted with dc1's")
	}
	// Reading at a compacted revision says so.
	resp, err := src.Client.Get(ctx, "/os/health-probe")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.Client.Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Store.ReadRegionKeys(ctx, "dc1", now.Revision); !errors.Is(err, store.ErrRevisionCompacted) {
		t.Fatalf("compacted: %v", err)
	}
}
