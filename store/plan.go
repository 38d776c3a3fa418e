package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"lpmos.dev/lpmos/contract"
)

// Plans: every write of a task's hardware writes its plan in the same transaction,
// computed by contract.MakePlan from that hardware, the task's disk hint and OS, and
// the catalog the region advertises in its heartbeat. Replan refreshes the plans of
// tasks waiting for approval when the catalog changes. Nothing else computes a plan.

// regionCatalog is the catalog in the region's heartbeat; nil when the region is
// offline (the plan then says the catalog is unknown).
func (s *Store) regionCatalog(ctx context.Context, region string) ([]contract.ImageRef, error) {
	resp, err := s.c.Get(ctx, heartbeatKey(region))
	if err != nil {
		return nil, fmt.Errorf("read region %s catalog: %w", region, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	var hb Heartbeat
	if err := json.Unmarshal(resp.Kvs[0].Value, &hb); err != nil {
		return nil, nil // unreadable: treated as unknown, never as a guess
	}
	if hb.Images == nil {
		hb.Images = []contract.ImageRef{}
	}
	return hb.Images, nil
}

// planFor plans t's install on hardware with the region's catalog.
func planFor(t *Task, hardware []byte, catalog []contract.ImageRef) *contract.Plan {
	p := contract.MakePlan(t.TaskID, hardware, t.Disk, t.OSRef, !t.CloudInit.Empty(), catalog)
	return &p
}

// ErrPlanChanged is an approval of a plan that is no longer the task's: the hardware
// (or the catalog) changed after the person looked. It wraps ErrConflict (409).
var ErrPlanChanged = fmt.Errorf("%w: the hardware changed, review again", ErrConflict)

// ApproveTask approves a pending_approval task's plan, identified by its digest (what
// the person saw). A missing or stale digest, a task without a plan, or a plan that
// cannot be carried out is refused and nothing is written. The guarded transaction
// makes a report that lands between the read and the write fail the approval too.
func (s *Store) ApproveTask(ctx context.Context, id, digest string) (Task, error) {
	region, err := s.regionOf(ctx, id)
	if err != nil {
		return Task{}, err
	}
	return s.update(ctx, region, id, func(t *Task) (change, error) {
		if t.Status != StatusPendingApproval {
			return change{}, &TransitionError{TaskID: id, From: t.Status, To: StatusApproved}
		}
		p := t.Plan
		switch {
		case digest == "":
			return change{}, invalid("plan_digest", "is required: approve the plan you reviewed (GET /api/v1/tasks/{id} shows plan.digest)")
		case p == nil:
			return change{}, fmt.Errorf("%w: task %s has no install plan yet", ErrConflict, id)
		case p.Digest != digest:
			return change{}, fmt.Errorf("%w (task %s: plan %s is current, not %s)", ErrPlanChanged, id, short(p.Digest), short(digest))
		case !p.Approvable():
			return change{}, fmt.Errorf("%w: task %s cannot be installed: %s", ErrConflict, id, p.Refused)
		}
		now := s.now()
		t.ApprovedAt, t.Review = &now, ""
		a := &Approval{
			Status: "approved", ApprovedBy: ActorFrom(ctx).String(), ApprovedAt: now, PlanDigest: p.Digest,
			DiskPath: p.Disk.Path, DiskSerial: p.Disk.Serial, DiskWWN: p.Disk.WWN, ImageSHA256: p.Image.SHA256,
		}
		return change{to: StatusApproved, approval: a, action: AuditTaskApprove, detail: map[string]string{
			"plan_digest": a.PlanDigest, "disk_path": a.DiskPath, "disk_serial": a.DiskSerial, "disk_wwn": a.DiskWWN, "image_sha256": a.ImageSHA256,
		}}, nil
	})
}

func short(d string) string {
	if len(d) > 12 {
		return d[:12]
	}
	if d == "" {
		return `""`
	}
	return d
}

// Replan recomputes the plans of the region's tasks waiting for approval against the
// region's current catalog (an image uploaded after the report, or replaced). Only a
// plan that changed is written; its new digest makes an approval of the old one fail.
// It returns how many plans changed.
func (s *Store) Replan(ctx context.Context, region string) (int, error) {
	ids, err := s.taskIDsByStatus(ctx, region, StatusPendingApproval)
	if err != nil {
		return 0, err
	}
	catalog, err := s.regionCatalog(ctx, region)
	if err != nil {
		return 0, err
	}
	changed := 0
	for _, id := range ids {
		_, err := s.update(ctx, region, id, func(t *Task) (change, error) {
			if t.Status != StatusPendingApproval || len(t.Hardware) == 0 {
				return change{}, errUnchanged
			}
			p := planFor(t, t.Hardware, catalog)
			if t.Plan != nil && t.Plan.Digest == p.Digest {
				return change{}, errUnchanged
			}
			now := s.now()
			t.PlannedAt = &now
			return change{to: StatusPendingApproval, plan: p, action: AuditTaskReplan,
				detail: map[string]string{"plan_digest": p.Digest, "refused": p.Refused}}, nil
		})
		switch {
		case err == nil:
			changed++
		case errors.Is(err, errUnchanged), errors.Is(err, ErrNotFound):
		default:
			return changed, err
		}
	}
	return changed, nil
}

var errUnchanged = errors.New("unchanged")

// FailOverdue fails the region's approved or installing tasks whose approval is older
// than timeout: an install that never completes (the agent died, its completion was
// never acknowledged) must not hold the machine's approval forever. It returns the
// tasks it failed.
func (s *Store) FailOverdue(ctx context.Context, region string, timeout time.Duration) ([]Task, error) {
	var failed []Task
	for _, st := range []Status{StatusApproved, StatusInstalling} {
		ids, err := s.taskIDsByStatus(ctx, region, st)
		if err != nil {
			return failed, err
		}
		for _, id := range ids {
			t, err := s.update(ctx, region, id, func(t *Task) (change, error) {
				if !t.Status.Approved() || t.ApprovedAt == nil || s.now().Sub(*t.ApprovedAt) < timeout {
					return change{}, errUnchanged
				}
				now := s.now()
				t.FinishedAt = &now
				t.Error = fmt.Sprintf("deploy timeout: not completed within %s of approval (was %s; a completion the agent sent may not have been acknowledged)", timeout, t.Status)
				return change{to: StatusFailed, action: AuditTaskTimeout, detail: map[string]string{"reason": t.Error}}, nil
			})
			switch {
			case err == nil:
				failed = append(failed, t)
			case errors.Is(err, errUnchanged), errors.Is(err, ErrNotFound):
			default:
				return failed, err
			}
		}
	}
	return failed, nil
}

// taskIDsByStatus lists a region's task ids in one status from the status index
// (keys only: no task is read).
func (s *Store) taskIDsByStatus(ctx context.Context, region string, st Status) ([]string, error) {
	refs, _, err := s.statusRefs(ctx, region, st)
	if err != nil {
		return nil, fmt.Errorf("list %s tasks of %s: %w", st, region, err)
	}
	ids := make([]string, len(refs))
	for i, r := range refs {
		ids[i] = r.id
	}
	return ids, nil
}
