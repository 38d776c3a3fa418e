package federation

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"lpmos.dev/lpmos/store"
)

// Fleet is the control plane's view of every region: its own etcd ("home": users,
// sessions, tokens, the control audit, and every region not registered elsewhere)
// plus one client, health check and in-memory mirror per region on its own cluster.
// Reads of a reachable region go to its cluster; reads of an unreachable one are
// served from its mirror, marked stale; writes to an unreachable one are refused at
// once with an *UnreachableError.
type Fleet struct {
	home   *store.Store
	static []store.RegionCluster
	log    *slog.Logger
	lis    Listener

	mu       sync.RWMutex
	clusters map[string]*cluster // by region
	wg       sync.WaitGroup
	runCtx   context.Context
}

// Listener is told what changes (each func may be nil). Calls come from the fleet's
// goroutines; they must not block.
type Listener struct {
	// Change: a change a region cluster's mirror applied (ChangeResync after a (re)load).
	Change func(store.Change)
	// Reach: a region cluster became reachable or unreachable, or was added or removed.
	Reach func(region string)
	// CatchUp: after a region cluster came back, how long until its mirror reflected
	// the cluster's revision of that moment.
	CatchUp func(region string, d time.Duration)
}

// Health checking (docs/federation.md): a ping every pingEvery, each with its own
// deadline; the first failure makes the region unreachable, the first success
// reachable again.
const (
	pingEvery    = 500 * time.Millisecond
	pingDeadline = time.Second
	dialDeadline = 3 * time.Second
	redialEvery  = time.Second
	// ownCallDeadline bounds one call to a region cluster inside a request, so an
	// unnoticed cut is found (and the request served from the mirror, or refused)
	// within the request's deadline (2 s).
	ownCallDeadline = 1200 * time.Millisecond
)

// cluster is one region on its own etcd.
type cluster struct {
	rc     store.RegionCluster
	cancel context.CancelFunc
	done   chan struct{}

	mu          sync.Mutex
	st          *store.Store  // nil until first dialled
	mirror      *store.Mirror // nil until first dialled
	reachable   bool
	since       time.Time // first failure of the current outage
	backAt      time.Time // when it last came back (catch-up measure)
	everReached bool
	tried       chan struct{} // closed after the first dial, answered or not
	// dialErr: why the cluster could not be dialled, when it answered but refused
	// (TLS, user): what a refusal tells the operator instead of "does not answer".
	dialErr string
}

// New makes a fleet on home with the statically configured region clusters (the
// regions file and --region flags; they win over a registration in etcd).
func New(home *store.Store, static []store.RegionCluster, log *slog.Logger) *Fleet {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Fleet{home: home, static: static, log: log, clusters: map[string]*cluster{}}
}

// Listen sets the listener; call before Start.
func (f *Fleet) Listen(l Listener) { f.lis = l }

// Home is the control plane's own store: users, sessions, tokens, the control audit.
func (f *Fleet) Home() *store.Store { return f.home }

// Start reads the registrations, dials every region cluster (waiting at most a few
// seconds: a cluster that does not answer is retried in the background and shown
// unreachable), and follows the registrations until ctx ends. Wait returns when
// everything started here has stopped.
func (f *Fleet) Start(ctx context.Context) {
	f.runCtx = ctx
	rctx, cancel := context.WithTimeout(ctx, dialDeadline)
	f.reconcile(rctx)
	cancel()
	// The first dial of each cluster, in parallel, bounded.
	deadline := time.After(dialDeadline)
	for _, c := range f.all() {
		select {
		case <-c.firstTry():
		case <-deadline:
		case <-ctx.Done():
		}
	}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for ctx.Err() == nil {
			err := f.home.WatchRegionClusters(ctx, func() {
				rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				f.reconcile(rctx)
				cancel()
			})
			if ctx.Err() != nil {
				return
			}
			f.log.Warn("region clusters: watch ended; watching again", "err", err)
			sleep(ctx, redialEvery)
		}
	}()
}

