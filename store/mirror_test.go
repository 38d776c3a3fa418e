package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/storetest"
)

// cutProxy is a TCP proxy in front of etcd that a test cuts like a WAN link: every
// connection through it is closed, and new ones are closed at once, until Restore.
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]bool
}

func startProxy(t testing.TB, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	t.Cleanup(func() { ln.Close(); p.Cut() })
	go p.serve()
	return p
}

func (p *cutProxy) Addr() string { return p.ln.Addr().String() }

func (p *cutProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		cut := p.cut
		p.mu.Unlock()
		if cut {
			c.Close()
			continue
		}
		up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[up] = true, true
		p.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			io.Copy(dst, src)
			dst.Close()
			src.Close()
			p.mu.Lock()
			delete(p.conns, dst)
			delete(p.conns, src)
			p.mu.Unlock()
		}
		go pipe(c, up)
		go pipe(up, c)
	}
}

// Cut closes every connection and refuses new ones.
func (p *cutProxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		c.Close()
	}
}

func (p *cutProxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
}

// mirrorRun is a Mirror running for a test, with the changes it passed on.
type mirrorRun struct {
	m       *store.Mirror
	mu      sync.Mutex
	changes map[string]int // per change (kind, ids, part, deleted): how many times
	resyncs int            // ChangeResync calls
	regions map[string]bool
	armed   bool // firstAt is set at the next change
	firstAt time.Time
	done    chan error
}

func changeKey(c store.Change) string {
	return fmt.Sprintf("%s %s %s %s %s %v", c.Kind, c.Region, c.TaskID, c.ID, c.Part, c.Deleted)
}

