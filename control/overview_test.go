package control

import (
	"context"
	"strings"
	"testing"
	"time"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/federation"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

// Health history is what the hub observes (observe), never a side effect of a page's
// read (regions); a page still shows a change the hub has yet to record, and an
// offline region's last heartbeat.
func TestOverviewHealthHistory(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	etcd := storetest.Start(t)
	ov := newOverview(federation.New(etcd.Store, nil, nil), 5)
	hb, err := etcd.Store.StartHeartbeat(ctx, func() store.Heartbeat {
		return store.Heartbeat{Region: "dc1", APIURL: "http://dc1.example:8081", Version: "v1", Images: []contract.ImageRef{{OSRef: contract.OSRef{OSType: "ubuntu", OSVersion: "22.04"}}}}
	}, 10*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	one := func(rs []regionView, _ int, err error) regionView {
		t.Helper()
		if err != nil || len(rs) != 1 || rs[0].Name != "dc1" {
			t.Fatalf("regions = %+v, %v", rs, err)
		}
		return rs[0]
	}
	notes := func(rv regionView) string {
		var s []string
		for _, e := range ov.history(rv) {
			s = append(s, e.Note)
		}
		return strings.Join(s, ", ")
	}

	// A page's read records nothing, but shows what it read.
	rv := one(ov.regions(ctx))
	if got := notes(rv); got != "first seen online" {
		t.Errorf("history as a page reads it = %q", got)
	}
	if n := len(ov.health.events); n != 0 {
		t.Errorf("a page read recorded %d regions' history", n)
	}
	if _, ok := ov.unmatchedTotal(); ok {
		t.Error("unmatched total known before any observation")
	}

	// The hub's observation records; then a page shows the recorded event.
	one(ov.observe(ctx))
	if got := notes(one(ov.regions(ctx))); got != "first seen online" {
		t.Errorf("history after observe = %q", got)
	}
	if n, ok := ov.unmatchedTotal(); !ok || n != 0 {
		t.Errorf("unmatched total = %d, %v", n, ok)
	}

	if err := hb.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	stale := rv // read before the hub saw anything: must not claim a change
	rv = one(ov.regions(ctx))
	if rv.Online || rv.LastSeen == nil || rv.APIURL != "http://dc1.example:8081" || rv.Version != "v1" {
		t.Errorf("offline region = %+v, want its last heartbeat", rv)
	}
	if got := notes(rv); got != "went offline, first seen online" {
		t.Errorf("history as a page reads it after the stop = %q", got)
	}
	one(ov.observe(ctx))
	if got := notes(rv); got != "went offline, first seen online" {
		t.Errorf("history after observing the stop = %q", got)
	}
	if got := notes(stale); got != "went offline, first seen online" {
		t.Errorf("history for a read older than the last observation = %q", got)
	}
	if n := len(ov.health.events["dc1"]); n != 2 {
		t.Errorf("recorded %d events, want 2", n)
	}
}
