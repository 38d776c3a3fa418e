package store

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// summaryBatch is how many tasks one read transaction fetches: two range ops each,
// under etcd's default limit of 128 operations per transaction.
const summaryBatch = 50

// taskRef names a task by its region and id.
type taskRef struct{ region, id string }

// readTasks reads the tasks refs name, all at revision rev, with their hardware
// reports only when withHardware, in summaryBatch-sized transactions; keep filters out
// tasks that changed meanwhile (the index and the task agree at one revision; never
// crash on foreign keys all the same).
func (s *Store) readTasks(ctx context.Context, refs []taskRef, rev int64, withHardware bool, keep func(Task) bool) ([]Task, error) {
	var out []Task
	for len(refs) > 0 {
		batch := refs[:min(len(refs), summaryBatch)]
		refs = refs[len(batch):]
		ops := make([]clientv3.Op, 0, 2*len(batch))
		for _, r := range batch {
			// Every key of the task but its hardware report: [dir, hardware) and
			// (hardware, end of dir).
			dir, hw := taskDir(r.region, r.id), taskKey(r.region, r.id, fieldHardware)
			if withHardware { // the whole dir, and an empty range to keep two per task
				hw = clientv3.GetPrefixRangeEnd(dir)
			}
			ops = append(ops,
				clientv3.OpGet(dir, clientv3.WithRange(hw), clientv3.WithRev(rev)),
				clientv3.OpGet(hw+"\x00", clientv3.WithRange(clientv3.GetPrefixRangeEnd(dir)), clientv3.WithRev(rev)))
		}
		resp, err := s.c.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, err
		}
		for i, r := range batch {
			snap := &taskSnap{}
			for _, rr := range resp.Responses[2*i : 2*i+2] {
				for _, kv := range rr.GetResponseRange().Kvs {
					_, _, field, ok := splitTaskKey(string(kv.Key))
					if !ok {
						continue
					}
					if err := snap.apply(field, kv.Value, kv.ModRevision); err != nil {
						return nil, fmt.Errorf("task %s/%s: %w", r.region, r.id, err)
					}
				}
			}
			if snap.task.TaskID != "" && keep(snap.task) {
				out = append(out, snap.task)
			}
		}
	}
	return out, nil
}

// TaskPage returns one page of the tasks of a region ("" for every region) in one
// status ("" for every status), newest first and without hardware reports. The pages
// walk the status index (UUIDv7 ids sort by creation time): a range from the cursor
// with a limit per region and status, keys only, then just the page's tasks, all at
// one revision. A task created while a walk goes on is newer than its cursor: the
// walk sees every task older than its start exactly once.
func (s *Store) TaskPage(ctx context.Context, region string, status Status, p Page) ([]Task, PageMarks, error) {
	return s.taskPage(ctx, region, status, p, false)
}

// TaskPageWhole is TaskPage with each task's hardware report: a page of them, never
// more.
func (s *Store) TaskPageWhole(ctx context.Context, region string, status Status, p Page) ([]Task, PageMarks, error) {
	return s.taskPage(ctx, region, status, p, true)
}

func (s *Store) taskPage(ctx context.Context, region string, status Status, p Page, withHardware bool) ([]Task, PageMarks, error) {
	l, err := s.taskList(ctx, region, status)
	if err != nil {
		return nil, PageMarks{}, err
	}
	rows, marks, rev, err := s.readPage(ctx, l, p)
	if err != nil {
		return nil, PageMarks{}, err
	}
	refs := make([]taskRef, len(rows))
	for i, r := range rows {
		refs[i] = taskRef{region: r.label, id: r.id}
		if l.values {
			refs[i].region = string(r.value) // the task index names the region
		}
	}
	out, err := s.readTasks(ctx, refs, rev, withHardware, func(t Task) bool { return status == "" || t.Status == status })
	if err != nil {
		return nil, PageMarks{}, fmt.Errorf("list tasks: %w", err)
	}
	return out, marks, nil
}

// CountTasks counts the tasks of a region ("" for all) in a status ("" for all)
// through the status index: etcd counts, no key is sent.
func (s *Store) CountTasks(ctx context.Context, region string, status Status) (int, error) {
	l, err := s.taskList(ctx, region, status)
	if err != nil {
		return 0, err
	}
	return s.countRows(ctx, l)
}

// taskList is the task list of a region ("" for all) in a status ("" for all): one
// status index range per region and status; every task of every region is the task
// index (id -> region), one range.
func (s *Store) taskList(ctx context.Context, region string, status Status) (*pagedList, error) {
	if status != "" && !status.Valid() {
		return nil, invalid("status", "unknown status %q", status)
	}
	l := newTaskList(region, status)
	if region == "" && status == "" {
		l.ranges, l.values = []pageRange{{prefix: taskRegionIndexKey("")}}, true
		return l, nil
	}
	regions := []string{region}
	if region == "" {
		var err error
		// Every region with a task has keys under the v2.1 task root.
		if regions, err = s.childNames(ctx, taskRoot); err != nil {
			return nil, err
		}
	} else if err := ValidateRegion(region); err != nil {
		return nil, err
	}
	statuses := Statuses
	if status != "" {
		statuses = []Status{status}
	}
	for _, r := range regions {
		for _, st := range statuses {
			l.ranges = append(l.ranges, pageRange{label: r, prefix: statusIndexKey(r, st, "")})
		}
	}
	return l, nil
}

// newTaskList is the task list of region and status without its ranges: its scope
// (what a cursor belongs to) and ids. A Mirror pages with the same one, so cursors go
// from one to the other.
func newTaskList(region string, status Status) *pagedList {
	return &pagedList{scope: "tasks/" + region + "/" + string(status), validID: func(id string) bool {
		_, err := uuid.Parse(id)
		return err == nil
	}, timed: taskIDTimes}
}

// statusRefs reads the status index keys only: the tasks of a region ("" for every
// region) in one status ("" for every status), and the revision it read at.
func (s *Store) statusRefs(ctx context.Context, region string, status Status) ([]taskRef, int64, error) {
	prefix := indexRoot + "status/"
	if region != "" {
		if err := ValidateRegion(region); err != nil {
			return nil, 0, err
		}
		prefix = statusIndexPrefix(region)
		if status != "" {
			prefix += string(status) + "/"
		}
	}
	idx, err := s.c.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, 0, fmt.Errorf("list tasks: %w", err)
	}
	var refs []taskRef
	for _, kv := range idx.Kvs {
		// /os/index/status/{region}/{status}/{id}
		parts := strings.Split(strings.TrimPrefix(string(kv.Key), indexRoot+"status/"), "/")
		if len(parts) == 3 && (status == "" || parts[1] == string(status)) {
			refs = append(refs, taskRef{parts[0], parts[2]})
		}
	}
	return refs, idx.Header.Revision, nil
}

// taskIDTimes: a UUIDv7 task id starts with its creation time in milliseconds (48
// bits, as 8+4 hex digits).
var taskIDTimes = &timedIDs{
	time: func(id string) (time.Time, bool) {
		u, err := uuid.Parse(id)
		if err != nil || u.Version() != 7 {
			return time.Time{}, false
		}
		ms, err := strconv.ParseInt(id[:8]+id[9:13], 16, 64)
		return time.UnixMilli(ms), err == nil
	},
	floor: func(t time.Time) string {
		ms := max(t.UnixMilli(), 0)
		return fmt.Sprintf("%08x-%04x", ms>>16, ms&0xffff)
	},
	grain: time.Millisecond,
}