func runMirror(t *testing.T, st *store.Store, region string) *mirrorRun {
	t.Helper()
	r := &mirrorRun{m: store.NewMirror(st, region), changes: map[string]int{}, regions: map[string]bool{}, done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		r.done <- r.m.Run(ctx, func(c store.Change) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.regions[c.Region] = true
			if c.Kind == store.ChangeResync {
				r.resyncs++
				return
			}
			r.changes[changeKey(c)]++
			if r.armed {
				r.armed, r.firstAt = false, time.Now()
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-r.done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("mirror Run ended with %v, want context.Canceled", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("mirror Run did not end within 10 s of its context")
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for !r.m.Loaded() {
		if time.Now().After(deadline) {
			t.Fatal("mirror not loaded within 20 s")
		}
		select {
		case err := <-r.done:
			t.Fatalf("mirror Run: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	return r
}

// arm notes the time of the next change the mirror passes on (firstChange).
func (r *mirrorRun) arm() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.armed = true
}

func (r *mirrorRun) firstChange() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.firstAt
}

func (r *mirrorRun) snapshot() (map[string]int, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]int, len(r.changes))
	for k, v := range r.changes {
		out[k] = v
	}
	return out, r.resyncs
}

// waitCaught waits until the mirror's Revision reaches the cluster's and returns how
// long that took.
func waitCaught(t testing.TB, m *store.Mirror, s *store.Store, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	rev, err := s.Revision(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	for m.Revision() < rev {
		if time.Since(start) > timeout {
			t.Fatalf("mirror at revision %d, cluster at %d after %s", m.Revision(), rev, timeout)
		}
		time.Sleep(time.Millisecond) // polling with a deadline
	}
	return time.Since(start)
}

// sameAsStore checks every answer of the mirror against the store's own for region.
func sameAsStore(t *testing.T, m *store.Mirror, s *store.Store, region string) {
	t.Helper()
	ctx := ctxT(t)
	for _, st := range append([]store.Status{""}, store.Statuses...) {
		walkBoth(t, fmt.Sprintf("tasks %s/%q", region, st),
			func(p store.Page) ([]store.Task, store.PageMarks, error) { return m.TaskPage(st, p) },
			func(p store.Page) ([]store.Task, store.PageMarks, error) { return s.TaskPage(ctx, region, st, p) })
		n, err := s.CountTasks(ctx, region, st)
		if err != nil {
			t.Fatal(err)
		}
		if got := m.CountTasks(st); got != n {
			t.Errorf("CountTasks(%q) = %d, store %d", st, got, n)
		}
	}
	walkBoth(t, "unmatched "+region,
		func(p store.Page) ([]store.UnmatchedReport, store.PageMarks, error) { return m.UnmatchedPage(p) },
		func(p store.Page) ([]store.UnmatchedReport, store.PageMarks, error) {
			return s.UnmatchedPage(ctx, region, p, false)
		})
	all, err := s.ListTasks(ctx, store.ListFilter{Region: region})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range all {
		want.Hardware = nil
		got, ok := m.Task(want.TaskID)
		if !ok || !reflect.DeepEqual(got, want) {
			t.Errorf("Task(%s) = %v %s\nstore: %s", want.TaskID, ok, js(got), js(want))
		}
	}
	want, err := s.GetRegion(ctx, region)
	if err != nil {
		t.Fatal(err)
	}
	got, ok := m.Region()
	if !ok || !reflect.DeepEqual(got, want) {
		t.Errorf("Region() = %v %s\nstore: %s", ok, js(got), js(want))
	}
}

func js(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// walkBoth walks every page of a list (2 rows a page) on the mirror and on the store,
// forwards then backwards, each with the other's cursors: the same rows, the same
// marks at every step.
func walkBoth[T any](t *testing.T, name string, mirror, st func(store.Page) ([]T, store.PageMarks, error)) {
	t.Helper()
	step := func(p store.Page) store.PageMarks {
		t.Helper()
		mr, mm, err := mirror(p)
		if err != nil {
			t.Fatalf("%s: mirror page %+v: %v", name, p, err)
		}
		sr, sm, err := st(p)
		if err != nil {
			t.Fatalf("%s: store page %+v: %v", name, p, err)
		}
		if len(mr) == 0 && len(sr) == 0 && mm == sm {
			return sm
		}
		if !reflect.DeepEqual(mr, sr) || mm != sm {
			t.Fatalf("%s: page %+v\nmirror %s %+v\nstore  %s %+v", name, p, js(mr), mm, js(sr), sm)
		}
		return sm
	}
	marks := step(store.Page{Limit: 2})
	var pages []store.PageMarks
	for i := 0; marks.Next != ""; i++ {
		pages = append(pages, marks)
		marks = step(store.Page{Limit: 2, After: marks.Next})
	}
	for marks.Prev != "" {
		marks = step(store.Page{Limit: 2, Before: marks.Prev})
	}
	if len(pages) > 0 && marks != pages[0] {
		t.Fatalf("%s: walking back ended at %+v, the first page's marks are %+v", name, marks, pages[0])
	}
}

// mirrorHeartbeat is a heartbeat that beats only when told (a TTL of an hour).
func mirrorHeartbeat(t testing.TB, s *store.Store, region string) *store.Heartbeater {
	t.Helper()
	hb, err := s.StartHeartbeat(ctxT(t), func() store.Heartbeat {
		return store.Heartbeat{Region: region, Version: "test", Images: []contract.ImageRef{ubuntuImage}}
	}, time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hb.Stop(context.Background()) })
	return hb
}

// macSeq numbers the MACs of the tasks and reports a test makes on the way.
var macSeq atomic.Int64

func mac(i int) string {
	return fmt.Sprintf("02:00:00:%02x:%02x:%02x", (i>>16)&0xff, (i>>8)&0xff, i&0xff)
}

// installingTask creates a task for mac in region and takes it to installing.
func installingTask(t testing.TB, s *store.Store, region, m string) store.Task {
	t.Helper()
	ctx := ctxT(t)
	task, err := s.CreateTask(ctx, store.NewTask{RegionID: region, TargetMAC: m, OSRef: ubuntuImage.OSRef})
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.Report(ctx, region, m, json.RawMessage(oneDisk))
	if err != nil || !res.Matched {
		t.Fatalf("report: %+v %v", res, err)
	}
	if _, err := s.ApproveTask(as(ctx, "alice"), task.TaskID, res.Task.Plan.Digest); err != nil {
		t.Fatal(err)
	}
	task, err = s.RecordProgress(ctx, store.ProgressUpdate{Region: region, MAC: m, TaskID: task.TaskID,
		Progress: contract.Progress{Stage: contract.StageWriting, Percentage: 10, BytesDone: 1 << 20, BytesTotal: 48 << 20, Message: "writing the image"}})
	if err != nil {
		t.Fatal(err)
	}
	return task
}

func progress(t testing.TB, s *store.Store, task store.Task, pct float64) {
	t.Helper()
	if _, err := s.RecordProgress(ctxT(t), store.ProgressUpdate{Region: task.RegionID, MAC: task.TargetMAC, TaskID: task.TaskID,
		Progress: contract.Progress{Stage: contract.StageWriting, Percentage: pct, BytesDone: int64(pct) << 20, BytesTotal: 100 << 20}}); err != nil {
		t.Fatal(err)
	}
}

// The mirror of dc1, loaded then following every kind of change, answers as the
// store does after each, and never shows dc10's keys.
func TestMirrorFollowsRegion(t *testing.T) {
	e := storetest.Start(t)
	s, ctx := e.Store, ctxT(t)
	hb1 := mirrorHeartbeat(t, s, "dc1")
	mirrorHeartbeat(t, s, "dc10")
	// Before the load: tasks in several states, unmatched reports, in both regions.
	pending, err := s.CreateTask(ctx, store.NewTask{RegionID: "dc1", TargetMAC: mac(1), OSRef: ubuntuImage.OSRef})
	if err != nil {
		t.Fatal(err)
	}
	installing := installingTask(t, s, "dc1", mac(2))
	other := installingTask(t, s, "dc10", mac(2))
	for _, r := range []string{"dc1", "dc10"} {
		for i := 100; i < 103; i++ {
			if _, err := s.Report(ctx, r, mac(i), json.RawMessage(oneDisk)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The mirror's own Store on the same client: its clock is its own.
	run := runMirror(t, store.New(e.Client), "dc1")
	m := run.m
	waitCaught(t, m, s, 10*time.Second)
	sameAsStore(t, m, s, "dc1")

	var created store.Task
	var digest string
	steps := []struct {
		name string
		do   func()
	}{
		{"create", func() {
			created, err = s.CreateTask(ctx, store.NewTask{RegionID: "dc1", TargetMAC: mac(3), OSRef: ubuntuImage.OSRef})
		}},
		{"report", func() {
			var res store.ReportResult
			res, err = s.Report(ctx, "dc1", mac(3), json.RawMessage(oneDisk))
			digest = res.Task.Plan.Digest
		}},
		{"approve", func() { _, err = s.ApproveTask(as(ctx, "alice"), created.TaskID, digest) }},
		{"agent token reset", func() { _, err = s.ResetAgentToken(ctx, created.TaskID) }},
		{"progress", func() { progress(t, s, created, 5) }},
		{"progress again", func() { progress(t, s, created, 60) }},
		{"complete", func() {
			_, err = s.RecordProgress(ctx, store.ProgressUpdate{Region: "dc1", MAC: mac(3), TaskID: created.TaskID,
				Progress: contract.Progress{Stage: contract.StageCompleted}})
		}},
		{"fail", func() {
			_, err = s.RecordProgress(ctx, store.ProgressUpdate{Region: "dc1", MAC: mac(2), TaskID: installing.TaskID,
				Progress: contract.Progress{Stage: contract.StageFailed, Message: "disk gone"}})
		}},
		{"cancel", func() { _, err = s.CancelTask(ctx, pending.TaskID, "not needed") }},
		{"unmatched add", func() { _, err = s.Report(ctx, "dc1", mac(104), json.RawMessage(oneDisk)) }},
		{"unmatched auto-matched", func() {
			_, err = s.CreateTask(ctx, store.NewTask{RegionID: "dc1", TargetMAC: mac(100), OSRef: ubuntuImage.OSRef})
		}},
		{"unmatched evicted", func() {
			s.SetClock(func() time.Time { return time.Now().UTC().Add(store.UnmatchedTTL + time.Hour) })
			defer s.SetClock(nil)
			var n int
			if n, err = s.ExpireUnmatched(ctx, "dc1"); err == nil && n != 3 {
				err = fmt.Errorf("expired %d reports, want 3", n)
			}
		}},
		{"heartbeat", func() { err = hb1.Beat(ctx) }},
		{"dc10 only", func() { progress(t, s, other, 70) }},
		{"heartbeat stop", func() { err = hb1.Stop(ctx) }},
	}
	for _, st := range steps {
		st.do()
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		// Something in dc10 at each step too: never seen by dc1's mirror.
		if _, err := s.Report(ctx, "dc10", mac(200), json.RawMessage(oneDisk)); err != nil {
			t.Fatal(err)
		}
		waitCaught(t, m, s, 10*time.Second)
		sameAsStore(t, m, s, "dc1")
		if t.Failed() {
			t.Fatalf("after %s", st.name)
		}
	}
	if _, ok := m.Task(other.TaskID); ok {
		t.Error("dc1's mirror has dc10's task")
	}
	// A cursor of dc10's list, or of another status, is refused, as the store refuses it.
	_, um, err := s.UnmatchedPage(ctx, "dc10", store.Page{Limit: 1}, false)
	if err != nil {
		t.Fatal(err)
	}
	_, _, merr := m.UnmatchedPage(store.Page{Limit: 1, After: um.Next})
	_, _, serr := s.UnmatchedPage(ctx, "dc1", store.Page{Limit: 1, After: um.Next}, false)
	if um.Next == "" || !errors.Is(merr, store.ErrInvalid) || !errors.Is(serr, store.ErrInvalid) {
		t.Errorf("dc10's cursor in dc1's list: mirror %v, store %v", merr, serr)
	}
	_, all, err := s.TaskPage(ctx, "dc1", "", store.Page{Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	_, _, merr = m.TaskPage(store.StatusPending, store.Page{Limit: 1, Before: all.Next})
	if all.Next == "" || !errors.Is(merr, store.ErrInvalid) {
		t.Errorf("another status's cursor: %v", merr)
	}
	if _, _, err := m.TaskPage("bogus", store.Page{Limit: 1}); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("unknown status: %v", err)
	}
	if _, _, err := m.TaskPage("", store.Page{Limit: 0}); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("limit 0: %v", err)
	}
	changes, resyncs := run.snapshot()
	if resyncs != 1 || m.Resyncs() != 0 {
		t.Errorf("resync calls %d (want 1: the load), Resyncs() %d", resyncs, m.Resyncs())
	}
	if len(run.regions) != 1 || !run.regions["dc1"] || len(changes) == 0 {
		t.Errorf("changes passed on for regions %v (%d kinds), want dc1's only", run.regions, len(changes))
	}
}

// Region's Online: while the mirror hears from etcd, the heartbeat key says it (as
// ListRegions); while it hears nothing (the link is cut), the heartbeat's age does.
func TestMirrorRegionOnlineByHeartbeatAge(t *testing.T) {
	e := storetest.Start(t)
	s := e.Store
	hb := mirrorHeartbeat(t, s, "dc1")
	p := startProxy(t, e.Endpoints[0])
	ms := openVia(t, p)
	run := runMirror(t, ms, "dc1")
	waitCaught(t, run.m, s, 10*time.Second)
	if r, _ := run.m.Region(); !r.Online || r.Status != store.RegionOnline {
		t.Fatalf("fresh heartbeat: %s", js(r))
	}
	// Cut, and ten minutes on: nothing heard for ten minutes, a heartbeat that old.
	p.Cut()
	ms.SetClock(func() time.Time { return time.Now().UTC().Add(10 * time.Minute) })
	if r, _ := run.m.Region(); r.Online || r.Status != store.RegionOffline {
		t.Fatalf("old heartbeat, nothing heard: %s", js(r))
	}
	// The link back and the next beat (an appliance beats every TTL/3): the mirror
	// follows etcd live, the key is there, so online (as ListRegions) whatever the
	// heartbeat's age says.
	p.Restore()
	if err := hb.Beat(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for r, _ := run.m.Region(); !r.Online; r, _ = run.m.Region() {
		if time.Now().After(deadline) {
			t.Fatalf("link back, heartbeat key there: still %s", js(r))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// openVia opens a Store through the proxy, as the control plane dials a region's etcd.
func openVia(t testing.TB, p *cutProxy) *store.Store {
	t.Helper()
	st, err := store.Open(ctxT(t), store.DialConfig{Endpoints: []string{p.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// reference counts the changes WatchAll sees for region on the direct client.
type reference struct {
	mu      sync.Mutex
	changes map[string]int
}

func watchReference(t *testing.T, s *store.Store, region string) *reference {
	t.Helper()
	ref := &reference{changes: map[string]int{}}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ready := make(chan struct{}, 4)
	go s.WatchAll(ctx, func() { ready <- struct{}{} }, func(c store.Change) {
		if c.Region == region {
			ref.mu.Lock()
			ref.changes[changeKey(c)]++
			ref.mu.Unlock()
		}
	})
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("reference watch not ready")
	}
	return ref
}

// sameChanges waits until the mirror passed on exactly the changes the reference saw
// since both started: each change once.
func sameChanges(t *testing.T, ref *reference, run *mirrorRun) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ref.mu.Lock()
		want := fmt.Sprint(ref.changes)
		ref.mu.Unlock()
		got, _ := run.snapshot()
		if fmt.Sprint(got) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("changes passed on by the mirror:\n%v\nchanges in etcd:\n%v", got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// cutScenario: a mirror through a proxy with a few installing tasks, loaded and
// followed live; the reference watch counts the changes from the same start.
func cutScenario(t *testing.T, tasks int) (*storetest.Etcd, *cutProxy, *mirrorRun, *reference, []store.Task) {
	t.Helper()
	e := storetest.Start(t)
	mirrorHeartbeat(t, e.Store, "dc1")
	mirrorHeartbeat(t, e.Store, "dc10")
	var installing []store.Task
	for i := range tasks {
		installing = append(installing, installingTask(t, e.Store, "dc1", mac(i)))
	}
	p := startProxy(t, e.Endpoints[0])
	ref := watchReference(t, e.Store, "dc1")
	run := runMirror(t, openVia(t, p), "dc1")
	waitCaught(t, run.m, e.Store, 10*time.Second)
	progress(t, e.Store, installing[0], 20) // one live change
	waitCaught(t, run.m, e.Store, 10*time.Second)
	return e, p, run, ref, installing
}

// changesDuringCut makes n changes of dc1 (progress, new tasks, unmatched reports)
// and some of dc10, in parallel.
func changesDuringCut(t *testing.T, s *store.Store, installing []store.Task, n int) {
	t.Helper()
	var wg sync.WaitGroup
	workers := len(installing)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				switch i % 10 {
				case 7:
					if _, err := s.Report(ctxT(t), "dc1", mac(int(10000+macSeq.Add(1))), json.RawMessage(oneDisk)); err != nil {
						t.Error(err)
					}
				case 8:
					if _, err := s.CreateTask(ctxT(t), store.NewTask{RegionID: "dc1", TargetMAC: mac(int(10000 + macSeq.Add(1))), OSRef: ubuntuImage.OSRef}); err != nil {
						t.Error(err)
					}
				case 9:
					if _, err := s.Report(ctxT(t), "dc10", mac(int(10000+macSeq.Add(1))), json.RawMessage(oneDisk)); err != nil {
						t.Error(err)
					}
				default:
					progress(t, s, installing[w], float64(21+i%70))
				}
			}
		})
	}
	wg.Wait()
}

// A watch cut (every connection to etcd closed, as a WAN link drops) resumes from the
// revision after the last event: every change made meanwhile is passed on exactly
// once, nothing is reloaded, and the mirror ends as the store.
func TestMirrorResumesAfterCut(t *testing.T) {
	e, p, run, ref, installing := cutScenario(t, 4)
	m := run.m
	before := m.Revision()
	p.Cut()
	changesDuringCut(t, e.Store, installing, 60)
	if m.Revision() != before {
		t.Fatalf("the mirror moved during the cut: %d -> %d", before, m.Revision())
	}
	p.Restore()
	took := waitCaught(t, m, e.Store, 20*time.Second)
	t.Logf("caught up 60 changes %s after the link came back", took.Round(time.Millisecond))
	sameAsStore(t, m, e.Store, "dc1")
	sameChanges(t, ref, run)
	if m.Resyncs() != 0 {
		t.Errorf("Resyncs() = %d after a cut within etcd's history, want 0", m.Resyncs())
	}
	// And it carries on live.
	progress(t, e.Store, installing[1], 95)
	waitCaught(t, m, e.Store, 10*time.Second)
	sameChanges(t, ref, run)
	if _, resyncs := run.snapshot(); resyncs != 1 {
		t.Errorf("ChangeResync passed %d times, want 1 (the load)", resyncs)
	}
}

// A compaction past the mirror's revision while its watch is down: one reload (not
// one per watched prefix), and the same end state as the store.
func TestMirrorResyncsOnceAfterCompaction(t *testing.T) {
	e, p, run, _, installing := cutScenario(t, 2)
	m := run.m
	p.Cut()
	changesDuringCut(t, e.Store, installing, 30)
	progress(t, e.Store, installing[0], 42) // at the compaction's revision: replayed by the watch
	rev, err := e.Store.Revision(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Client.Compact(ctxT(t), rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	cutChanges, _ := run.snapshot()
	p.Restore()
	waitCaught(t, m, e.Store, 20*time.Second)
	sameAsStore(t, m, e.Store, "dc1")
	if m.Resyncs() != 1 {
		t.Errorf("Resyncs() = %d, want 1", m.Resyncs())
	}

	if _, resyncs := run.snapshot(); resyncs != 2 {
		t.Errorf("ChangeResync passed %d times, want 2 (the load, the resync)", resyncs)
	}
	// Live again afterwards, and no second reload.
	progress(t, e.Store, installing[1], 99)
	waitCaught(t, m, e.Store, 10*time.Second)
	sameAsStore(t, m, e.Store, "dc1")
	if m.Resyncs() != 1 {
		t.Errorf("Resyncs() = %d after a live change, want 1", m.Resyncs())
	}
	// The reload holds the gap: since the cut, the only changes passed on one by one
	// are the live write's, none of the gap (at or below the reload's revision, which
	// the restarted watches replay).
	got, _ := run.snapshot()
	delta := map[string]int{}
	for k, n := range got {
		if n != cutChanges[k] {
			delta[k] = n - cutChanges[k]
		}
	}
	want := map[string]int{}
	for _, part := range []store.TaskPart{store.PartMetadata, store.PartStatus, store.PartProgress} {
		want[changeKey(store.Change{Kind: store.ChangeTask, Region: "dc1", TaskID: installing[1].TaskID, Part: part})] = 1
	}
	if !reflect.DeepEqual(delta, want) {
		t.Errorf("changes passed on since the cut:\n%v\nwant the live write's only:\n%v", delta, want)
	}
}

// Readers run while Run applies (go test -race).
func TestMirrorConcurrentReaders(t *testing.T) {
	e := storetest.Start(t)
	s := e.Store
	mirrorHeartbeat(t, s, "dc1")
	mirrorHeartbeat(t, s, "dc10")
	var installing []store.Task
	for i := range 3 {
		installing = append(installing, installingTask(t, s, "dc1", mac(i)))
	}
	run := runMirror(t, store.New(e.Client), "dc1")
	m := run.m
	stop := make(chan struct{})
	var readers sync.WaitGroup
	reads := make([]int, 4)
	for r := range 4 {
		readers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				tasks, marks, err := m.TaskPage("", store.Page{Limit: 2})
				if err != nil {
					t.Error(err)
					return
				}
				if marks.Next != "" {
					m.TaskPage("", store.Page{Limit: 2, After: marks.Next})
				}
				for _, tk := range tasks {
					if got, ok := m.Task(tk.TaskID); ok && got.Progress != nil {
						_ = got.Progress.Percentage + float64(len(got.Plan.Digest))
					}
				}
				m.CountTasks(store.StatusInstalling)
				m.UnmatchedPage(store.Page{Limit: 5})
				m.Region()
				m.Bytes()
				m.Revision()
				reads[r]++
			}
		})
	}
	changesDuringCut(t, s, installing, 90)
	waitCaught(t, m, s, 10*time.Second)
	close(stop)
	readers.Wait()
	sameAsStore(t, m, s, "dc1")
	t.Logf("reads while applying: %v", reads)
}

// The memory a mirror holds for a region of n tasks with hardware, plan, approval and
// progress: Bytes() beside the heap it really keeps (live heap with the mirror minus
// without it, after GC). LPMOS_MIRROR_TASKS sets n and checks Bytes against the heap
// (default 300, not checked; the figures in docs are for 1000 and 10000).
func TestMirrorMemory(t *testing.T) {
	n := 300
	if v := os.Getenv("LPMOS_MIRROR_TASKS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			t.Fatal(err)
		}
	}
	e := storetest.Start(t)
	s := e.Store
	mirrorHeartbeat(t, s, "dc1")
	start := time.Now()
	var wg sync.WaitGroup
	const workers = 16
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				installingTask(t, s, "dc1", mac(i))
			}
		})
	}
	wg.Wait()
	t.Logf("%d installing tasks created in %s", n, time.Since(start).Round(time.Millisecond))
	heap := func() uint64 {
		var ms runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	ctx, cancel := context.WithCancel(context.Background())
	before := heap()
	m := store.NewMirror(store.New(e.Client), "dc1")
	done := make(chan error, 1)
	start = time.Now()
	go func() { done <- m.Run(ctx, nil) }()
	waitCaught(t, m, s, 60*time.Second)
	loadTook := time.Since(start)
	with := heap()
	if got := m.CountTasks(store.StatusInstalling); got != n {
		t.Fatalf("mirror holds %d installing tasks, want %d", got, n)
	}
	bytes := m.Bytes()
	cancel()
	<-done
	runtime.KeepAlive(m)
	m = nil
	without := heap()
	held := int64(with) - int64(without)
	t.Logf("%d tasks: loaded in %s; Bytes() %d (%d per task); heap held %d (%d per task); heap growth from before %d",
		n, loadTook.Round(time.Millisecond), bytes, bytes/n, held, held/int64(n), int64(with)-int64(before))
	// The heap is the process's: beside the package's parallel tests it says little.
	// Measured alone (LPMOS_MIRROR_TASKS set), Bytes must be near what is held.
	if os.Getenv("LPMOS_MIRROR_TASKS") != "" && (held <= 0 || float64(bytes) < 0.5*float64(held) || float64(bytes) > 2*float64(held)) {
		t.Errorf("Bytes() %d is not within a factor 2 of the heap held %d", bytes, held)
	}
}

// How long a mirror takes to catch up n changes made while its link was cut, from the
// link's return to Revision == the cluster's: printed for n = 10, 100, 1000.
func TestMirrorCatchUp(t *testing.T) {
	e, p, run, _, installing := cutScenario(t, 10)
	m := run.m
	for _, n := range []int{10, 100, 1000} {
		p.Cut()
		start := time.Now()
		changesDuringCut(t, e.Store, installing, n)
		cutFor := time.Since(start)
		run.arm()
		p.Restore()
		back := time.Now()
		took := waitCaught(t, m, e.Store, 30*time.Second)
		t.Logf("%4d changes during a %s cut: first change %s and caught up %s after the link came back",
			n, cutFor.Round(time.Millisecond), run.firstChange().Sub(back).Round(time.Millisecond), took.Round(time.Millisecond))
		if m.Resyncs() != 0 {
			t.Errorf("Resyncs() = %d", m.Resyncs())
		}
	}
	sameAsStore(t, m, e.Store, "dc1")
	// LPMOS_MIRROR_CUT=60s: a long cut, where gRPC's reconnect backoff shows (Open caps
	// it at 2 s; gRPC's default grows to 120 s).
	if v := os.Getenv("LPMOS_MIRROR_CUT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatal(err)
		}
		p.Cut()
		changesDuringCut(t, e.Store, installing, 100)
		time.Sleep(d) // the cut lasts d: the scenario, not a synchronisation
		run.arm()
		p.Restore()
		back := time.Now()
		took := waitCaught(t, m, e.Store, 3*time.Minute)
		t.Logf(" 100 changes during a %s cut: first change %s and caught up %s after the link came back",
			d, run.firstChange().Sub(back).Round(time.Millisecond), took.Round(time.Millisecond))
		if took > 10*time.Second {
			t.Errorf("caught up %s after the link came back, want within seconds", took)
		}
	}
}

// A mirror needs only read access to the region's prefixes (its etcd role is enough);
// a client whose role does not cover the region gets Run's permanent error at once,
// not a retry forever.
func TestMirrorWithRegionRole(t *testing.T) {
	e := authEtcd(t)
	root := openAs(t, e, "root")
	mirrorHeartbeat(t, root, "dc1")
	installingTask(t, root, "dc1", mac(1))
	dc1 := openAs(t, e, store.RegionUser("dc1"))
	run := runMirror(t, dc1, "dc1")
	waitCaught(t, run.m, root, 10*time.Second)
	sameAsStore(t, run.m, root, "dc1")

	m := store.NewMirror(dc1, "dc2")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	err := m.Run(ctx, nil)
	if !errors.Is(err, rpctypes.ErrPermissionDenied) || time.Since(start) > 5*time.Second {
		t.Fatalf("dc1's client mirroring dc2: %v after %s, want permission denied at once", err, time.Since(start))
	}
	if m.Loaded() {
		t.Error("loaded what it may not read")
	}
}
