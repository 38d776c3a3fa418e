package dhcpd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
)

// Lease binds an address to a client in full-DHCP mode.
type Lease struct {
	MAC      string     `json:"mac"` // lower-case, colon-separated
	IP       netip.Addr `json:"ip"`
	Expiry   time.Time  `json:"expiry"`
	Hostname string     `json:"hostname,omitempty"`
}

// LeaseStore persists full-DHCP leases across restarts. The server keeps
// the authoritative index in memory (it is the only writer for its pool) and
// writes through: Put before an ACK leaves, Delete when a lease is released
// or reclaimed. The appliance implements it on etcd under a regional key;
// MemLeases serves tests and appliances without etcd.
type LeaseStore interface {
	// Leases returns every stored lease, read once when Serve starts.
	Leases(ctx context.Context) ([]Lease, error)
	// Put stores l, replacing any lease for l.IP.
	Put(ctx context.Context, l Lease) error
	// Delete removes the lease for ip; deleting a missing lease is not an error.
	Delete(ctx context.Context, ip netip.Addr) error
}

// MemLeases is an in-memory LeaseStore. The zero value is ready to use.
type MemLeases struct {
	mu sync.Mutex
	m  map[netip.Addr]Lease
}

func (s *MemLeases) Leases(ctx context.Context) ([]Lease, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Lease, 0, len(s.m))
	for _, l := range s.m {
		out = append(out, l)
	}
	slices.SortFunc(out, func(a, b Lease) int { return a.IP.Compare(b.IP) })
	return out, nil
}

func (s *MemLeases) Put(ctx context.Context, l Lease) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[netip.Addr]Lease{}
	}
	s.m[l.IP] = l
	return nil
}

func (s *MemLeases) Delete(ctx context.Context, ip netip.Addr) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, ip)
	return nil
}

// Apply makes MemLeases a LeaseApplier: deletes first, then puts.
func (s *MemLeases) Apply(ctx context.Context, puts []Lease, deletes []netip.Addr) error {
	for _, ip := range deletes {
		s.Delete(ctx, ip)
	}
	for _, l := range puts {
		s.Put(ctx, l)
	}
	return nil
}

// LeaseApplier is a lease store that stores a group of changes in one go
// (the appliance: one etcd transaction, one fsync). GroupCommit batches
// concurrent Puts and Deletes over it.
type LeaseApplier interface {
	Leases(ctx context.Context) ([]Lease, error)
	// Apply stores puts and removes deletes; no IP appears twice.
	Apply(ctx context.Context, puts []Lease, deletes []netip.Addr) error
}

// GroupCommit is a LeaseStore that group-commits: Puts and Deletes from
// concurrent handlers queue up, one writer at a time stores everything
// queued in one Apply as soon as the previous Apply returned, and each call
// returns only once the group holding it is stored, so an ACK still leaves
// after its lease is durable. Changes are applied in the order they were
// queued (for one IP, the last one wins). The server's index queues under its
// lock and waits outside it, so handlers no longer wait on each other's fsync.
type GroupCommit struct {
	st LeaseApplier
	// Gather is how long the writer waits for more changes before storing a
	// group (NewGroupCommit: DefaultGather); 0 relies on the natural grouping
	// of changes queued while the previous group was being stored.
	Gather time.Duration
	// MaxGroup ends the gather early once that many changes wait (NewGroupCommit:
	// DefaultMaxGroup; 0: no limit): at high rates a group is stored as soon as it
	// is worth its fsync, and its ACKs leave in smaller bursts.
	MaxGroup int
	// AckBurst paces the deferred ACKs of a stored group (commitThen): a group of
	// more leases sends them AckBurst at a time, spread over two thirds of the time
	// the group took to gather (so at 1.5x the rate its REQUESTs came in), rather
	// than all at once (NewGroupCommit: DefaultAckBurst; 0: all at once).
	AckBurst int
	// Timeout bounds one Apply; 0 means 10 s.
	Timeout time.Duration

	mu      sync.Mutex
	cur     *leaseGroup // being filled; nil: nothing queued
	running bool        // a writer goroutine exists
	full    chan struct{}
	groups  int64 // Apply calls, for tests and metrics

	acks      []ackBatch // deferred ACKs of stored groups, in order, for the acker
	ackerRuns bool       // an acker goroutine exists
	ackPauses int64      // pauses between bursts, for tests
}

