package appliance

import (
	"context"
	"slices"
	"strings"
	"time"

	"lpmos.dev/lpmos/contract"
	"lpmos.dev/lpmos/store"
)

// tendInterval is how often the appliance checks its image catalog and etcd's alarms;
// every housekeepEvery-th round (and the first) it also replans, expires unmatched
// reports and fails overdue installs: those read every waiting task, and their
// deadlines are hours, so a minute of lag costs nothing.
const (
	tendInterval   = 5 * time.Second
	housekeepEvery = 12
)

// tend looks after the region's tasks until ctx ends: when the image catalog changes it
// publishes it at once (heartbeat) and replans the tasks waiting for approval, so a
// plan refused for a missing image becomes approvable once the image is uploaded; once
// a minute it replans anyway (plans made while the region was offline said "catalog
// unknown"), expires old unmatched reports and fails installs past --deploy-timeout.
// Errors are logged and retried next round: the store may be briefly unreachable.
func (a *Appliance) tend(ctx context.Context) {
	t := time.NewTicker(tendInterval)
	defer t.Stop()
	var published []contract.ImageRef
	var alarmed string // etcd's alarms as last logged
	replanDue := false // the catalog changed since the last successful replan
	for round := 0; ; round++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, tendInterval)
		rctx = store.WithActor(rctx, store.Actor{Kind: store.ActorSystem, Name: "appliance-" + a.cfg.Label})
		if cat := a.heartbeat().Images; !slices.Equal(cat, published) {
			if err := a.hb.Beat(rctx); err != nil {
				a.log.Warn("could not publish the image catalog", "err", err)
			} else {
				published, replanDue = cat, true
			}
		}
		if alarms, err := a.store.Alarms(rctx); err == nil && strings.Join(alarms, ",") != alarmed {
			if alarmed = strings.Join(alarms, ","); alarmed != "" {
				a.log.Error("etcd alarm raised: every write is refused until an operator compacts, defragments and disarms it (etcdctl alarm disarm)", "alarms", alarmed)
			} else {
				a.log.Info("etcd alarms cleared")
			}
		}
		housekeep := round%housekeepEvery == 0
		if replanDue || housekeep {
			if n, err := a.store.Replan(rctx, a.cfg.Label); err != nil {
				a.log.Warn("replan failed", "err", err)
			} else {
				replanDue = false
				if n > 0 {
					a.log.Info("Install plans updated", "tasks", n)
				}
			}
		}
		if housekeep {
			a.housekeep(rctx)
		}
		cancel()
	}
}

// housekeep expires old unmatched reports and fails overdue installs.
func (a *Appliance) housekeep(ctx context.Context) {
	if n, err := a.store.ExpireUnmatched(ctx, a.cfg.Label); err != nil {
		a.log.Warn("unmatched report expiry failed", "err", err)
	} else if n > 0 {
		a.log.Info("Unmatched reports expired", "reports", n, "older_than", store.UnmatchedTTL)
	}
	failed, err := a.store.FailOverdue(ctx, a.cfg.Label, a.cfg.deployTimeout())
	if err != nil {
		a.log.Warn("deploy timeout check failed", "err", err)
	}
	for _, f := range failed {
		a.log.Warn("Task "+f.TaskID+" failed", "reason", f.Error)
	}
}
