// Package store is the only code that knows LPMOS's etcd keys: typed operations on
// tasks, regions and unmatched reports, the MAC index, and the task state machine.
// Every multi-key change is one etcd transaction guarded by the revisions it read, so
// concurrent writers (100 agents, two control planes) never half-write or lose an update.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	clientv3 "go.etcd.io/etcd/client/v3"

	"lpmos.dev/lpmos/contract"
)

// Store wraps an etcd client.
type Store struct {
	c      *clientv3.Client
	region string // InRegion's: tasks named by id are looked up here only
	clock  atomic.Pointer[func() time.Time]
}

// New returns a Store on c. The caller owns c; New installs the store's deadline and
// retry policy on c's KV (retry.go), so every request through c follows it.
func New(c *clientv3.Client) *Store {
	withPolicy(c)
	s := &Store{c: c}
	s.SetClock(nil)
	return s
}

// SetClock replaces the clock every timestamp and deadline of this Store reads (tests
// of timeouts without sleeping); nil restores the real one.
func (s *Store) SetClock(now func() time.Time) {
	if now == nil {
		now = func() time.Time { return time.Now().UTC() }
	}
	s.clock.Store(&now)
}

func (s *Store) now() time.Time { return (*s.clock.Load())() }

// AutoMatchMaxAge is how old an unmatched report may be and still be attached to a new
// task for its MAC.
const AutoMatchMaxAge = time.Hour

// maxRetries bounds optimistic-concurrency loops; each retry means another writer won.
const maxRetries = 20

// NewTask is what a person asks for.
type NewTask struct {
	RegionID  string `json:"region_id"`
	TargetMAC string `json:"target_mac"`
	contract.OSRef
	Disk *contract.DiskHint `json:"disk,omitempty"`
	// The installed OS's first-boot configuration (hostname, ssh_authorized_keys,
	// user_data, network_config; store/cloudinit.go); nil: none, no seed.
	*contract.CloudInit
}

// Validate checks and normalises the request in place.
func (n *NewTask) Validate() error {
	if err := ValidateRegion(n.RegionID); err != nil {
		return err
	}
	mac, err := normalizeMAC("target_mac", n.TargetMAC)
	if err != nil {
		return err
	}
	n.TargetMAC = mac
	if err := n.OSRef.Validate(); err != nil {
		return err
	}
	if d := n.Disk; d != nil {
		if d.MinBytes < 0 || d.MaxBytes < 0 || (d.MaxBytes > 0 && d.MaxBytes < d.MinBytes) {
			return invalid("disk", "min_bytes/max_bytes must be >= 0 and min <= max")
		}
		for f, v := range map[string]string{"disk.serial": d.Serial, "disk.wwn": d.WWN, "disk.by_path": d.ByPath} {
			if contract.HasControl(v) || len(v) > 256 {
				return invalid(f, "must be printable and at most 256 characters")
			}
		}
	}
	return validateCloudInit(&n.CloudInit)
}