// ackBatch is a stored group's deferred ACKs and how long the group gathered.
type ackBatch struct {
	fns  []func()
	span time.Duration
}

type leaseOp struct {
	del bool
	l   Lease // for a delete only l.IP counts
}

type leaseGroup struct {
	ops   []leaseOp
	start time.Time // first op queued
	done  chan struct{}
	err   error // set before done closes
	// then run, in order, once the group is stored (after done closes): the
	// deferred ACKs (leases.commitThen), sent without a goroutine waiting each.
	then []func()
}

// DefaultGather is GroupCommit.Gather as NewGroupCommit sets it. Every group
// costs a transaction, a raft round and an fsync whatever its size, and on a VM
// an fsync costs CPU too (virtio notifications). Measured on the appliance
// (embedded etcd on disk, perfdhcp at 1000 DORA/s, CPU per DORA), over gRPC: 427
// us storing whatever had queued, 239 with 3 ms, 191-213 with 5 ms, 180 with 10
// ms; in-process (store.LeaseWriter): 118-146 with 10 ms, 94-117 with 20 ms,
// 96-113 with 40 ms (REQUEST to ACK 12 ms on average at 20 ms). Under load
// MaxGroup ends the gather early. A DHCP client waits seconds before it
// retransmits.
const DefaultGather = 20 * time.Millisecond

// DefaultMaxGroup is GroupCommit.MaxGroup as NewGroupCommit sets it: at 64 changes
// a group's fixed cost (a transaction, a raft round, an fsync) is spread thin, and
// 64 ACKs sit well inside a client's default 208 KiB receive buffer.
const DefaultMaxGroup = 64

// DefaultAckBurst is GroupCommit.AckBurst as NewGroupCommit sets it. Without
// pacing a group stored after a slow fsync (tens of milliseconds on a loaded disk:
// hundreds of leases at 10,000 REQUESTs/s) sends its ACKs back to back, and a
// client sharing the CPUs (perfdhcp, measured) overflows its 208 KiB receive buffer
// and loses ACKs and the OFFERs behind them. At 1000 REQUESTs/s a group holds ~10:
// no pacing, no extra wake-up.
const DefaultAckBurst = 32

// Bounds of the pause between two paced bursts of ACKs.
const (
	minAckGap = 250 * time.Microsecond
	maxAckGap = 5 * time.Millisecond
)

// NewGroupCommit returns a GroupCommit over st.
func NewGroupCommit(st LeaseApplier) *GroupCommit {
	return &GroupCommit{st: st, Gather: DefaultGather, MaxGroup: DefaultMaxGroup, AckBurst: DefaultAckBurst}
}

func (g *GroupCommit) Leases(ctx context.Context) ([]Lease, error) { return g.st.Leases(ctx) }

// Put queues l and waits for its group to be stored (or ctx to end: then l
// may still be stored).
func (g *GroupCommit) Put(ctx context.Context, l Lease) error {
	return g.enqueue(leaseOp{l: l}).wait(ctx)
}

// Delete queues the removal of ip's lease and waits like Put.
func (g *GroupCommit) Delete(ctx context.Context, ip netip.Addr) error {
	return g.enqueue(leaseOp{del: true, l: Lease{IP: ip}}).wait(ctx)
}

// Groups returns how many groups (Apply calls) were stored so far.
func (g *GroupCommit) Groups() int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.groups
}

func (g *GroupCommit) enqueue(op leaseOp) *leaseGroup {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cur == nil {
		g.cur = &leaseGroup{done: make(chan struct{}), start: time.Now()}
	}
	g.cur.ops = append(g.cur.ops, op)
	if !g.running {
		g.running = true
		if g.full == nil {
			g.full = make(chan struct{}, 1)
		}
		go g.write()
	}
	if len(g.cur.ops) == g.MaxGroup {
		select {
		case g.full <- struct{}{}:
		default:
		}
	}
	return g.cur
}

