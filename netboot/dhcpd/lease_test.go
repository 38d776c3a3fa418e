package dhcpd

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// slowApplier is a LeaseApplier whose every Apply costs about an fsync.
type slowApplier struct {
	MemLeases
	applies atomic.Int64
	fail    atomic.Bool
}

func (s *slowApplier) Apply(ctx context.Context, puts []Lease, dels []netip.Addr) error {
	s.applies.Add(1)
	time.Sleep(time.Millisecond)
	if s.fail.Load() {
		return errors.New("store down")
	}
	return s.MemLeases.Apply(ctx, puts, dels)
}

func testLease(i int) Lease {
	return Lease{MAC: fmt.Sprintf("02:00:00:00:%02x:%02x", i>>8, i&0xff), IP: netip.AddrFrom4([4]byte{10, 9, byte(i >> 8), byte(i)}), Expiry: time.Now().Add(time.Hour)}
}

// 200 concurrent Puts are stored in far fewer than 200 groups, and every
// Put that returned is stored.
func TestGroupCommitBatches(t *testing.T) {
	st := &slowApplier{}
	g := NewGroupCommit(st)
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Go(func() {
			if err := g.Put(context.Background(), testLease(i)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	all, _ := st.Leases(context.Background())
	if len(all) != 200 {
		t.Fatalf("%d leases stored, want 200", len(all))
	}
	if n := st.applies.Load(); n > 50 || n != g.Groups() {
		t.Fatalf("%d Apply calls (%d groups) for 200 Puts, want few", n, g.Groups())
	}
	t.Logf("200 Puts in %d groups", st.applies.Load())
	// Order within a group: the last change for an IP wins.
	l := testLease(1)
	var wg2 sync.WaitGroup
	wg2.Go(func() { g.Delete(context.Background(), l.IP) })
	wg2.Wait()
	if err := g.Put(context.Background(), l); err != nil {
		t.Fatal(err)
	}
	if all, _ := st.Leases(context.Background()); len(all) != 200 {
		t.Fatalf("after delete+put: %d leases", len(all))
	}
}

// Concurrent REQUESTs through the index: distinct addresses, all stored,
// few groups; a failing store undoes the binding (no ACK, address free).
func TestLeasesGroupCommit(t *testing.T) {
	st := &slowApplier{}
	pool := &Pool{Start: netip.MustParseAddr("10.9.0.1"), End: netip.MustParseAddr("10.9.3.254"), Subnet: netip.MustParsePrefix("10.9.0.0/22"), LeaseTime: time.Hour}
	ls := newLeases(pool, NewGroupCommit(st))
	now := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	got := map[netip.Addr]string{}
	for i := range 300 {
		wg.Go(func() {
			mac := testLease(i).MAC
			ip, err := ls.offer(context.Background(), mac, netip.Addr{}, now)
			if err != nil {
				t.Error(err)
				return
			}
			l, err := ls.commit(context.Background(), mac, ip, "", now)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if other, dup := got[l.IP]; dup {
				t.Errorf("%v to both %s and %s", l.IP, other, mac)
			}
			got[l.IP] = mac
		})
	}
	wg.Wait()
	stored, _ := st.Leases(context.Background())
	if len(stored) != 300 || len(got) != 300 {
		t.Fatalf("stored %d, acked %d, want 300", len(stored), len(got))
	}
	for _, l := range stored {
		if got[l.IP] != l.MAC {
			t.Fatalf("stored %v for %s, acked to %s", l.IP, l.MAC, got[l.IP])
		}
	}
	t.Logf("300 commits in %d groups", st.applies.Load())
	if st.applies.Load() > 150 {
		t.Fatalf("%d groups for 300 commits", st.applies.Load())
	}

	st.fail.Store(true)
	mac := "02:ff:00:00:00:01"
	ip, err := ls.offer(context.Background(), mac, netip.Addr{}, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ls.commit(context.Background(), mac, ip, "", now); err == nil {
		t.Fatal("commit succeeded on a failing store")
	}
	if _, ok := ls.lookup(mac); ok {
		t.Fatal("binding kept after the store failed")
	}
	// A renewal that fails keeps the stored lease in the index.
	old := stored[0]
	if _, err := ls.commit(context.Background(), old.MAC, old.IP, "", now); err == nil {
		t.Fatal("renewal succeeded on a failing store")
	}
	if l, ok := ls.lookup(old.MAC); !ok || l.IP != old.IP {
		t.Fatalf("after failed renewal: %v %v", l, ok)
	}
}

// The deferred ACK path: one goroutine (the socket reader) commits 300
// leases without waiting; each done runs only once its lease is in the store,
// with distinct addresses, in few groups. A refusal runs done at once; a
// failing store gives done the error and undoes the binding.
func TestLeasesCommitThen(t *testing.T) {
	st := &slowApplier{}
	pool := &Pool{Start: netip.MustParseAddr("10.9.0.1"), End: netip.MustParseAddr("10.9.3.254"), Subnet: netip.MustParsePrefix("10.9.0.0/22"), LeaseTime: time.Hour}
	ls := newLeases(pool, NewGroupCommit(st))
	now := time.Now()
	type result struct {
		l      Lease
		err    error
		stored bool
	}
	results := make(chan result, 300)
	for i := range 300 {
		mac := testLease(i).MAC
		ip, err := ls.offer(context.Background(), mac, netip.Addr{}, now)
		if err != nil {
			t.Fatal(err)
		}
		ls.commitThen(context.Background(), mac, ip, "", now, func(l Lease, err error) {
			st.mu.Lock()
			got, ok := st.m[l.IP]
			st.mu.Unlock()
			results <- result{l, err, ok && got.MAC == l.MAC}
		})
	}
	got := map[netip.Addr]string{}
	deadline := time.After(10 * time.Second)
	for range 300 {
		select {
		case r := <-results:
			if r.err != nil || !r.stored {
				t.Fatalf("done(%v, %v) with the lease stored: %t", r.l, r.err, r.stored)
			}
			if other, dup := got[r.l.IP]; dup {
				t.Fatalf("%v to both %s and %s", r.l.IP, other, r.l.MAC)
			}
			got[r.l.IP] = r.l.MAC
		case <-deadline:
			t.Fatalf("%d of 300 done after 10s", len(got))
		}
	}
	t.Logf("300 deferred commits in %d groups", st.applies.Load())
	if st.applies.Load() > 100 {
		t.Fatalf("%d groups for 300 commits", st.applies.Load())
	}

	// Held by another client: refused before commitThen returns.
	var held error
	ls.commitThen(context.Background(), "02:ff:00:00:00:02", testLeaseIP(t, got), "", now, func(_ Lease, err error) { held = err })
	if !errors.Is(held, errHeld) {
		t.Fatalf("commit of a held address: done got %v", held)
	}

	st.fail.Store(true)
	mac := "02:ff:00:00:00:01"
	ip, err := ls.offer(context.Background(), mac, netip.Addr{}, now)
	if err != nil {
		t.Fatal(err)
	}
	failed := make(chan error, 1)
	ls.commitThen(context.Background(), mac, ip, "", now, func(_ Lease, err error) { failed <- err })
	select {
	case err := <-failed:
		if err == nil {
			t.Fatal("done without an error on a failing store")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("done not called after 10s")
	}
	if _, ok := ls.lookup(mac); ok {
		t.Fatal("binding kept after the store failed")
	}
}

// testLeaseIP is one of the addresses in got.
func testLeaseIP(t *testing.T, got map[netip.Addr]string) netip.Addr {
	for ip := range got {
		return ip
	}
	t.Fatal("no address")
	return netip.Addr{}
}

// MaxGroup ends the gather early: with an hour's gather, MaxGroup concurrent Puts
// are stored as one group at once.
func TestGroupCommitMaxGroup(t *testing.T) {
	st := &slowApplier{}
	g := NewGroupCommit(st)
	g.Gather, g.MaxGroup = time.Hour, 10
	done := make(chan error, 10)
	for i := range 10 {
		go func() { done <- g.Put(context.Background(), testLease(i)) }()
	}
	deadline := time.After(10 * time.Second)
	for range 10 {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-deadline:
			t.Fatal("Puts still waiting after 10s: the full group did not end the gather")
		}
	}
	if n := g.Groups(); n != 1 {
		t.Fatalf("%d groups for MaxGroup Puts, want 1", n)
	}
}

// A stored group's deferred ACKs run in order, AckBurst at a time with a pause
// between bursts (a client sharing the CPUs drains its socket meanwhile); a group
// of at most AckBurst runs at once.
func TestGroupCommitPacesAcks(t *testing.T) {
	st := &slowApplier{}
	g := NewGroupCommit(st)
	g.Gather, g.MaxGroup, g.AckBurst = 5*time.Millisecond, 0, 32
	var mu sync.Mutex
	var order []int
	var at []time.Time
	all := make(chan struct{})
	const n = 100
	for i := range n {
		grp := g.enqueue(leaseOp{l: testLease(i)})
		g.after(grp, func() {
			mu.Lock()
			defer mu.Unlock()
			order = append(order, i)
			at = append(at, time.Now())
			if len(order) == n {
				close(all)
			}
		})
	}
	select {
	case <-all:
	case <-time.After(10 * time.Second):
		t.Fatalf("%d of %d ACKs after 10s", len(order), n)
	}
	if g.Groups() != 1 {
		t.Fatalf("%d groups, want 1 (the test queues within one gather)", g.Groups())
	}
	for i, v := range order {
		if v != i {
			t.Fatalf("ACK %d ran as number %d", v, i)
		}
	}
	for i := 1; i < n; i++ {
		gap := at[i].Sub(at[i-1])
		if i%32 == 0 && gap < minAckGap {
			t.Errorf("ACK %d only %v after the previous burst, want >= %v", i, gap, minAckGap)
		}
	}
	pauses := func() int64 {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.ackPauses
	}
	if p := pauses(); p != 3 {
		t.Errorf("%d pauses for 100 ACKs in bursts of 32, want 3", p)
	}

	// A small group: no pause.
	small := make(chan time.Time, 32)
	for i := range 32 {
		grp := g.enqueue(leaseOp{l: testLease(200 + i)})
		g.after(grp, func() { small <- time.Now() })
	}
	for i := range 32 {
		select {
		case <-small:
		case <-time.After(10 * time.Second):
			t.Fatalf("%d of 32 ACKs after 10s", i)
		}
	}
	if p := pauses(); p != 3 {
		t.Errorf("a group of 32 ACKs paused %d times", p-3)
	}
}