// CreateTask creates a task in pending, or straight in pending_approval when its MAC
// already has a recent unmatched report in the region (auto-matching: the report's
// hardware moves onto the task with its plan, and the report is removed, in the same
// transaction). A report older than AutoMatchMaxAge is removed but not attached: the
// machine must report again, so a person never approves hardware nobody has seen for
// hours (or a report anything on the boot network forged long ago). A second open
// task for the same (region, MAC) is an ErrConflict.
func (s *Store) CreateTask(ctx context.Context, n NewTask) (Task, error) {
	if err := n.Validate(); err != nil {
		return Task{}, err
	}
	region, mac := n.RegionID, n.TargetMAC
	// UUIDv7: ids sort by creation time, so the status index (keys only) lists tasks
	// newest first without reading one of them.
	tid, err := uuid.NewV7()
	if err != nil {
		return Task{}, fmt.Errorf("create task: %w", err)
	}
	defaults, err := s.RegionCloudInit(ctx, region)
	if err != nil {
		return Task{}, err
	}
	t := Task{Metadata: Metadata{
		TaskID: tid.String(), RegionID: region, TargetMAC: mac,
		OSRef: n.OSRef, Disk: n.Disk, CloudInit: mergeCloudInit(defaults, n.CloudInit),
		CreatedAt: s.now(),
	}}
	openIdx, umIdx := openMACIndexKey(region, mac), unmatchedIndexKey(region, mac)
	for range maxRetries {
		report, umRev, err := s.unmatchedFor(ctx, region, mac)
		if err != nil {
			return Task{}, err
		}
		t.Status, t.Hardware, t.ReportedAt, t.Plan, t.PlannedAt = StatusPending, nil, nil, nil, nil
		var ops []clientv3.Op
		if report != nil {
			ops = append(ops, clientv3.OpDelete(unmatchedKey(region, report.ID)), clientv3.OpDelete(umIdx))
		}
		if report != nil && s.now().Sub(report.ReceivedAt) <= AutoMatchMaxAge {
			catalog, err := s.regionCatalog(ctx, region)
			if err != nil {
				return Task{}, err
			}
			at, now := report.ReceivedAt, s.now()
			t.Status, t.Hardware, t.ReportedAt, t.PlannedAt = StatusPendingApproval, report.Hardware, &at, &now
			t.Plan = planFor(&t, report.Hardware, catalog)
			plan, _ := json.Marshal(t.Plan)
			ops = append(ops,
				clientv3.OpPut(taskKey(region, t.TaskID, fieldHardware), string(report.Hardware)),
				clientv3.OpPut(taskKey(region, t.TaskID, fieldPlan), string(plan)))
		}
		audit := newAudit(ctx, s.now(), AuditTaskCreate, region, t.TaskID).with("mac", mac).with("os", t.OSRef.String())
		if t.Plan != nil {
			audit.with("auto_matched", report.ID).with("plan_digest", t.Plan.Digest)
		}
		ops = append(ops, audit.op())
		meta, _ := json.Marshal(t.Metadata)
		ops = append(ops,
			clientv3.OpPut(taskKey(region, t.TaskID, fieldMetadata), string(meta)),
			clientv3.OpPut(taskKey(region, t.TaskID, fieldStatus), string(t.Status)),
			clientv3.OpPut(openIdx, t.TaskID),
			clientv3.OpPut(lastMACIndexKey(region, mac), t.TaskID),
			clientv3.OpPut(taskRegionIndexKey(t.TaskID), region),
			clientv3.OpPut(statusIndexKey(region, t.Status, t.TaskID), ""))
		resp, err := s.c.Txn(ctx).If(
			clientv3.Compare(clientv3.CreateRevision(openIdx), "=", 0),
			clientv3.Compare(clientv3.ModRevision(umIdx), "=", umRev),
		).Then(ops...).Else(clientv3.OpGet(openIdx)).Commit()
		if err != nil {
			return Task{}, fmt.Errorf("create task: %w", err)
		}
		if resp.Succeeded {
			return t, nil
		}
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
			if string(kvs[0].Value) == t.TaskID {
				return t, nil // our own commit, whose answer was lost: the retry found it (retry.go)
			}
			return Task{}, fmt.Errorf("%w: MAC %s already has open task %s in region %s (complete, fail or cancel it first)",
				ErrConflict, mac, kvs[0].Value, region)
		}
		// The unmatched report changed under us: read it again.
	}
	return Task{}, fmt.Errorf("%w: create task: too many concurrent updates", ErrConflict)
}

// GetTask reads a task by id from whichever region holds it.
func (s *Store) GetTask(ctx context.Context, id string) (Task, error) {
	region, err := s.regionOf(ctx, id)
	if err != nil {
		return Task{}, err
	}
	snap, err := s.readTask(ctx, region, id)
	if err != nil {
		return Task{}, err
	}
	return snap.task, nil
}

// InRegion returns a Store on the same client that looks up tasks named by id in
// region only, never through the task index (control-only: no region's etcd role may
// read it), so GetTask, ApproveTask and CancelTask work with the region's etcd
// credentials; a task of another region is not found. What the appliance host's
// break-glass commands work through. Close closes the shared client.
func (s *Store) InRegion(region string) (*Store, error) {
	if err := ValidateRegion(region); err != nil {
		return nil, err
	}
	r := &Store{c: s.c, region: region}
	r.clock.Store(s.clock.Load())
	return r, nil
}