// write stores groups until none is queued, then exits (the next enqueue
// starts another): no goroutine to stop.
func (g *GroupCommit) write() {
	var gather *time.Timer
	for {
		if g.Gather > 0 {
			if gather == nil {
				gather = time.NewTimer(g.Gather)
			} else {
				gather.Reset(g.Gather)
			}
			select {
			case <-gather.C:
			case <-g.full:
				gather.Stop()
			}
		}
		g.mu.Lock()
		grp := g.cur
		g.cur = nil
		select { // a signal for the group just taken is stale
		case <-g.full:
		default:
		}
		if grp == nil {
			g.running = false
			g.mu.Unlock()
			return
		}
		g.groups++
		g.mu.Unlock()
		span := time.Since(grp.start)
		err := g.apply(grp.ops)
		g.mu.Lock() // orders done against after
		grp.err = err
		close(grp.done)
		if len(grp.then) > 0 {
			// To the acker, so the next group's Apply starts at once.
			g.acks = append(g.acks, ackBatch{fns: grp.then, span: span})
			if !g.ackerRuns {
				g.ackerRuns = true
				go g.ack()
			}
		}
		grp.then = nil
		g.mu.Unlock()
	}
}

// ack runs the deferred ACKs of stored groups, in order, until none is left,
// pacing each group's (AckBurst).
func (g *GroupCommit) ack() {
	for {
		g.mu.Lock()
		if len(g.acks) == 0 {
			g.acks = nil // let the backing array go
			g.ackerRuns = false
			g.mu.Unlock()
			return
		}
		b := g.acks[0]
		g.acks = g.acks[1:]
		g.mu.Unlock()
		n := g.AckBurst
		if n <= 0 || len(b.fns) <= n {
			for _, f := range b.fns {
				f()
			}
			continue
		}
		bursts := (len(b.fns) + n - 1) / n
		gap := min(max(b.span*2/3/time.Duration(bursts), minAckGap), maxAckGap)
		for i := 0; i < len(b.fns); i += n {
			if i > 0 {
				g.mu.Lock()
				g.ackPauses++
				g.mu.Unlock()
				time.Sleep(gap)
			}
			for _, f := range b.fns[i:min(i+n, len(b.fns))] {
				f()
			}
		}
	}
}

// after runs f once grp is stored or failed: at once if it is already.
func (g *GroupCommit) after(grp *leaseGroup, f func()) {
	g.mu.Lock()
	select {
	case <-grp.done:
		g.mu.Unlock()
		f()
		return
	default:
	}
	grp.then = append(grp.then, f)
	g.mu.Unlock()
}

func (g *GroupCommit) apply(ops []leaseOp) error {
	last := make(map[netip.Addr]int, len(ops))
	for i, op := range ops {
		last[op.l.IP] = i
	}
	var puts []Lease
	var dels []netip.Addr
	for i, op := range ops {
		switch {
		case last[op.l.IP] != i:
		case op.del:
			dels = append(dels, op.l.IP)
		default:
			puts = append(puts, op.l)
		}
	}
	timeout := g.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return g.st.Apply(ctx, puts, dels)
}

