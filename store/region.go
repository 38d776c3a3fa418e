package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Region status values (/os/region/{region}/status).
const (
	RegionOnline  = "online"
	RegionOffline = "offline"
)

// Heartbeater keeps /os/region/{region}/heartbeat alive on a lease: if the appliance
// dies, etcd deletes the key when the TTL runs out and the region reads as offline.
type Heartbeater struct {
	s    *Store
	info func() Heartbeat
	hb   Heartbeat
	ttl  time.Duration
	log  *slog.Logger
	done chan struct{}
	stop context.CancelFunc

	mu    sync.Mutex // one beat at a time: the loop and Beat share the lease
	lease clientv3.LeaseID
}

// StartHeartbeat writes the heartbeat and status online now, then refreshes them every
// ttl/3 until Stop, taking the value from info each time (so what the region
// advertises, such as its images, stays current). ttl is rounded up to whole seconds
// (etcd's lease unit).
func (s *Store) StartHeartbeat(ctx context.Context, info func() Heartbeat, ttl time.Duration, log *slog.Logger) (*Heartbeater, error) {
	hb := info()
	if err := ValidateRegion(hb.Region); err != nil {
		return nil, err
	}
	if ttl < time.Second {
		ttl = time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Heartbeater{s: s, info: info, hb: hb, ttl: ttl, log: log, done: make(chan struct{})}
	if err := h.beat(ctx); err != nil {
		return nil, err
	}
	loopCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	h.stop = cancel
	go h.loop(loopCtx)
	return h, nil
}

// Beat writes the heartbeat now, with what info returns now (the appliance publishes a
// changed image catalog at once instead of at the next tick).
func (h *Heartbeater) Beat(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.beat(ctx)
}

func (h *Heartbeater) beat(ctx context.Context) error {
	if h.lease != 0 {
		if _, err := h.s.c.KeepAliveOnce(ctx, h.lease); errors.Is(err, rpctypes.ErrLeaseNotFound) {
			h.lease = 0 // expired while etcd was unreachable: take a new one
		} else if err != nil {
			return fmt.Errorf("heartbeat keepalive: %w", err)
		}
	}
	if h.lease == 0 {
		secs := int64((h.ttl + time.Second - 1) / time.Second)
		g, err := h.s.c.Grant(ctx, secs)
		if err != nil {
			return fmt.Errorf("heartbeat lease: %w", err)
		}
		h.lease = g.ID
	}
	hb := h.info()
	hb.Region = h.hb.Region
	hb.Timestamp = h.s.now()
	b, _ := json.Marshal(hb)
	_, err := h.s.c.Txn(ctx).Then(
		clientv3.OpPut(heartbeatKey(hb.Region), string(b), clientv3.WithLease(h.lease)),
		clientv3.OpPut(regionStatusKey(hb.Region), RegionOnline),
	).Commit()
	if err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	return nil
}

func (h *Heartbeater) loop(ctx context.Context) {
	defer close(h.done)
	t := time.NewTicker(h.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			bctx, cancel := context.WithTimeout(ctx, h.ttl/3)
			if err := h.Beat(bctx); err != nil && ctx.Err() == nil {
				h.log.Warn("heartbeat failed", "err", err)
			}
			cancel()
		}
	}
}

// Stop ends the heartbeat: status offline and the lease revoked, so the region reads
// offline at once rather than after the TTL.
func (h *Heartbeater) Stop(ctx context.Context) error {
	h.stop()
	<-h.done
	_, err := h.s.c.Put(ctx, regionStatusKey(h.hb.Region), RegionOffline)
	if h.lease != 0 {
		if _, rerr := h.s.c.Revoke(ctx, h.lease); rerr != nil && err == nil && !errors.Is(rerr, rpctypes.ErrLeaseNotFound) {
			err = rerr
		}
	}
	if err != nil {
		return fmt.Errorf("heartbeat stop: %w", err)
	}
	return nil
}

// ListRegions returns every known region (one that ever had an appliance, a task or an
// unmatched report), with health and counts. It reads keys only for the counts, never
// the tasks' hardware reports.
func (s *Store) ListRegions(ctx context.Context) ([]Region, error) {
	return s.regions(ctx, "")
}