func (s *Store) regionOf(ctx context.Context, id string) (string, error) {
	if _, err := uuid.Parse(id); err != nil {
		return "", fmt.Errorf("%w: task %q", ErrNotFound, id)
	}
	if s.region != "" {
		return s.region, nil // reading the task then finds it there, or ErrNotFound
	}
	resp, err := s.c.Get(ctx, taskRegionIndexKey(id))
	if err != nil {
		return "", fmt.Errorf("find task %s: %w", id, err)
	}
	if len(resp.Kvs) == 0 {
		return "", fmt.Errorf("%w: task %s", ErrNotFound, id)
	}
	return string(resp.Kvs[0].Value), nil
}

// ListFilter selects tasks; empty fields match everything.
type ListFilter struct {
	Region string
	Status Status
	MAC    string
}

// ListTasks returns tasks, oldest first. A status filter reads only the tasks in that
// status, found through the status index (keys only).
func (s *Store) ListTasks(ctx context.Context, f ListFilter) ([]Task, error) {
	if f.Status != "" {
		return s.listByStatus(ctx, f)
	}
	prefix := taskRoot
	if f.Region != "" {
		prefix = regionTaskPrefix(f.Region)
	}
	resp, err := s.c.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list tasks: %w", err)
	}
	byID := map[string]*taskSnap{}
	var order []string
	for _, kv := range resp.Kvs {
		region, id, field, ok := splitTaskKey(string(kv.Key))
		if !ok {
			continue
		}
		k := region + "/" + id
		snap := byID[k]
		if snap == nil {
			snap = &taskSnap{}
			byID[k] = snap
			order = append(order, k)
		}
		if err := snap.apply(field, kv.Value, kv.ModRevision); err != nil {
			return nil, fmt.Errorf("task %s: %w", k, err)
		}
	}
	var out []Task
	for _, k := range order {
		t := byID[k].task
		if t.TaskID == "" {
			continue // a half-visible task cannot happen (one txn), but never crash on foreign keys
		}
		if (f.Status != "" && t.Status != f.Status) || (f.MAC != "" && t.TargetMAC != f.MAC) {
			continue
		}
		out = append(out, t)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out, nil
}