func (grp *leaseGroup) wait(ctx context.Context) error {
	select {
	case <-grp.done:
		return grp.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// pendingOps are the store changes the index queued on a GroupCommit under
// its lock, to be awaited once the lock is released.
type pendingOps []*leaseGroup

func (p *pendingOps) add(grp *leaseGroup) {
	if n := len(*p); n == 0 || (*p)[n-1] != grp {
		*p = append(*p, grp)
	}
}

// wait waits for every group (each is bounded by GroupCommit.Timeout).
func (p pendingOps) wait() error {
	var first error
	for _, grp := range p {
		<-grp.done
		if first == nil {
			first = grp.err
		}
	}
	return first
}

// Pool is the address pool and the options handed out in full-DHCP mode.
type Pool struct {
	Start, End netip.Addr // inclusive range (--dhcp-range)
	Subnet     netip.Prefix
	Router     netip.Addr   // option 3; zero: none
	DNS        []netip.Addr // option 6
	LeaseTime  time.Duration
}

// ParseRange parses "10.77.0.100,10.77.0.200" (--dhcp-range).
func ParseRange(s string) (start, end netip.Addr, err error) {
	a, b, ok := strings.Cut(s, ",")
	if !ok {
		a, b, ok = strings.Cut(s, "-")
	}
	if !ok {
		return start, end, fmt.Errorf("dhcp range %q: want START,END", s)
	}
	if start, err = netip.ParseAddr(strings.TrimSpace(a)); err != nil {
		return start, end, fmt.Errorf("dhcp range %q: %w", s, err)
	}
	if end, err = netip.ParseAddr(strings.TrimSpace(b)); err != nil {
		return start, end, fmt.Errorf("dhcp range %q: %w", s, err)
	}
	return start, end, nil
}

func (p *Pool) validate() error {
	if !p.Start.Is4() || !p.End.Is4() || p.End.Less(p.Start) {
		return fmt.Errorf("dhcpd: pool range %v-%v is not an IPv4 range", p.Start, p.End)
	}
	if !p.Subnet.IsValid() || !p.Subnet.Contains(p.Start) || !p.Subnet.Contains(p.End) {
		return fmt.Errorf("dhcpd: pool range %v-%v is outside subnet %v", p.Start, p.End, p.Subnet)
	}
	if p.LeaseTime <= 0 {
		p.LeaseTime = time.Hour
	}
	return nil
}

func (p *Pool) contains(ip netip.Addr) bool {
	return ip.Is4() && !ip.Less(p.Start) && !p.End.Less(ip)
}

// Errors of the allocator; the server maps them to NAK or silence.
var (
	errPoolFull   = errors.New("dhcpd: pool exhausted")
	errNotOurs    = errors.New("dhcpd: address outside the pool")
	errHeld       = errors.New("dhcpd: address held by another client")
	errNoBinding  = errors.New("dhcpd: no offer or lease for this client")
	offerHold     = 30 * time.Second // RFC 2131 4.3.1: reserve an offered address briefly
	declineHold   = 10 * time.Minute // RFC 2131 4.3.3: a declined address is in use by someone
	declinedOwner = "declined"
)

type binding struct {
	Lease
	committed bool // persisted (ACKed) rather than only offered
}

// leases is the in-memory index; one mutex keeps "never the same address
// twice" true under concurrent requests.
type leases struct {
	mu     sync.Mutex
	pool   *Pool
	store  LeaseStore
	gc     *GroupCommit // store, when it group-commits: queue under mu, wait after
	byMAC  map[string]*binding
	byIP   map[netip.Addr]*binding
	cursor netip.Addr
}

func newLeases(p *Pool, st LeaseStore) *leases {
	gc, _ := st.(*GroupCommit)
	return &leases{pool: p, store: st, gc: gc, byMAC: map[string]*binding{}, byIP: map[netip.Addr]*binding{}, cursor: p.Start}
}

func (ls *leases) load(ctx context.Context) error {
	all, err := ls.store.Leases(ctx)
	if err != nil {
		return fmt.Errorf("dhcpd: load leases: %w", err)
	}
	ls.mu.Lock()
	defer ls.mu.Unlock()
	for _, l := range all {
		if !ls.pool.contains(l.IP) {
			continue // pool shrank since; the lease dies with it
		}
		if old := ls.byMAC[l.MAC]; old != nil {
			delete(ls.byIP, old.IP) // a MAC keeps one address: the last stored wins
		}
		b := &binding{Lease: l, committed: true}
		ls.byMAC[l.MAC] = b
		ls.byIP[l.IP] = b
	}
	return nil
}

func (ls *leases) drop(b *binding) {
	delete(ls.byIP, b.IP)
	if ls.byMAC[b.MAC] == b {
		delete(ls.byMAC, b.MAC)
	}
}

// free reports whether ip can go to mac now.
func (ls *leases) free(ip netip.Addr, mac string, now time.Time) bool {
	b := ls.byIP[ip]
	return b == nil || b.MAC == mac || b.Expiry.Before(now)
}

// put stores l: at once (under ls.mu) on a plain store, or queued on p.
func (ls *leases) put(ctx context.Context, l Lease, p *pendingOps) error {
	if ls.gc != nil {
		p.add(ls.gc.enqueue(leaseOp{l: l}))
		return nil
	}
	return ls.store.Put(ctx, l)
}

// del removes ip's stored lease like put.
func (ls *leases) del(ctx context.Context, ip netip.Addr, p *pendingOps) error {
	if ls.gc != nil {
		p.add(ls.gc.enqueue(leaseOp{del: true, l: Lease{IP: ip}}))
		return nil
	}
	return ls.store.Delete(ctx, ip)
}

// offer picks an address for mac: its current binding, else the requested
// address if free (RFC 2131 4.3.1), else the next never-used address, else
// the longest-expired lease (reclaimed). It does not wait for a group-committed
// store to remove a reclaimed lease: an offer promises nothing, the expired
// lease is harmless if it comes back after a crash, and the lease the client
// then requests replaces it (same address) in a later group.
func (ls *leases) offer(ctx context.Context, mac string, requested netip.Addr, now time.Time) (netip.Addr, error) {
	var p pendingOps
	return ls.offerLocked(ctx, mac, requested, now, &p)
}

func (ls *leases) offerLocked(ctx context.Context, mac string, requested netip.Addr, now time.Time, p *pendingOps) (netip.Addr, error) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if b := ls.byMAC[mac]; b != nil {
		if !b.committed {
			b.Expiry = now.Add(offerHold)
		}
		return b.IP, nil
	}
	ip, err := ls.pick(ctx, mac, requested, now, p)
	if err != nil {
		return ip, err
	}
	b := &binding{Lease: Lease{MAC: mac, IP: ip, Expiry: now.Add(offerHold)}}
	ls.byMAC[mac] = b
	ls.byIP[ip] = b
	return ip, nil
}

func (ls *leases) pick(ctx context.Context, mac string, requested netip.Addr, now time.Time, p *pendingOps) (netip.Addr, error) {
	if ls.pool.contains(requested) && ls.byIP[requested] == nil {
		return requested, nil
	}
	// Never-used addresses first, round-robin from the cursor, so a freshly
	// released address is not handed to someone else at once.
	for ip, n := ls.cursor, 0; n < poolSize(ls.pool); n++ {
		if ls.byIP[ip] == nil {
			ls.cursor = next(ls.pool, ip)
			return ip, nil
		}
		ip = next(ls.pool, ip)
	}
	var oldest *binding
	for _, b := range ls.byIP {
		if b.Expiry.Before(now) && (oldest == nil || b.Expiry.Before(oldest.Expiry)) {
			oldest = b
		}
	}
	if oldest == nil {
		return netip.Addr{}, errPoolFull
	}
	if oldest.committed {
		if err := ls.del(ctx, oldest.IP, p); err != nil {
			return netip.Addr{}, fmt.Errorf("dhcpd: reclaim %v: %w", oldest.IP, err)
		}
	}
	ls.drop(oldest)
	return oldest.IP, nil
}

func poolSize(p *Pool) int {
	s, e := p.Start.As4(), p.End.As4()
	return int(be32(e)-be32(s)) + 1
}

func be32(b [4]byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func next(p *Pool, ip netip.Addr) netip.Addr {
	if ip == p.End {
		return p.Start
	}
	return ip.Next()
}

// commit turns mac's claim on ip into a lease (REQUEST -> ACK), persisting
// it first. errHeld: someone else has ip (NAK). errNotOurs: outside the pool.
// With a GroupCommit store the index changes at once under ls.mu (so nobody
// else gets ip meanwhile) and commit waits for the store outside it; if
// storing fails, the change is undone.
func (ls *leases) commit(ctx context.Context, mac string, ip netip.Addr, hostname string, now time.Time) (Lease, error) {
	var p pendingOps
	b, prev, err := ls.commitLocked(ctx, mac, ip, hostname, now, &p)
	werr := p.wait()
	if err != nil {
		return Lease{}, err
	}
	if werr != nil {
		ls.undo(b, prev)
		return Lease{}, fmt.Errorf("dhcpd: store lease %v: %w", ip, werr)
	}
	return b.Lease, nil
}

// commitThen is commit without waiting, for a group-committing store: the
// index changes at once and done runs once the lease is stored (or, when
// storing failed, undone), from the store's writer side; a refusal (errHeld,
// errNotOurs) runs done before commitThen returns. Without a GroupCommit it
// is commit followed by done.
func (ls *leases) commitThen(ctx context.Context, mac string, ip netip.Addr, hostname string, now time.Time, done func(Lease, error)) {
	if ls.gc == nil {
		done(ls.commit(ctx, mac, ip, hostname, now))
		return
	}
	var p pendingOps
	b, prev, err := ls.commitLocked(ctx, mac, ip, hostname, now, &p)
	if err != nil { // refused before anything was queued
		done(Lease{}, err)
		return
	}
	// Groups are stored in order: when the last is, so are the others.
	ls.gc.after(p[len(p)-1], func() {
		if werr := p.wait(); werr != nil {
			ls.undo(b, prev)
			done(Lease{}, fmt.Errorf("dhcpd: store lease %v: %w", ip, werr))
			return
		}
		done(b.Lease, nil)
	})
}

// undo reverts a commit whose storing failed: b leaves the index and prev,
// the binding it replaced, comes back unless someone took its place.
func (ls *leases) undo(b, prev *binding) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.byIP[b.IP] == b {
		ls.drop(b)
		if prev != nil && ls.byMAC[prev.MAC] == nil {
			ls.byMAC[prev.MAC] = prev
			ls.byIP[prev.IP] = prev
		}
	}
}

// commitLocked is commit under ls.mu; prev is mac's binding on ip it
// replaced (a renewal), to restore if storing fails.
func (ls *leases) commitLocked(ctx context.Context, mac string, ip netip.Addr, hostname string, now time.Time, p *pendingOps) (b, prev *binding, err error) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if !ls.pool.contains(ip) {
		return nil, nil, errNotOurs
	}
	if !ls.free(ip, mac, now) {
		return nil, nil, errHeld
	}
	if old := ls.byIP[ip]; old != nil && old.MAC != mac {
		if old.committed { // expired lease of another client: reclaim
			if err := ls.del(ctx, ip, p); err != nil {
				return nil, nil, fmt.Errorf("dhcpd: reclaim %v: %w", ip, err)
			}
		}
		ls.drop(old)
	}
	if old := ls.byMAC[mac]; old != nil && old.IP != ip {
		// The client moved (INIT-REBOOT elsewhere, or it took another
		// offer): its old address goes back to the pool.
		if old.committed {
			if err := ls.del(ctx, old.IP, p); err != nil {
				return nil, nil, fmt.Errorf("dhcpd: release %v: %w", old.IP, err)
			}
		}
		ls.drop(old)
	}
	if old := ls.byMAC[mac]; old != nil && old.committed {
		prev = old
	}
	l := Lease{MAC: mac, IP: ip, Expiry: now.Add(ls.pool.LeaseTime), Hostname: hostname}
	if err := ls.put(ctx, l, p); err != nil {
		return nil, nil, fmt.Errorf("dhcpd: store lease %v: %w", ip, err)
	}
	b = &binding{Lease: l, committed: true}
	ls.byMAC[mac] = b
	ls.byIP[ip] = b
	return b, prev, nil
}

