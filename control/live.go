package control

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"lpmos.dev/lpmos/federation"
	"lpmos.dev/lpmos/store"
	"lpmos.dev/lpmos/store/httpjson"
)

// The live push: one etcd watch (store.WatchAll) feeds a hub that re-reads what changed
// and broadcasts view models to every open page over a WebSocket at /live. Changes are
// coalesced for flushDelay so a burst of progress updates costs one read per task. The
// views and what is remembered between reads (rates, health history) are the
// overview's; the hub only watches, tells the overview what it observed, and sends.

const (
	flushDelay    = 100 * time.Millisecond
	sendBuffer    = 64
	writeTimeout  = 10 * time.Second
	pingInterval  = 30 * time.Second
	rewatchDelay  = time.Second
	maxSnapTasks  = 2000
	pingEvery     = 5 * time.Second
	unmatchedMax  = 50
	liveReadLimit = 512
	// sessionRecheck: how soon a feed asks again whether its session ended when etcd
	// did not answer.
	sessionRecheck = 5 * time.Second
)

// liveMsg is one message to the browser. Type says which fields are set.
type liveMsg struct {
	Type      string          `json:"type"` // snapshot, task, tasks, task_deleted, regions, unmatched, etcd
	Task      *taskView       `json:"task,omitempty"`
	Tasks     []taskView      `json:"tasks,omitempty"`
	Deleted   string          `json:"deleted,omitempty"`
	Regions   []regionView    `json:"regions,omitempty"`
	Unmatched []unmatchedView `json:"unmatched,omitempty"`
	// UnmatchedTotal and AlertOver travel with regions and unmatched lists.
	UnmatchedTotal int `json:"unmatched_total"`
	AlertOver      int `json:"alert_over"`
	// EtcdError (type etcd) says why what the page shows may be stale; "" when etcd
	// answers again.
	EtcdError string `json:"etcd_error,omitempty"`
}

type subscriber struct {
	user    string // who is watching, for the per-user cap
	session string // the session cookie it came with ("" for a bearer token)
	ended   string // set before gone closes when the session ended: why ("logged out")
	ch      chan []byte
	gone    chan struct{} // closed when the hub drops a subscriber too slow to keep up
}

type hub struct {
	fleet *federation.Fleet
	log   *slog.Logger
	ov    *overview

	mu         sync.Mutex
	subs       map[*subscriber]struct{}
	dirtyTasks map[string]string // task id -> region
	// dirtyMirrored: tasks a region cluster's mirror changed (id -> region), read
	// from that mirror, not over the WAN.
	dirtyMirrored  map[string]string
	dirtyRegionsOf map[string]bool // regions whose newest tasks are pushed again (a resync, a cut, a return)
	dirtyRegions   bool
	dirtyUnmatched bool
	kick           chan struct{}
	stopped        chan struct{}
	etcdErr        string // last ping's error, "" when etcd answers
}

func newHub(fl *federation.Fleet, log *slog.Logger, ov *overview) *hub {
	return &hub{fleet: fl, log: log, ov: ov,
		subs: map[*subscriber]struct{}{}, dirtyTasks: map[string]string{}, dirtyMirrored: map[string]string{}, dirtyRegionsOf: map[string]bool{},
		kick: make(chan struct{}, 1), stopped: make(chan struct{})}
}

// run watches etcd and flushes changes until ctx ends, then closes every WebSocket so
// the HTTP server's shutdown is not held up by hijacked connections.
func (h *hub) run(ctx context.Context) {
	flushed, pinged := make(chan struct{}), make(chan struct{})
	go func() { h.flushLoop(ctx); close(flushed) }()
	go func() { h.pingLoop(ctx); close(pinged) }()
	defer func() { <-flushed; <-pinged; close(h.stopped) }()
	for {
		err := h.fleet.Home().WatchAll(ctx, func() {
			// Changes during a gap between watches are not replayed: re-read all.
			h.markAll()
		}, h.onChange)
		if ctx.Err() != nil {
			return
		}
		h.log.Warn("live watch ended; watching again", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(rewatchDelay):
		}
	}
}

