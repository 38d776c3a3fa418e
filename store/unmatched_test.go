package store_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

// Reports from invented MACs (POST /api/report is open to the boot network) are capped
// per region, oldest evicted with its index key, and expire after UnmatchedTTL.
func TestUnmatchedReportsAreBounded(t *testing.T) {
	e := storetest.Start(t)
	s, ctx := e.Store, ctxT(t)
	start := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	n := store.UnmatchedMax + 5
	for i := range n {
		now := start.Add(time.Duration(i) * time.Second)
		s.SetClock(func() time.Time { return now })
		if _, err := s.Report(ctx, "dc1", fmt.Sprintf("02:00:00:00:%02x:%02x", i>>8, i&0xff), json.RawMessage(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	reports := e.Dump(t, "/os/unmatched_reports/dc1/")
	index := e.Dump(t, "/os/index/unmatched/dc1/")
	if len(reports) != store.UnmatchedMax || len(index) != store.UnmatchedMax {
		t.Fatalf("%d reports sent: %d kept, %d index keys; want %d", n, len(reports), len(index), store.UnmatchedMax)
	}
	if _, ok := index["/os/index/unmatched/dc1/02:00:00:00:00:00"]; ok {
		t.Fatal("the oldest report's index key survived its eviction")
	}
	// A day after the last, those older than UnmatchedTTL are gone: the reports of the
	// last 600 s (601 of them, one a second, both ends counted) stay.
	last := start.Add(time.Duration(n-1) * time.Second)
	s.SetClock(func() time.Time { return last.Add(store.UnmatchedTTL - 10*time.Minute) })
	expired, err := s.ExpireUnmatched(ctx, "dc1")
	if err != nil || expired != store.UnmatchedMax-601 {
		t.Fatalf("expired %d, %v; want %d", expired, err, store.UnmatchedMax-601)
	}
	if left := e.Dump(t, "/os/index/unmatched/dc1/"); len(left) != 601 {
		t.Fatalf("%d index keys left, want 601", len(left))
	}
}

// Reports of new MACs arriving at once at the cap each make room before any is stored;
// the cap still holds once they are all in (the WAN-cut test saw 1,002 of 1,000).
func TestUnmatchedCapHoldsUnderConcurrentReports(t *testing.T) {
	e := storetest.Start(t)
	s, ctx := e.Store, ctxT(t)
	for i := range store.UnmatchedMax {
		if _, err := s.Report(ctx, "dc1", fmt.Sprintf("02:00:00:00:%02x:%02x", i>>8, i&0xff), json.RawMessage(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	const burst = 16
	errs := make(chan error, burst)
	for i := range burst {
		go func() {
			_, err := s.Report(ctx, "dc1", fmt.Sprintf("02:00:00:01:00:%02x", i), json.RawMessage(`{}`))
			errs <- err
		}()
	}
	for range burst {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	n := len(e.Dump(t, "/os/unmatched_reports/dc1/"))
	if n > store.UnmatchedMax || n < store.UnmatchedMax-burst {
		t.Fatalf("%d reports kept after a burst of %d new MACs at the cap; want at most %d (and not far below)", n, burst, store.UnmatchedMax)
	}
	t.Logf("%d reports kept (cap %d)", n, store.UnmatchedMax)
}