// lookup returns mac's binding, if any.
func (ls *leases) lookup(mac string) (Lease, bool) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	b := ls.byMAC[mac]
	if b == nil {
		return Lease{}, false
	}
	return b.Lease, true
}

// release ends mac's lease on ip (DHCPRELEASE), or its pending offer when
// it chose another server.
func (ls *leases) release(ctx context.Context, mac string, ip netip.Addr) error {
	var p pendingOps
	err := ls.releaseLocked(ctx, mac, ip, &p)
	if werr := p.wait(); werr != nil && err == nil {
		return fmt.Errorf("dhcpd: release %v: %w", ip, werr)
	}
	return err
}

func (ls *leases) releaseLocked(ctx context.Context, mac string, ip netip.Addr, p *pendingOps) error {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	b := ls.byMAC[mac]
	if b == nil || (ip.IsValid() && b.IP != ip) {
		return errNoBinding
	}
	if b.committed {
		if err := ls.del(ctx, b.IP, p); err != nil {
			return fmt.Errorf("dhcpd: release %v: %w", b.IP, err)
		}
	}
	ls.drop(b)
	return nil
}

// decline quarantines ip: the client found it in use (ARP), so someone
// outside our records holds it.
func (ls *leases) decline(ctx context.Context, mac string, ip netip.Addr, now time.Time) error {
	var p pendingOps
	err := ls.declineLocked(ctx, mac, ip, now, &p)
	if werr := p.wait(); werr != nil && err == nil {
		return fmt.Errorf("dhcpd: decline %v: %w", ip, werr)
	}
	return err
}

func (ls *leases) declineLocked(ctx context.Context, mac string, ip netip.Addr, now time.Time, p *pendingOps) error {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if b := ls.byMAC[mac]; b != nil && b.IP == ip {
		if b.committed {
			if err := ls.del(ctx, ip, p); err != nil {
				return fmt.Errorf("dhcpd: decline %v: %w", ip, err)
			}
		}
		ls.drop(b)
	}
	if !ls.pool.contains(ip) || ls.byIP[ip] != nil {
		return nil
	}
	ls.byIP[ip] = &binding{Lease: Lease{MAC: declinedOwner, IP: ip, Expiry: now.Add(declineHold)}}
	return nil
}

func addr(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip.To4())
	return a
}