// pingLoop tells open pages when etcd stops answering: a watch does not fail while
// the client retries, so without this a page would look live while showing the past.
func (h *hub) pingLoop(ctx context.Context) {
	t := time.NewTicker(pingEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, pingEvery/2)
		err := h.fleet.Home().Ping(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		msg := ""
		if err != nil {
			msg = "etcd unreachable: what this page shows may be stale"
		} else {
			actx, cancel := context.WithTimeout(ctx, pingEvery/2)
			alarms, aerr := h.fleet.Home().Alarms(actx)
			cancel()
			if aerr == nil && len(alarms) > 0 {
				msg = "etcd alarm " + strings.Join(alarms, ", ") + ": every write (tasks, approvals, progress) is refused until an operator compacts, defragments and disarms it"
			}
		}
		h.mu.Lock()
		changed := msg != h.etcdErr
		h.etcdErr = msg
		h.mu.Unlock()
		if changed {
			h.log.Warn("live: etcd health changed", "err", err)
			h.broadcast(liveMsg{Type: "etcd", EtcdError: msg})
			if msg == "" {
				h.markAll() // catch up on what the pages missed
			}
		}
	}
}

func (h *hub) markAll() {
	h.mu.Lock()
	h.dirtyRegions, h.dirtyUnmatched = true, true
	h.mu.Unlock()
	h.poke()
}

func (h *hub) poke() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// onMirrorChange is a change a region cluster's mirror applied: as a change of home's
// watch, and after a (re)load every page learns the region's state again.
func (h *hub) onMirrorChange(c store.Change) {
	if c.Kind == store.ChangeResync {
		h.onReach(c.Region)
		return
	}
	if c.Kind == store.ChangeTask {
		h.mu.Lock()
		h.dirtyMirrored[c.TaskID] = c.Region
		if c.Part == store.PartStatus || c.Deleted {
			h.dirtyRegions = true
		}
		h.mu.Unlock()
		h.poke()
		return
	}
	h.onChange(c)
}

// onReach: a region cluster became reachable or unreachable (or was added or
// removed): the regions, and the region's tasks (now stale, or fresh again), are
// pushed again.
func (h *hub) onReach(region string) {
	h.mu.Lock()
	h.dirtyRegions, h.dirtyUnmatched = true, true
	h.dirtyRegionsOf[region] = true
	h.mu.Unlock()
	h.poke()
}

func (h *hub) onChange(c store.Change) {
	h.mu.Lock()
	switch c.Kind {
	case store.ChangeTask:
		h.dirtyTasks[c.TaskID] = c.Region
		if c.Part == store.PartStatus || c.Deleted {
			h.dirtyRegions = true // the per-region counts moved
		}
	case store.ChangeRegion:
		h.dirtyRegions = true
	case store.ChangeUnmatched:
		h.dirtyUnmatched, h.dirtyRegions = true, true
	}
	h.mu.Unlock()
	h.poke()
}

func (h *hub) flushLoop(ctx context.Context) {
	defer h.closeAll()
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.kick:
		}
		select { // coalesce a burst
		case <-ctx.Done():
			return
		case <-time.After(flushDelay):
		}
		h.flush(ctx)
	}
}