// regions reads every region, or only one when name is set. The counts are etcd
// count-only ranges, answered from etcd's key index without reading a value: the
// unmatched reports hold hardware (up to contract.MaxHardwareBytes each), and a range
// over them, even keys-only, reads every one from disk.
func (s *Store) regions(ctx context.Context, name string) ([]Region, error) {
	regionP := regionRoot
	names := []string{name}
	if name != "" {
		regionP = regionDir(name)
	} else {
		var err error
		if names, err = s.RegionNames(ctx); err != nil {
			return nil, err
		}
	}
	regions := map[string]*Region{}
	get := func(name string) *Region {
		r := regions[name]
		if r == nil {
			r = &Region{Name: name, Status: RegionOffline, Counts: map[Status]int{}}
			regions[name] = r
		}
		return r
	}
	resp, err := s.c.Get(ctx, regionP, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list regions: %w", err)
	}
	for _, kv := range resp.Kvs {
		parts := strings.Split(strings.TrimPrefix(string(kv.Key), regionRoot), "/")
		if len(parts) != 2 {
			continue
		}
		r := get(parts[0])
		switch parts[1] {
		case "status":
			r.Status = string(kv.Value)
		case "heartbeat":
			var hb Heartbeat
			if json.Unmarshal(kv.Value, &hb) == nil {
				r.Heartbeat = &hb
			}
		}
	}
	// One count per region and status, and one of its unmatched reports, in
	// transactions under etcd's default limit of 128 operations each.
	type count struct {
		region string
		status Status // "": the unmatched reports
	}
	var counts []count
	var ops []clientv3.Op
	for _, n := range names {
		get(n)
		for _, st := range Statuses {
			counts = append(counts, count{n, st})
			ops = append(ops, clientv3.OpGet(statusIndexPrefix(n)+string(st)+"/", clientv3.WithPrefix(), clientv3.WithCountOnly()))
		}
		counts = append(counts, count{n, ""})
		ops = append(ops, clientv3.OpGet(unmatchedPrefix(n), clientv3.WithPrefix(), clientv3.WithCountOnly()))
	}
	const batch = 120
	for i := 0; i < len(ops); i += batch {
		j := min(i+batch, len(ops))
		tr, err := s.c.Txn(ctx).Then(ops[i:j]...).Commit()
		if err != nil {
			return nil, fmt.Errorf("count region tasks: %w", err)
		}
		for k, r := range tr.Responses {
			c, n := counts[i+k], int(r.GetResponseRange().Count)
			switch {
			case c.status == "":
				get(c.region).Unmatched = n
			case n > 0:
				get(c.region).Counts[c.status] = n
			}
		}
	}
	out := make([]Region, 0, len(regions))
	for _, r := range regions {
		// Online means a live heartbeat: the lease is gone within the TTL of a crash,
		// while the status key of a killed appliance would still say online.
		r.Online = r.Heartbeat != nil
		if !r.Online {
			r.Status = RegionOffline
		}
		out = append(out, *r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// GetRegion returns one region (a region nobody has heard of is offline and empty).
func (s *Store) GetRegion(ctx context.Context, name string) (Region, error) {
	if err := ValidateRegion(name); err != nil {
		return Region{}, err
	}
	one, err := s.regions(ctx, name)
	if err != nil {
		return Region{}, err
	}
	if len(one) == 0 {
		return Region{}, fmt.Errorf("%w: region %s", ErrNotFound, name)
	}
	return one[0], nil
}

// Ping checks that etcd answers (health endpoints).
func (s *Store) Ping(ctx context.Context) error {
	_, err := s.c.Get(ctx, healthProbeKey, clientv3.WithCountOnly())
	return err
}

// TaskEvent is one change of a region's task, decoded: callers never see keys or raw
// values.
type TaskEvent struct {
	Region, TaskID string
	Part           TaskPart
	// Created is set when the task itself was created (its metadata's first write).
	Created bool
	Deleted bool
	// Metadata is set for a PartMetadata change, Status for a PartStatus change.
	Metadata *Metadata
	Status   Status
}

// WatchTasks streams changes of one region's tasks until ctx ends, resuming by itself
// after a failure (watchPrefixes). ready (may be nil) is called once etcd has registered
// the watch (nothing written after that is missed), and again after a resync (changes
// lost to a compaction: re-read). A value that does not decode is reported with its
// part and no decoded field.
func (s *Store) WatchTasks(ctx context.Context, region string, ready func(), fn func(TaskEvent)) error {
	return s.watchPrefixes(ctx, []string{regionTaskPrefix(region)}, 0, ready, func(ev *clientv3.Event) {
		r, id, field, ok := splitTaskKey(string(ev.Kv.Key))
		if !ok {
			return
		}
		te := TaskEvent{Region: r, TaskID: id, Part: TaskPart(field), Deleted: ev.Type == clientv3.EventTypeDelete}
		if !te.Deleted {
			switch te.Part {
			case PartMetadata:
				var m Metadata
				if json.Unmarshal(ev.Kv.Value, &m) == nil {
					te.Metadata, te.Created = &m, ev.IsCreate()
				}
			case PartStatus:
				te.Status = Status(ev.Kv.Value)
			}
		}
		fn(te)
	})
}

// WaitStatus blocks until the task's status is no longer cur (or the task is gone),
// or ctx ends. The regional API uses it to long-poll approval, so an agent starts
// installing the moment a person approves instead of at its next poll.
func (s *Store) WaitStatus(ctx context.Context, region, id string, cur Status) error {
	key := taskKey(region, id, fieldStatus)
	resp, err := s.c.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("read status: %w", err)
	}
	if len(resp.Kvs) == 0 || Status(resp.Kvs[0].Value) != cur {
		return nil
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for wr := range s.c.Watch(clientv3.WithRequireLeader(wctx), key, clientv3.WithRev(resp.Header.Revision+1)) {
		if err := wr.Err(); err != nil {
			return fmt.Errorf("watch status: %w", err)
		}
		for _, ev := range wr.Events {
			if ev.Type == clientv3.EventTypeDelete || Status(ev.Kv.Value) != cur {
				return nil
			}
		}
	}
	return ctx.Err()
}

// Revision is the cluster's current revision (a Mirror has caught up when its
// Revision reaches it).
func (s *Store) Revision(ctx context.Context) (int64, error) {
	resp, err := s.c.Get(ctx, healthProbeKey, clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("etcd revision: %w", err)
	}
	return resp.Header.Revision, nil
}

// Alarms lists etcd's raised alarms ("NOSPACE", "CORRUPT"), for health pages: an
// alarm stops every write, and operators must hear of it before the 500s would.
func (s *Store) Alarms(ctx context.Context) ([]string, error) {
	resp, err := s.c.AlarmList(ctx)
	if err != nil {
		return nil, fmt.Errorf("etcd alarms: %w", err)
	}
	var out []string
	for _, a := range resp.Alarms {
		out = append(out, a.Alarm.String())
	}
	return out, nil
}
