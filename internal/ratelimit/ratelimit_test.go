package ratelimit

import (
	"testing"
	"time"
)

func TestBucketsRefill(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	k := NewKeyed(3, time.Second)
	for i := range 3 {
		if !k.Allow("a", t0) {
			t.Fatalf("event %d of the burst refused", i)
		}
	}
	if k.Allow("a", t0) || !k.Allow("b", t0) {
		t.Fatal("a's fourth allowed, or b refused")
	}
	if !k.Allow("a", t0.Add(time.Second)) || k.Allow("a", t0.Add(time.Second)) {
		t.Fatal("one second refills exactly one")
	}
	if !NewKeyed(0, time.Second).Allow("x", t0) {
		t.Fatal("a zero burst limits")
	}
}