func (h *hub) flush(ctx context.Context) {
	h.mu.Lock()
	tasks, regions, unmatched, regionTasks := h.dirtyTasks, h.dirtyRegions, h.dirtyUnmatched, h.dirtyRegionsOf
	mirrored := h.dirtyMirrored
	h.dirtyTasks, h.dirtyRegions, h.dirtyUnmatched, h.dirtyRegionsOf = map[string]string{}, false, false, map[string]bool{}
	h.dirtyMirrored = map[string]string{}
	h.mu.Unlock()
	for id, region := range mirrored {
		if _, again := tasks[id]; again {
			continue // home's watch named it too: read below
		}
		t, stale, ok := h.fleet.MirroredTask(region, id)
		if !ok {
			tasks[id] = region // gone from the mirror, or the region moved: read it
			continue
		}
		v := h.ov.task(t, stale)
		h.broadcast(liveMsg{Type: "task", Task: &v})
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for region := range regionTasks {
		vs, _, err := h.ov.taskPage(rctx, region, "", store.Page{Limit: maxSnapTasks})
		if err != nil {
			h.log.Warn("live: read region tasks", "region", region, "err", err)
			continue
		}
		if len(vs) > 0 {
			h.broadcast(liveMsg{Type: "tasks", Tasks: vs}) // one message: a page's send buffer is 64
		}
	}
	for id := range tasks {
		t, stale, err := h.fleet.GetTask(rctx, id)
		var ue *federation.UnreachableError
		switch {
		case errors.Is(err, store.ErrNotFound):
			h.broadcast(liveMsg{Type: "task_deleted", Deleted: id})
		case errors.As(err, &ue):
			h.log.Debug("live: read task", "task", id, "err", err)
		case err != nil:
			h.log.Warn("live: read task", "task", id, "err", err)
		default:
			v := h.ov.task(t, bool(stale))
			h.broadcast(liveMsg{Type: "task", Task: &v})
		}
	}
	if regions {
		if rv, total, err := h.ov.observe(rctx); err != nil {
			h.log.Warn("live: list regions", "err", err)
		} else {
			h.broadcast(liveMsg{Type: "regions", Regions: rv, UnmatchedTotal: total, AlertOver: h.ov.alert})
		}
	}
	if unmatched {
		if uv, err := h.ov.unmatched(rctx, "", unmatchedMax); err != nil {
			h.log.Warn("live: list unmatched", "err", err)
		} else {
			h.broadcast(liveMsg{Type: "unmatched", Unmatched: uv, AlertOver: h.ov.alert}) // totals travel with "regions"
		}
	}
}

func (h *hub) broadcast(m liveMsg) {
	b, err := json.Marshal(m)
	if err != nil {
		h.log.Error("live: encode", "err", err)
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		select {
		case s.ch <- b:
		default:
			// A page that cannot keep up reconnects and gets a fresh snapshot.
			delete(h.subs, s)
			close(s.gone)
		}
	}
}

// Live connections are capped (each holds a send buffer and a snapshot's worth of
// memory while it is written): in all, and per user.
const (
	maxLiveSubscribers = 256
	maxLivePerUser     = 16
)

// subscribe registers a subscriber for user (and its session cookie, "" for a bearer
// token), or returns nil over a cap.
func (h *hub) subscribe(user, session string) *subscriber {
	s := &subscriber{user: user, session: session, ch: make(chan []byte, sendBuffer), gone: make(chan struct{})}
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for o := range h.subs {
		if o.user == user {
			n++
		}
	}
	if len(h.subs) >= maxLiveSubscribers || n >= maxLivePerUser {
		return nil
	}
	h.subs[s] = struct{}{}
	return s
}

// endSession drops the live connections of a session that ended (logged out, idle,
// too old), telling each page why: a feed must not outlive the login it was opened
// with.
func (h *hub) endSession(session, why string) {
	if session == "" {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		if s.session == session {
			s.ended = why
			delete(h.subs, s)
			close(s.gone)
		}
	}
}

func (h *hub) unsubscribe(s *subscriber) {
	h.mu.Lock()
	if _, ok := h.subs[s]; ok {
		delete(h.subs, s)
		close(s.gone)
	}
	h.mu.Unlock()
}

func (h *hub) closeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		delete(h.subs, s)
		close(s.gone)
	}
}

// snapshot is what a page gets on (re)connect: everything, so a page that was open
// across a control plane restart catches up without a reload.
func (h *hub) snapshot(ctx context.Context) (liveMsg, error) {
	m := liveMsg{Type: "snapshot", AlertOver: h.ov.alert}
	var err error
	if m.Regions, m.UnmatchedTotal, err = h.ov.regions(ctx); err != nil {
		return m, err
	}
	if m.Unmatched, err = h.ov.unmatched(ctx, "", unmatchedMax); err != nil {
		return m, err
	}
	// The newest maxSnapTasks, without hardware (a snapshot per page load must not
	// read every report), sent oldest first as before.
	tasks, _, err := h.ov.taskPage(ctx, "", "", store.Page{Limit: maxSnapTasks})
	if err != nil {
		return m, err
	}
	slices.Reverse(tasks)
	m.Tasks = tasks
	return m, nil
}