// listByStatus is ListTasks with a status filter: the status index names the tasks,
// then those are read whole, at the index read's revision.
func (s *Store) listByStatus(ctx context.Context, f ListFilter) ([]Task, error) {
	refs, rev, err := s.statusRefs(ctx, f.Region, f.Status)
	if err != nil {
		return nil, err
	}
	out, err := s.readTasks(ctx, refs, rev, true, func(t Task) bool {
		return t.Status == f.Status && (f.MAC == "" || t.TargetMAC == f.MAC)
	})
	if err != nil {
		return nil, fmt.Errorf("list tasks: %w", err)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out, nil
}

// taskSnap is a task as read, with the revisions a guarded update compares.
type taskSnap struct {
	task      Task
	statusRev int64
	metaRev   int64
	tokenRev  int64 // 0: no agent token key
}

func (sn *taskSnap) apply(field string, v []byte, rev int64) error {
	switch field {
	case fieldMetadata:
		sn.metaRev = rev
		return json.Unmarshal(v, &sn.task.Metadata)
	case fieldStatus:
		sn.statusRev = rev
		sn.task.Status = Status(v)
	case fieldHardware:
		sn.task.Hardware = json.RawMessage(v)
	case fieldProgress:
		sn.task.Progress = new(contract.Progress)
		return json.Unmarshal(v, sn.task.Progress)
	case fieldApproval:
		sn.task.Approval = new(Approval)
		return json.Unmarshal(v, sn.task.Approval)
	case fieldPlan:
		sn.task.Plan = new(contract.Plan)
		return json.Unmarshal(v, sn.task.Plan)
	case fieldToken:
		sn.tokenRev = rev
		sn.task.AgentToken = new(AgentToken)
		return sn.task.AgentToken.load(v)
	}
	return nil
}

func (s *Store) readTask(ctx context.Context, region, id string) (*taskSnap, error) {
	resp, err := s.c.Get(ctx, taskDir(region, id), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read task %s: %w", id, err)
	}
	snap := &taskSnap{}
	for _, kv := range resp.Kvs {
		_, _, field, ok := splitTaskKey(string(kv.Key))
		if !ok {
			continue
		}
		if err := snap.apply(field, kv.Value, kv.ModRevision); err != nil {
			return nil, fmt.Errorf("task %s %s: %w", id, field, err)
		}
	}
	if snap.metaRev == 0 {
		return nil, fmt.Errorf("%w: task %s in region %s", ErrNotFound, id, region)
	}
	return snap, nil
}

// change is what one guarded update writes besides metadata and status.
type change struct {
	to       Status
	hardware json.RawMessage
	progress *contract.Progress
	approval *Approval
	plan     *contract.Plan
	// clearApproval deletes the approval: the task goes back to a person.
	clearApproval bool
	// agentToken is written to the task's agent_token key (issued or reset).
	agentToken *AgentToken
	// keepStatus writes beside the status without moving it (an agent token issued
	// to an approved task, a reset): to must equal the status, no transition is checked.
	keepStatus bool
	extra      []clientv3.Op
	// action names the audit entry written with the change; "" derives it from a
	// status change (start, complete, fail, cancel), and no status change writes none.
	action string
	detail map[string]string
}

// statusAction is the audit action of a status change nobody named.
var statusAction = map[Status]string{
	StatusInstalling: AuditTaskStart, StatusCompleted: AuditTaskComplete, StatusFailed: AuditTaskFail,
	StatusCancelled: AuditTaskCancel, StatusPendingApproval: AuditTaskReport, StatusApproved: AuditTaskApprove,
}

// update reads the task, lets fn decide the change (mutating t's metadata), checks the
// transition, and commits only if neither status nor metadata moved since the read.
func (s *Store) update(ctx context.Context, region, id string, fn func(t *Task) (change, error)) (Task, error) {
	for range maxRetries {
		snap, err := s.readTask(ctx, region, id)
		if err != nil {
			return Task{}, err
		}
		t := snap.task
		from := t.Status
		ch, err := fn(&t)
		if err != nil {
			return Task{}, err
		}
		if !CanTransition(from, ch.to) && !(ch.keepStatus && ch.to == from) {
			return Task{}, &TransitionError{TaskID: id, From: from, To: ch.to}
		}
		t.Status = ch.to
		meta, _ := json.Marshal(t.Metadata)
		ops := append([]clientv3.Op{
			clientv3.OpPut(taskKey(region, id, fieldMetadata), string(meta)),
			clientv3.OpPut(taskKey(region, id, fieldStatus), string(ch.to)),
		}, ch.extra...)
		if from != ch.to {
			ops = append(ops,
				clientv3.OpDelete(statusIndexKey(region, from, id)),
				clientv3.OpPut(statusIndexKey(region, ch.to, id), ""))
		}
		if ch.to.Final() {
			// The task gives its MAC back: a new task for it may be created.
			ops = append(ops, clientv3.OpDelete(openMACIndexKey(region, t.TargetMAC)))
		}
		if ch.hardware != nil {
			t.Hardware = ch.hardware
			ops = append(ops, clientv3.OpPut(taskKey(region, id, fieldHardware), string(ch.hardware)))
		}
		if ch.progress != nil {
			t.Progress = ch.progress
			b, _ := json.Marshal(ch.progress)
			ops = append(ops, clientv3.OpPut(taskKey(region, id, fieldProgress), string(b)))
		}
		if ch.approval != nil {
			t.Approval = ch.approval
			b, _ := json.Marshal(ch.approval)
			ops = append(ops, clientv3.OpPut(taskKey(region, id, fieldApproval), string(b)))
		}
		if ch.clearApproval {
			t.Approval = nil
			ops = append(ops, clientv3.OpDelete(taskKey(region, id, fieldApproval)))
		}
		if ch.agentToken != nil {
			t.AgentToken = ch.agentToken
			ops = append(ops, clientv3.OpPut(taskKey(region, id, fieldToken), ch.agentToken.stored()))
		}
		if ch.plan != nil {
			t.Plan = ch.plan
			b, _ := json.Marshal(ch.plan)
			ops = append(ops, clientv3.OpPut(taskKey(region, id, fieldPlan), string(b)))
		}
		action := ch.action
		if action == "" && from != ch.to {
			action = statusAction[ch.to]
		}
		if action != "" {
			e := newAudit(ctx, s.now(), action, region, id)
			for k, v := range ch.detail {
				e.with(k, v)
			}
			if from != ch.to {
				e.with("from", string(from)).with("to", string(ch.to))
			}
			ops = append(ops, e.op())
		}
		// The agent token's revision too: a reset and an issue never cross.
		resp, err := s.c.Txn(ctx).If(
			clientv3.Compare(clientv3.ModRevision(taskKey(region, id, fieldStatus)), "=", snap.statusRev),
			clientv3.Compare(clientv3.ModRevision(taskKey(region, id, fieldMetadata)), "=", snap.metaRev),
			clientv3.Compare(clientv3.ModRevision(taskKey(region, id, fieldToken)), "=", snap.tokenRev),
		).Then(ops...).Commit()
		if err != nil {
			return Task{}, fmt.Errorf("update task %s: %w", id, err)
		}
		if resp.Succeeded {
			return t, nil
		}
	}
	return Task{}, fmt.Errorf("%w: task %s: too many concurrent updates", ErrConflict, id)
}

// CancelTask cancels a task from any non-final state.
func (s *Store) CancelTask(ctx context.Context, id, reason string) (Task, error) {
	region, err := s.regionOf(ctx, id)
	if err != nil {
		return Task{}, err
	}
	if reason == "" {
		reason = "cancelled by operator"
	}
	return s.update(ctx, region, id, func(t *Task) (change, error) {
		now := s.now()
		t.FinishedAt, t.Error = &now, reason
		if t.Status == StatusInstalling {
			// The agent stops within seconds (it watches its task), but what it wrote
			// stays: say so where the operator looks.
			t.Error += " (cancelled during the install: the disk is partially written)"
		}
		return change{to: StatusCancelled, detail: map[string]string{"reason": reason}}, nil
	})
}

// ProgressUpdate is what an agent reports.
type ProgressUpdate struct {
	Region, MAC, TaskID string
	contract.Progress
	// Authorize, when set, checks the caller against the task as read inside the
	// guarded update (the agent token): its error is returned and nothing is written.
	// The transaction is guarded on the token's revision, so a reset between the
	// check and the write makes it read and check again.
	Authorize func(t *Task) error
}

// RecordProgress stores progress from the agent of mac. The first update moves an
// approved task to installing; stage completed/failed ends it (completed only once
// installing; a repeated completed is acknowledged again, so an agent whose first
// answer was lost can stop retrying). Stage cancelled is the agent's account of a
// cancelled task's last bytes and changes no status. Progress for a task of another
// MAC, or for a task not yet approved, is an ErrConflict.
func (s *Store) RecordProgress(ctx context.Context, u ProgressUpdate) (Task, error) {
	mac, err := NormalizeMAC(u.MAC)
	if err != nil {
		return Task{}, err
	}
	if u.Percentage < 0 || u.Percentage > 100 {
		return Task{}, invalid("percentage", "%v is outside 0-100", u.Percentage)
	}
	if !u.Stage.Valid() {
		return Task{}, invalid("stage", "%q is not one of %v", u.Stage, contract.Stages)
	}
	if len(u.Message) > 4096 {
		return Task{}, invalid("message", "is longer than 4096 bytes")
	}
	if _, err := uuid.Parse(u.TaskID); err != nil {
		return Task{}, invalid("task_id", "%q is not a task id", u.TaskID)
	}
	if u.Stage == contract.StageCancelled {
		return s.recordAbort(ctx, u, mac)
	}
	t, err := s.update(ctx, u.Region, u.TaskID, func(t *Task) (change, error) {
		if u.Authorize != nil {
			if err := u.Authorize(t); err != nil {
				return change{}, err
			}
		}
		if t.TargetMAC != mac {
			return change{}, fmt.Errorf("%w: task %s belongs to MAC %s, not %s", ErrConflict, t.TaskID, t.TargetMAC, mac)
		}
		if t.Status == StatusCompleted && u.Stage == contract.StageCompleted {
			return change{}, errUnchanged
		}
		if !t.Status.Approved() {
			return change{}, fmt.Errorf("%w: task %s is %s: progress is accepted only while approved or installing", ErrConflict, t.TaskID, t.Status)
		}
		if u.Stage == contract.StageCompleted && t.Status != StatusInstalling {
			return change{}, &TransitionError{TaskID: t.TaskID, From: t.Status, To: StatusCompleted}
		}
		now := s.now()
		p := u.Progress
		p.UpdatedAt = now
		to := StatusInstalling
		switch u.Stage {
		case contract.StageCompleted:
			to, t.FinishedAt = StatusCompleted, &now
			p.Percentage = 100
		case contract.StageFailed:
			to, t.FinishedAt, t.Error = StatusFailed, &now, u.Message
			if t.Error == "" {
				t.Error = "agent reported failure"
			}
		}
		if t.StartedAt == nil {
			t.StartedAt = &now
		}
		return change{to: to, progress: &p}, nil
	})
	if errors.Is(err, errUnchanged) {
		// Read in the agent's region, never through the task index: an appliance's
		// etcd role reaches only its region's keys.
		snap, err := s.readTask(ctx, u.Region, u.TaskID)
		if err != nil {
			return Task{}, err
		}
		return snap.task, nil
	}
	return t, err
}

// recordAbort stores the agent's last progress on a cancelled task (how much it wrote
// before it stopped). Only a cancelled task of the same MAC takes it.
func (s *Store) recordAbort(ctx context.Context, u ProgressUpdate, mac string) (Task, error) {
	snap, err := s.readTask(ctx, u.Region, u.TaskID)
	if err != nil {
		return Task{}, err
	}
	t := snap.task
	if u.Authorize != nil {
		if err := u.Authorize(&t); err != nil {
			return Task{}, err
		}
	}
	if t.TargetMAC != mac {
		return Task{}, fmt.Errorf("%w: task %s belongs to MAC %s, not %s", ErrConflict, t.TaskID, t.TargetMAC, mac)
	}
	if t.Status != StatusCancelled {
		return Task{}, fmt.Errorf("%w: task %s is %s: stage cancelled is accepted only for a cancelled task", ErrConflict, t.TaskID, t.Status)
	}
	p := u.Progress
	p.UpdatedAt = s.now()
	b, _ := json.Marshal(p)
	audit := newAudit(ctx, p.UpdatedAt, AuditTaskAbortNote, u.Region, u.TaskID).with("bytes_written", fmt.Sprint(p.BytesDone))
	resp, err := s.c.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(taskKey(u.Region, u.TaskID, fieldStatus)), "=", snap.statusRev),
		clientv3.Compare(clientv3.ModRevision(taskKey(u.Region, u.TaskID, fieldToken)), "=", snap.tokenRev),
	).Then(clientv3.OpPut(taskKey(u.Region, u.TaskID, fieldProgress), string(b)), audit.op()).Commit()
	if err != nil {
		return Task{}, fmt.Errorf("record abort of %s: %w", u.TaskID, err)
	}
	if !resp.Succeeded {
		return Task{}, fmt.Errorf("%w: task %s changed meanwhile", ErrConflict, u.TaskID)
	}
	t.Progress = &p
	return t, nil
}