// Wait blocks until every goroutine of the fleet stopped (after Start's ctx ended),
// then closes the region clusters' clients (not home's).
func (f *Fleet) Wait() {
	f.wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.clusters {
		<-c.done
		if st := c.store(); st != nil {
			st.Close()
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// reconcile makes the running clusters those configured: static ones plus the
// registrations in home (static wins). A changed registration restarts its cluster.
func (f *Fleet) reconcile(ctx context.Context) {
	want := map[string]store.RegionCluster{}
	regs, bad, _, err := f.home.RegionClusters(ctx)
	if err != nil {
		f.log.Warn("region clusters: read registrations", "err", err)
		f.mu.RLock()
		for r, c := range f.clusters { // keep what runs
			want[r] = c.rc
		}
		f.mu.RUnlock()
	}
	for _, b := range bad {
		f.log.Warn("region clusters: a registration does not parse; ignored", "region", b)
	}
	for _, rc := range regs {
		want[rc.Region] = rc
	}
	for _, rc := range f.static {
		want[rc.Region] = rc
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.runCtx == nil || f.runCtx.Err() != nil {
		return
	}
	var changed []string
	for r, c := range f.clusters {
		if rc, ok := want[r]; !ok || !sameCluster(rc, c.rc) {
			c.cancel()
			go func(c *cluster) {
				<-c.done
				if st := c.store(); st != nil {
					st.Close()
				}
			}(c)
			delete(f.clusters, r)
			changed = append(changed, r)
			f.log.Info("region cluster removed", "region", r)
		}
	}
	for r, rc := range want {
		if _, ok := f.clusters[r]; ok {
			continue
		}
		cctx, cancel := context.WithCancel(f.runCtx)
		c := &cluster{rc: rc, cancel: cancel, done: make(chan struct{}), since: time.Now().UTC(), tried: make(chan struct{})}
		f.clusters[r] = c
		changed = append(changed, r)
		f.log.Info("region cluster added", "region", r, "endpoints", rc.Endpoints)
		go func() { defer close(c.done); f.runCluster(cctx, c) }()
	}
	for _, r := range changed {
		f.reach(r)
	}
}

func sameCluster(a, b store.RegionCluster) bool {
	return slices.Equal(a.Endpoints, b.Endpoints) && a.CACert == b.CACert && a.Cert == b.Cert && a.Key == b.Key &&
		a.User == b.User && a.PasswordFile == b.PasswordFile
}

func (f *Fleet) reach(region string) {
	if f.lis.Reach != nil {
		f.lis.Reach(region)
	}
}

func (f *Fleet) all() []*cluster {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]*cluster, 0, len(f.clusters))
	for _, c := range f.clusters {
		out = append(out, c)
	}
	return out
}

// own is the cluster of region, or nil when the region lives in home.
func (f *Fleet) own(region string) *cluster {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.clusters[region]
}

// ownRegions is the set of regions on their own cluster.
func (f *Fleet) ownRegions() map[string]bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make(map[string]bool, len(f.clusters))
	for r := range f.clusters {
		out[r] = true
	}
	return out
}

// runCluster dials the cluster until it answers, then runs its mirror and its health
// checks until ctx ends.
func (f *Fleet) runCluster(ctx context.Context, c *cluster) {
	region := c.rc.Region
	log := f.log.With("region", region)
	var st *store.Store
	lastErr := ""
	for ctx.Err() == nil {
		dctx, cancel := context.WithTimeout(ctx, dialDeadline)
		dial := c.rc.DialConfig()
		dial.Log = log
		s, err := store.Open(dctx, dial)
		cancel()
		if err == nil {
			st = s
			break
		}
		if ctx.Err() == nil && !errors.Is(err, store.ErrNoAnswer) {
			c.mu.Lock()
			c.dialErr = err.Error()
			c.mu.Unlock()
		}
		if ctx.Err() == nil && err.Error() != lastErr {
			// Once per distinct error: a wrong CA or user says so, not only "no answer".
			lastErr = err.Error()
			log.Warn("region cluster cannot be dialled; retrying in the background", "endpoints", c.rc.Endpoints, "err", err,
				"settings", f.settingsOf(region))
		}
		if c.markFailed() {
			f.reach(region)
		}
		c.closeTried()
		sleep(ctx, redialEvery)
	}
	if st == nil {
		return
	}
	m := store.NewMirror(st, region)
	c.mu.Lock()
	c.st, c.mirror, c.dialErr = st, m, ""
	c.mu.Unlock()
	if c.markReached(time.Now()) {
		f.reach(region)
	}
	c.closeTried()
	log.Info("region cluster answers", "endpoints", c.rc.Endpoints)

	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			err := m.Run(ctx, func(ch store.Change) {
				if f.lis.Change != nil {
					f.lis.Change(ch)
				}
			})
			if ctx.Err() != nil {
				return
			}
			log.Warn("region mirror stopped; starting again", "err", err)
			sleep(ctx, redialEvery)
		}
	}()
	go func() { defer wg.Done(); f.healthLoop(ctx, c, st, m) }()
	wg.Wait()
}