// serveLive is GET /live: a WebSocket of liveMsg, server to browser only.
func (s *Server) serveLive(w http.ResponseWriter, r *http.Request) {
	h := s.live
	select {
	case <-h.stopped:
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	default:
	}
	// Only this site's own pages may read the push: Origin is required and must name
	// this host (Accept alone lets a request without Origin through).
	if !sameOrigin(r) {
		http.Error(w, "the live push needs a same-origin Origin header", http.StatusForbidden)
		return
	}
	user := ""
	if id := identityFrom(r.Context()); id != nil {
		user = id.User.Name
	}
	session := ""
	// A feed on a session ends with it: when the session would end (idle or too old)
	// the store is asked again, since a request elsewhere may have kept it alive.
	var ends *time.Timer
	var endsC <-chan time.Time
	if c, err := r.Cookie(sessionCookie); err == nil && r.Header.Get("Authorization") == "" {
		if id := identityFrom(r.Context()); id != nil && id.Session != nil {
			session = c.Value
			ends = time.NewTimer(s.sessionLimits().Ends(*id.Session).Sub(s.now()))
			defer ends.Stop()
			endsC = ends.C
		}
	}
	sub := h.subscribe(user, session)
	if sub == nil {
		http.Error(w, "too many live connections (at most 256, 16 per user): close some pages", http.StatusServiceUnavailable)
		return
	}
	defer h.unsubscribe(sub)
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return // Accept has answered
	}
	defer c.CloseNow()
	c.SetReadLimit(liveReadLimit)
	ctx := c.CloseRead(context.WithoutCancel(r.Context())) // we never read; this handles close frames

	sctx, cancel := context.WithTimeout(ctx, writeTimeout)
	snap, err := h.snapshot(sctx)
	cancel()
	if err != nil {
		s.log.Warn("live: snapshot", "err", err)
		c.Close(websocket.StatusTryAgainLater, "etcd unavailable")
		return
	}
	if err := writeJSON(ctx, c, snap); err != nil {
		return
	}
	ping := time.NewTicker(pingInterval)
	defer ping.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-endsC:
			cctx, cancel := context.WithTimeout(ctx, httpjson.RequestDeadline)
			at, err := s.home.SessionEnds(cctx, session, s.sessionLimits())
			cancel()
			switch {
			case errors.Is(err, store.ErrUnauthorized):
				s.log.Info("live: session ended", "user", user, "why", err)
				h.endSession(session, "session expired") // this session's other feeds too
				c.Close(websocket.StatusPolicyViolation, "session expired")
				return
			case err != nil:
				ends.Reset(sessionRecheck) // etcd does not answer: ask again soon
			default:
				ends.Reset(at.Sub(s.now()))
			}
		case <-sub.gone:
			if sub.ended != "" {
				c.Close(websocket.StatusPolicyViolation, sub.ended)
			} else {
				c.Close(websocket.StatusGoingAway, "reconnect")
			}
			return
		case <-h.stopped:
			c.Close(websocket.StatusServiceRestart, "control plane stopping")
			return
		case b := <-sub.ch:
			wctx, cancel := context.WithTimeout(ctx, writeTimeout)
			err := c.Write(wctx, websocket.MessageText, b)
			cancel()
			if err != nil {
				return
			}
		case <-ping.C:
			// Keeps idle proxies from cutting the connection.
			pctx, cancel := context.WithTimeout(ctx, writeTimeout)
			err := c.Ping(pctx)
			cancel()
			if err != nil {
				return
			}
		}
	}
}

func writeJSON(ctx context.Context, c *websocket.Conn, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	return c.Write(wctx, websocket.MessageText, b)
}