// OpenTaskForMAC returns the open task for (region, mac) through the MAC index: one
// read of the index, one read of the task, whatever the number of tasks in the region.
func (s *Store) OpenTaskForMAC(ctx context.Context, region, mac string) (Task, error) {
	snap, err := s.openSnap(ctx, region, mac)
	if err != nil {
		return Task{}, err
	}
	return snap.task, nil
}

// LatestTaskForMAC returns the most recently created task for (region, mac), open or
// final (netboot uses it to send machines with a completed install to their local disk).
func (s *Store) LatestTaskForMAC(ctx context.Context, region, mac string) (Task, error) {
	resp, err := s.c.Get(ctx, lastMACIndexKey(region, mac))
	if err != nil {
		return Task{}, fmt.Errorf("mac index: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return Task{}, fmt.Errorf("%w: no task for MAC %s in region %s", ErrNotFound, mac, region)
	}
	snap, err := s.readTask(ctx, region, string(resp.Kvs[0].Value))
	if err != nil {
		return Task{}, err
	}
	return snap.task, nil
}

func (s *Store) openSnap(ctx context.Context, region, mac string) (*taskSnap, error) {
	resp, err := s.c.Get(ctx, openMACIndexKey(region, mac))
	if err != nil {
		return nil, fmt.Errorf("mac index: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("%w: no task found for MAC %s in region %s", ErrNotFound, mac, region)
	}
	snap, err := s.readTask(ctx, region, string(resp.Kvs[0].Value))
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("%w: MAC index of %s points to a missing task", ErrNotFound, mac)
	}
	return snap, err
}

// Close closes the etcd client.
func (s *Store) Close() error { return s.c.Close() }