// settingsOf says where region's dial settings come from: store.Open's errors name
// the control plane's own --etcd-* flags, which are not what to change for a region
// cluster.
func (f *Fleet) settingsOf(region string) string {
	for _, rc := range f.static {
		if rc.Region == region {
			return "the --regions-file entry or --region flag of " + region + " (cacert, cert, key, user, password_file are its --etcd-cacert, --etcd-cert, --etcd-key, --etcd-user, --etcd-password-file; --region uses the control plane's own)"
		}
	}
	return "the registration of " + region + " in the control plane's etcd (lpmos-control regions add " + region + " --etcd URL with --region-etcd-cacert, --region-etcd-cert, --region-etcd-key, ... rewrites it)"
}

// healthLoop pings the cluster and measures each catch-up.
func (f *Fleet) healthLoop(ctx context.Context, c *cluster, st *store.Store, m *store.Mirror) {
	region := c.rc.Region
	t := time.NewTicker(pingEvery)
	defer t.Stop()
	var measures sync.WaitGroup
	defer measures.Wait()
	for {
		pctx, cancel := context.WithTimeout(ctx, pingDeadline)
		rev, err := st.Revision(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if c.markFailed() {
				f.log.Warn("region cluster unreachable", "region", region, "endpoints", c.rc.Endpoints, "err", err)
				f.reach(region)
			}
		} else {
			now := time.Now()
			if c.markReached(now) {
				f.log.Info("region cluster reachable again", "region", region)
				f.reach(region)
				measures.Add(1)
				go func() { defer measures.Done(); f.measureCatchUp(ctx, region, m, rev, now) }()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// measureCatchUp waits (a minute at most) until the mirror reflects revision rev, the
// cluster's when it answered again at backAt, and reports how long that took.
func (f *Fleet) measureCatchUp(ctx context.Context, region string, m *store.Mirror, rev int64, backAt time.Time) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for m.Revision() < rev {
		if time.Since(backAt) > time.Minute {
			f.log.Warn("region mirror not caught up after a minute", "region", region, "at", m.Revision(), "want", rev)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
	d := time.Since(backAt)
	f.log.Info("region mirror caught up", "region", region, "took", d.Round(time.Millisecond), "resyncs", m.Resyncs())
	if f.lis.CatchUp != nil {
		f.lis.CatchUp(region, d)
	}
}

// markFailed records a failure; it says whether the cluster just became unreachable.
func (c *cluster) markFailed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.reachable {
		return false
	}
	c.reachable, c.since = false, time.Now().UTC()
	return true
}

// markReached records an answer; it says whether the cluster just became reachable.
func (c *cluster) markReached(at time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.reachable {
		return false
	}
	c.reachable, c.backAt, c.everReached = true, at, true
	return true
}

func (c *cluster) firstTry() <-chan struct{} { return c.tried }

func (c *cluster) closeTried() {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.tried:
	default:
		close(c.tried)
	}
}

func (c *cluster) store() *store.Store {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st
}

// state is the cluster as a request sees it.
func (c *cluster) state() (st *store.Store, m *store.Mirror, reachable bool, since time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st, c.mirror, c.reachable && c.st != nil, c.since
}

// unreachable is the error of a write refused (or a read impossible) while the cluster
// does not answer.
func (c *cluster) unreachable() error {
	_, _, _, since := c.state()
	c.mu.Lock()
	cause := c.dialErr
	c.mu.Unlock()
	return &UnreachableError{Region: c.rc.Region, Since: since, Endpoints: c.rc.Endpoints, Refused: cause}
}

// failed notes a request's failure: an etcd that does not answer makes the region
// unreachable at once (the next ping would, a little later). It says whether err was
// such a failure. A request whose own deadline ran out (ctx, the caller's) says
// nothing about the cluster.
func (f *Fleet) failed(ctx context.Context, c *cluster, err error) bool {
	if err == nil || ctx.Err() != nil || !(store.Unavailable(err) || errors.Is(err, store.ErrNoAnswer)) {
		return false
	}
	if c.markFailed() {
		f.log.Warn("region cluster unreachable (a request failed)", "region", c.rc.Region, "err", err)
		f.reach(c.rc.Region)
	}
	return true
}

// UnreachableError: region's cluster does not answer; the write was refused.
type UnreachableError struct {
	Region    string
	Since     time.Time
	Endpoints []string
	// Refused is why the cluster, answering, refused the control plane (TLS, user);
	// "" when it does not answer.
	Refused string
}

func (e *UnreachableError) Error() string {
	if e.Refused != "" {
		return fmt.Sprintf("region %s is unreachable since %s UTC: its etcd (%s) refuses the control plane: %s; "+
			"fix the region's etcd settings (lpmos-control regions show %s; the control plane's log names them)",
			e.Region, e.Since.UTC().Format("15:04"), strings.Join(e.Endpoints, ", "), e.Refused, e.Region)
	}
	return fmt.Sprintf("region %s is unreachable since %s UTC: its etcd (%s) does not answer; try again when the link is back, "+
		"or approve on the appliance host with lpmos-appliance tasks approve", e.Region, e.Since.UTC().Format("15:04"), strings.Join(e.Endpoints, ", "))
}

// RetryAfter is the retry_after (seconds) of a refused request.
const RetryAfter = 5

// ownCall bounds a call to a region cluster (see ownCallDeadline).
func ownCall(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, ownCallDeadline)
}

// RegionStatus is a region as GET /api/v1/regions shows it: the store's view plus
// where it lives and whether its cluster answers.
type RegionStatus struct {
	store.Region
	Cluster          string     `json:"cluster"` // "shared" or "own"
	Reachable        bool       `json:"reachable"`
	UnreachableSince *time.Time `json:"unreachable_since,omitempty"`
	Stale            bool       `json:"stale,omitempty"`
}

// Cluster kinds.
const (
	ClusterShared = "shared"
	ClusterOwn    = "own"
)

// ListRegions lists every region: home's (minus those registered elsewhere) and every
// region cluster's, live when it answers, else from its mirror (stale). A region
// cluster never reached is still listed (it is configured). Sorted by name.
func (f *Fleet) ListRegions(ctx context.Context) ([]RegionStatus, error) {
	own := f.ownRegions()
	shared, err := f.home.ListRegions(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]RegionStatus, 0, len(shared)+len(own))
	for _, r := range shared {
		if !own[r.Name] {
			out = append(out, RegionStatus{Region: r, Cluster: ClusterShared, Reachable: true})
		}
	}
	cs := f.all()
	got := make([]RegionStatus, len(cs))
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Add(1)
		go func() { defer wg.Done(); got[i] = f.ownRegion(ctx, c) }()
	}
	wg.Wait()
	out = append(out, got...)
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// ownRegion is one region cluster's region: live, or from the mirror.
func (f *Fleet) ownRegion(ctx context.Context, c *cluster) RegionStatus {
	name := c.rc.Region
	st, m, ok, _ := c.state()
	if ok {
		cctx, cancel := ownCall(ctx)
		r, err := st.GetRegion(cctx, name)
		cancel()
		if err == nil {
			return RegionStatus{Region: r, Cluster: ClusterOwn, Reachable: true}
		}
		f.failed(ctx, c, err)
	}
	rs := RegionStatus{Region: store.Region{Name: name, Status: store.RegionOffline, Counts: map[store.Status]int{}}, Cluster: ClusterOwn, Stale: true}
	if m != nil {
		if r, ok := m.Region(); ok {
			rs.Region = r
		}
	}
	_, _, reachable, since := c.state()
	rs.Reachable = reachable
	if !reachable {
		rs.UnreachableSince = &since
	}
	return rs
}

// GetRegion is one region as ListRegions shows it.
func (f *Fleet) GetRegion(ctx context.Context, name string) (RegionStatus, error) {
	if err := store.ValidateRegion(name); err != nil {
		return RegionStatus{}, err
	}
	if c := f.own(name); c != nil {
		return f.ownRegion(ctx, c), nil
	}
	r, err := f.home.GetRegion(ctx, name)
	if err != nil {
		return RegionStatus{}, err
	}
	return RegionStatus{Region: r, Cluster: ClusterShared, Reachable: true}, nil
}

// RegionNames is every region's name: home's (with a task, a report or a region key)
// and every region cluster's, sorted.
func (f *Fleet) RegionNames(ctx context.Context) ([]string, error) {
	names, err := f.home.RegionNames(ctx)
	if err != nil {
		return nil, err
	}
	set := map[string]bool{}
	for _, n := range names {
		set[n] = true
	}
	for r := range f.ownRegions() {
		set[r] = true
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	sort.Strings(out)
	return out, nil
}

// MirrorRevision is the revision of region's cluster its mirror reflects (false: no
// such region cluster, or not loaded yet): a test waits for the mirror with it.
func (f *Fleet) MirrorRevision(region string) (int64, bool) {
	c := f.own(region)
	if c == nil {
		return 0, false
	}
	_, m, _, _ := c.state()
	if m == nil || !m.Loaded() {
		return 0, false
	}
	return m.Revision(), true
}

// MirroredTask is task id as region's mirror holds it (without hardware): what a
// change the mirror just applied made of it, without a read over the WAN. stale says
// the region's cluster does not answer; ok is false when the mirror does not hold it
// (deleted, or no such region cluster).
func (f *Fleet) MirroredTask(region, id string) (t store.Task, stale, ok bool) {
	c := f.own(region)
	if c == nil {
		return store.Task{}, false, false
	}
	_, m, reachable, _ := c.state()
	if m == nil {
		return store.Task{}, false, false
	}
	t, ok = m.Task(id)
	return t, !reachable, ok
}

// MirrorResyncs is how many times region's mirror reloaded everything after its
// first load (its watch's revision was compacted away).
func (f *Fleet) MirrorResyncs(region string) int {
	if c := f.own(region); c != nil {
		if _, m, _, _ := c.state(); m != nil {
			return m.Resyncs()
		}
	}
	return 0
}

// MirrorBytes is each region cluster's mirror size (approximate bytes held).
func (f *Fleet) MirrorBytes() map[string]int {
	out := map[string]int{}
	for _, c := range f.all() {
		if _, m, _, _ := c.state(); m != nil {
			out[c.rc.Region] = m.Bytes()
		}
	}
	return out
}
